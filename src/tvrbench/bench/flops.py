"""FLOP counts with fvcore (SPEC §5): 1 FLOP = 1 multiply-add, eager attention.

Three costs per method:

* text — the text tower plus the head's ``text_state`` for one query ``[1, L]``;
* video — the video tower (``frame_embeddings``) plus the head's ``video_state`` for one video of
  ``n`` frames ``[1, n, 3, H, W]`` (the cost depends on the frame count, so on the length bucket);
* pair — the per-(text, video) work of ``head.score`` once both states are cached (per-text and
  per-video work of the scorer separated out, see :func:`count_pair_flops`). Checked against the
  head's own formula ``head.pair_flops(num_words, num_frames, dim)``.

fvcore traces the model; SDPA attention would be invisible to it, so the backbone is switched to
eager attention while counting and switched back afterwards.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class _Traced(nn.Module):
    """Wraps a function of tensors (returning a tensor, tuple or dict) for fvcore's tracer."""

    def __init__(self, owner: nn.Module, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.owner = owner  # registered so fvcore attributes the ops to the model's modules
        self.fn = fn

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.fn(*inputs)
        if isinstance(out, Tensor):
            return (out,)
        if isinstance(out, dict):
            return tuple(out[k] for k in sorted(out))
        return tuple(out)


def count_flops(owner: nn.Module, fn: Callable[..., Any], inputs: tuple[Tensor, ...]) -> int:
    """Multiply-adds of ``fn(*inputs)`` counted by fvcore's ``FlopCountAnalysis``.

    ``owner`` is the module whose parameters ``fn`` uses (for attribution only).

    >>> layer = nn.Linear(4, 3)
    >>> count_flops(layer, layer, (torch.zeros(2, 4),))
    24
    """
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(_Traced(owner, fn), inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with torch.no_grad():
        return int(analysis.total())


@contextmanager
def eager_attention(module: nn.Module) -> Iterator[None]:
    """Switch ``module.backbone`` to eager attention inside the block (restored afterwards)."""
    backbone = getattr(module, "backbone", None)
    if backbone is None or not hasattr(backbone, "set_attention_implementation"):
        yield
        return
    previous = getattr(backbone.clip.config, "_attn_implementation", None) or "sdpa"
    backbone.set_attention_implementation("eager")
    try:
        yield
    finally:
        backbone.set_attention_implementation(previous)


def _rows(state: dict[str, Tensor], n: int) -> dict[str, Tensor]:
    """The first ``n`` rows of every tensor of a state (the first row repeated if it has fewer)."""
    out = {}
    for k, v in state.items():
        v = v[:n]
        if v.shape[0] < n:
            v = torch.cat([v, v[:1].expand(n - v.shape[0], *v.shape[1:])])
        out[k] = v.contiguous()
    return out


def _score_flops(head: Any, text_state: dict[str, Tensor], video_state: dict[str, Tensor]) -> int:
    keys_t, keys_v = sorted(text_state), sorted(video_state)

    def score(*tensors: Tensor) -> Tensor:
        t = dict(zip(keys_t, tensors[: len(keys_t)]))
        v = dict(zip(keys_v, tensors[len(keys_t) :]))
        return head.score(t, v)  # (Bt, Bv)

    inputs = tuple(text_state[k] for k in keys_t) + tuple(video_state[k] for k in keys_v)
    return count_flops(head, score, inputs)


@torch.no_grad()
def count_pair_flops(
    head: Any, text_state: dict[str, Tensor], video_state: dict[str, Tensor]
) -> int:
    """Multiply-adds of ``head.score`` per (text, video) pair, once both states are cached.

    A scorer's cost on ``Bt`` texts and ``Bv`` videos is ``a + b·Bt + c·Bv + d·Bt·Bv``: work
    done once, per text (e.g. X-Pool's query projection), per video (e.g. a per-frame
    projection) and per pair. The per-pair term is isolated exactly by counting the 1×1, 1×2,
    2×1 and 2×2 blocks: ``d = f(2,2) − f(1,2) − f(2,1) + f(1,1)``; a 1×1 count alone would charge
    every pair with the per-text and per-video work too.
    """
    t1, t2 = _rows(text_state, 1), _rows(text_state, 2)
    v1, v2 = _rows(video_state, 1), _rows(video_state, 2)
    f11 = _score_flops(head, t1, v1)
    f12 = _score_flops(head, t1, v2)
    f21 = _score_flops(head, t2, v1)
    f22 = _score_flops(head, t2, v2)
    return max(0, f22 - f12 - f21 + f11)


@torch.no_grad()
def method_flops(
    module: Any,
    input_ids: Tensor,
    attention_mask: Tensor,
    frames: Tensor,
    frame_mask: Tensor,
) -> dict[str, float]:
    """GFLOPs (10⁹ multiply-adds) of one text, one video and one (text, video) pair.

    Args:
        module: a :class:`tvrbench.retrieval.RetrievalModule` (eval mode).
        input_ids, attention_mask: ``[1, L]`` one query.
        frames: ``[1, n, 3, H, W]`` one video; ``frame_mask`` ``[1, n]``.
    Returns:
        ``{"gflops_text", "gflops_video", "gflops_pair", "gflops_pair_formula"}``; the formula
        value is ``head.pair_flops(L, n, D)`` for comparison.
    """
    was_training = module.training
    module.eval()
    try:
        with eager_attention(module):
            text_flops = count_flops(module, module.encode_text, (input_ids, attention_mask))
            video_flops = count_flops(module, module.encode_video, (frames, frame_mask))
            text_state = module.encode_text(input_ids, attention_mask)
            video_state = module.encode_video(frames, frame_mask)
            pair_flops = count_pair_flops(module.head, text_state, video_state)
    finally:
        module.train(was_training)
    dim = int(module.backbone.embed_dim)
    formula = int(module.head.pair_flops(int(input_ids.shape[1]), int(frames.shape[1]), dim))
    if pair_flops > 0 and formula > 0 and not 0.25 <= pair_flops / formula <= 4.0:
        log.warning(
            "%s: fvcore counts %d multiply-adds per pair, head.pair_flops says %d",
            type(module).__name__,
            pair_flops,
            formula,
        )
    return {
        "gflops_text": text_flops / 1e9,
        "gflops_video": video_flops / 1e9,
        "gflops_pair": pair_flops / 1e9,
        "gflops_pair_formula": formula / 1e9,
    }
