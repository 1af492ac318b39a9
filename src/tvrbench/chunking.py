"""Memory-bounded scoring of a whole gallery: texts × videos in blocks.

Pairwise methods (X-Pool, GLCCL) need per-(text, video) working memory; scoring 1004 × 1004 pairs
at once would hold gigabytes. :func:`chunked_score` cuts the text and video axes into blocks whose
working set stays under a budget, asks the head for each block and writes it into the result.
Heads are block-separable (docs/CONTRACTS.md), so the result is identical to one full call.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from torch import Tensor

DEFAULT_MEMORY_BUDGET_BYTES = 2 * 1024**3


def slice_state(state: Mapping[str, Tensor], start: int, stop: int) -> dict[str, Tensor]:
    """Rows ``start:stop`` of every tensor in a state (leading dim = items)."""
    return {k: v[start:stop] for k, v in state.items()}


def state_len(state: Mapping[str, Tensor]) -> int:
    """Number of items (leading dim) of a state; all tensors must agree."""
    sizes = {v.shape[0] for v in state.values()}
    if len(sizes) != 1:
        raise ValueError(f"state tensors disagree on their leading dimension: {sorted(sizes)}")
    return sizes.pop()


def block_sizes(
    n_text: int, n_video: int, pair_bytes: int, memory_budget_bytes: int
) -> tuple[int, int]:
    """Text and video block sizes with ``t_block * v_block * pair_bytes <= budget``.

    Prefers whole video axes (one pass over the gallery per text block, contiguous writes), then
    splits videos when even one text against the whole gallery does not fit.
    """
    max_pairs = max(1, memory_budget_bytes // max(1, pair_bytes))
    if max_pairs >= n_video:
        return max(1, min(n_text, max_pairs // max(1, n_video))), max(1, n_video)
    return 1, max(1, min(n_video, max_pairs))


def chunked_score(
    head,
    text: Mapping[str, Tensor],
    video: Mapping[str, Tensor],
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    progress: bool = False,
) -> Tensor:
    """Score every text against every video with bounded working memory.

    Args:
        head: a :class:`tvrbench.retrieval.RetrievalHead`.
        text: text state, tensors ``[Bt, ...]``.
        video: video state, tensors ``[Bv, ...]``.
        memory_budget_bytes: bound on the per-block working set (``pair_bytes`` × pairs).
        progress: show a progress bar over text blocks.
    Returns:
        ``[Bt, Bv]`` unscaled similarity (same dtype as the head's output).
    """
    n_text, n_video = state_len(text), state_len(video)
    pair_bytes = head.pair_bytes(text, video)
    t_block, v_block = block_sizes(n_text, n_video, pair_bytes, memory_budget_bytes)
    if t_block >= n_text and v_block >= n_video:
        return head.score(dict(text), dict(video))
    out: Tensor | None = None
    starts = range(0, n_text, t_block)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n_text / t_block), desc="scoring", leave=False)
    for t0 in starts:
        t_part = slice_state(text, t0, t0 + t_block)
        for v0 in range(0, n_video, v_block):
            block = head.score(t_part, slice_state(video, v0, v0 + v_block))  # (tb, vb)
            if out is None:
                out = block.new_empty(n_text, n_video)
            out[t0 : t0 + block.shape[0], v0 : v0 + block.shape[1]] = block
    assert out is not None
    return out


def memory_budget_bytes_from_mb(memory_mb: float) -> int:
    """Mebibytes → bytes (configs speak MiB)."""
    return int(memory_mb * 1024**2)


__all__ = [
    "DEFAULT_MEMORY_BUDGET_BYTES",
    "block_sizes",
    "chunked_score",
    "memory_budget_bytes_from_mb",
    "slice_state",
    "state_len",
]
