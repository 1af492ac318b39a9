"""A head's scoring cost on random DiDeMo-shaped states: the inputs, the head and the gallery
that the scoring benchmarks measure (``benchmarks/scoring.py``,
``benchmarks/published_efficiency.py``, ``benchmarks/gpu_check.py``).

Inputs (:func:`random_inputs`) are random but shaped like DiDeMo: unit-norm features, word lengths
drawn uniformly in [20, 64] of L = 64 and frame counts in [10, 64] of N = 64 (scaled with L and N
at other sizes), padded frames zero like the backbone's, turned into states by the head's own
``text_state`` and ``video_state`` (:func:`text_states`, :func:`video_states`; a head's temporal
encoder, if any, is part of its video state, not of scoring). The head (:func:`build_head`) is
the method's module built from its config (:func:`tvrbench.methods.create_module`) on a random
tiny CLIP of the gallery's width (:func:`random_clip_dir`), its parameters the initialisation plus
seeded noise (:func:`perturb`, so no algebraic shortcut can hide behind an identity matrix).

A :class:`Case` is one gallery of one head: its states, the chunked fast scorer and the block-wise
reference (``reference_score`` in the fast scorer's block layout; no reference holds a whole
gallery of pairs), and their per-pair multiply-adds. The scripts time them with
:func:`tvrbench.bench.latency.time_runs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.chunking import block_sizes, chunked_score, slice_state
from tvrbench.retrieval import RetrievalHead, State

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Standard deviation of the noise :func:`perturb` adds to every head parameter.
PARAM_NOISE = 0.02
MIB = 1024**2
#: Items per call when building states (bounds the memory of a temporal encoder's activations).
STATE_BATCH = 256


@dataclass(frozen=True)
class CaseSettings:
    """What a case is built from.

    Args:
        texts, videos: the gallery, Bt × Bv.
        words, frames: L, max tokens per text; N, max frames per video.
        dim: D, the joint embedding width.
        budget_mb: the chunked scorer's memory budget, MiB.
        subset_texts: time a per-pair method on the first whole text blocks covering this many
            texts (0: every text).
        dtype: ``fp32 | bf16 | fp16`` (:data:`DTYPES`), as asked (see :func:`row_dtype`).
        device: ``cpu`` or ``cuda[:i]``.
        seed: of the inputs, the head's initialisation and its noise.
    """

    texts: int
    videos: int
    words: int
    frames: int
    dim: int
    budget_mb: float
    subset_texts: int = 0
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0


# --------------------------------------------------------------------------- inputs


def lengths(n: int, max_len: int, min_of_64: int, gen: torch.Generator) -> Tensor:
    """``[n]`` lengths uniform in ``[round(max_len·min_of_64/64), max_len]`` (at least 1)."""
    low = max(1, min(max_len, round(max_len * min_of_64 / 64)))
    return torch.randint(low, max_len + 1, (n,), generator=gen)


def random_inputs(
    n_texts: int, n_videos: int, words: int, frames: int, dim: int, seed: int
) -> dict[str, Tensor]:
    """Random unit-norm text and frame features with DiDeMo-like padding (CPU, fp32).

    Returns ``sentence [Bt, D]``, ``words [Bt, L, D]``, ``attention_mask [Bt, L]`` (20–64 of 64
    real), ``frame_emb [Bv, N, D]`` (padded frames zero) and ``frame_mask [Bv, N]`` (10–64 of 64).
    """
    gen = torch.Generator().manual_seed(seed)
    word_len = lengths(n_texts, words, 20, gen)
    frame_len = lengths(n_videos, frames, 10, gen)
    attention_mask = torch.arange(words)[None] < word_len[:, None]  # (Bt, L)
    frame_mask = torch.arange(frames)[None] < frame_len[:, None]  # (Bv, N)
    sentence = F.normalize(torch.randn(n_texts, dim, generator=gen), dim=-1)
    word_emb = F.normalize(torch.randn(n_texts, words, dim, generator=gen), dim=-1)
    frame_emb = F.normalize(torch.randn(n_videos, frames, dim, generator=gen), dim=-1)
    frame_emb = frame_emb * frame_mask[..., None]  # (Bv, N, D): padding is zero
    return {
        "sentence": sentence,
        "words": word_emb,
        "attention_mask": attention_mask,
        "frame_emb": frame_emb,
        "frame_mask": frame_mask,
    }


def perturb(head: nn.Module, seed: int) -> nn.Module:
    """Add seeded noise (std :data:`PARAM_NOISE`) to every parameter; eval mode, no grad."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(PARAM_NOISE * torch.randn(p.shape, generator=gen).to(p.dtype))
    return head.eval().requires_grad_(False)


def concat_states(parts: list[State]) -> State:
    """States of consecutive item ranges → one state (concatenated along the leading dim)."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


@torch.no_grad()
def text_states(head: RetrievalHead, sentence: Tensor, words: Tensor, mask: Tensor) -> State:
    """The head's text state of ``sentence [Bt, D]``, ``words [Bt, L, D]``, ``mask [Bt, L]``."""
    parts = [
        head.text_state(TextFeatures(sentence[i:j], words[i:j], mask[i:j]))
        for i, j in _ranges(sentence.shape[0])
    ]
    return concat_states(parts)


@torch.no_grad()
def video_states(head: RetrievalHead, frame_emb: Tensor, frame_mask: Tensor) -> State:
    """The head's video state of ``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]``."""
    parts = [head.video_state(frame_emb[i:j], frame_mask[i:j]) for i, j in _ranges(len(frame_emb))]
    return concat_states(parts)


def _ranges(n: int) -> list[tuple[int, int]]:
    return [(i, min(n, i + STATE_BATCH)) for i in range(0, n, STATE_BATCH)]


# ------------------------------------------------------------------------------ the head


def random_clip_dir(work_dir: Path, dim: int, words: int) -> Path:
    """A random tiny CLIP whose joint width is ``dim``, saved with ``save_pretrained`` in
    ``work_dir/clip`` (the backbone every module is built on; scoring never runs it)."""
    from transformers.utils import logging as hf_logging

    from tvrbench.backbone import build_tiny_clip, build_tiny_tokenizer

    hf_logging.disable_progress_bar()  # one "Loading weights" bar per method otherwise

    path = work_dir / "clip"
    if not (path / "config.json").is_file():
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_clip(
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            projection_dim=dim,
            max_words=max(77, words),  # CLIP's text length: room for any --words
        )
        model.save_pretrained(path)
    return path


def row_dtype(head: RetrievalHead, asked: str) -> str:
    """The dtype a head is measured in: ``asked``, but float32 for a head whose scoring upcasts
    to float32 whatever its inputs (``scores_in_float32``: X-CLIP, GLSCL, GLCCL), since timing its
    parameters and states in bf16 would measure a computation that never runs in bf16."""
    if head.scores_in_float32 and DTYPES[asked].itemsize < 4:
        return "fp32"
    return asked


def dtype_note(head: RetrievalHead, asked: str) -> str | None:
    """The row's label when the head could not run in the dtype asked (None when it did)."""
    measured = row_dtype(head, asked)
    if measured == asked:
        return None
    return (
        f"asked {asked}: {type(head).__name__} scores in float32 whatever its inputs "
        f"(scores_in_float32, SPEC §2.7), so the row runs in {measured} and its matmul rate is "
        f"the {measured} one"
    )


def build_head(
    method: str, settings: CaseSettings, clip_dir: Path, config_dir: str | Path
) -> RetrievalHead:
    """``method``'s head, from its config in ``config_dir`` (with ``max_words`` / ``max_frames``
    the settings' L / N where the method takes them, on the CLIP in ``clip_dir``), perturbed, on
    the settings' device and in :func:`row_dtype` (eval mode, no grad). Raises whatever building
    the module raises."""
    from tvrbench.methods import create_module

    torch.manual_seed(settings.seed)
    module = create_module(
        method,
        config_dir,
        max_words=settings.words,
        max_frames=settings.frames,
        clip=str(clip_dir),
        clip_checkpoint=None,
    )
    head = module.head
    if not isinstance(head, RetrievalHead):
        raise TypeError(f"{type(module).__name__}.head is not a RetrievalHead")
    perturb(head, settings.seed)  # in place
    dtype = DTYPES[row_dtype(head, settings.dtype)]
    return head.to(device=torch.device(settings.device), dtype=dtype)


def is_plain_matmul(head: RetrievalHead, words: int, frames: int, dim: int) -> bool:
    """The head scores a pair with one dot product of cached D-vectors and its reference is
    its fast scorer (meanP, CenterCLIP)."""
    return head.reference_pair_flops(words, frames, dim) is None and (
        head.pair_flops(words, frames, dim) == dim
    )


def reference_note(head: RetrievalHead) -> str:
    """How the head's reference cost was counted: its ``reference_note`` attribute, else the
    first line of its ``reference_pair_flops`` docstring."""
    note = getattr(head, "reference_note", None)
    if note:
        return str(note)
    doc = (type(head).reference_pair_flops.__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


# ------------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One gallery of one head: states, the fast and reference scorers, and their costs.

    ``fast(n)`` / ``reference(n)`` score the first ``n`` texts against the whole gallery in the
    same ``t_block × v_block`` layout.
    """

    name: str
    head: RetrievalHead
    text: State
    video: State
    words: int
    frames: int
    budget: int
    timed_texts: int
    pair_flops: int
    ref_pair_flops: int
    t_block: int
    v_block: int
    notes: list[str] = field(default_factory=list)

    @property
    def n_texts(self) -> int:
        return next(iter(self.text.values())).shape[0]

    @property
    def n_videos(self) -> int:
        return next(iter(self.video.values())).shape[0]

    @property
    def warmup_texts(self) -> int:
        return min(self.n_texts, self.t_block)

    @property
    def peak_texts(self) -> int:
        """Texts scored for the peak-memory measurement. The working set is per block, so two
        text blocks show the peak of both scorers."""
        return min(self.timed_texts, 2 * self.t_block)

    def fast(self, n: int) -> Tensor:
        return chunked_score(self.head, slice_state(self.text, 0, n), self.video, self.budget)

    def reference(self, n: int) -> Tensor:
        first = slice_state(self.text, 0, n)
        if self.t_block >= n and self.v_block >= self.n_videos:
            return self.head.reference_score(first, self.video)
        out: Tensor | None = None
        for t0 in range(0, n, self.t_block):
            t_part = slice_state(first, t0, t0 + self.t_block)
            for v0 in range(0, self.n_videos, self.v_block):
                v_part = slice_state(self.video, v0, v0 + self.v_block)
                block = self.head.reference_score(t_part, v_part)  # (tb, vb)
                if out is None:
                    out = block.new_empty(n, self.n_videos)
                out[t0 : t0 + block.shape[0], v0 : v0 + block.shape[1]] = block
        assert out is not None
        return out


def make_case(
    name: str,
    head: RetrievalHead,
    text: State,
    video: State,
    settings: CaseSettings,
    frames: int,
    notes: list[str],
) -> Case:
    """The block layout, timed texts and costs of ``head`` on these states (``frames``: the
    states' N, which a one-frame gallery sets apart from the settings')."""
    budget = int(settings.budget_mb * MIB)
    n_texts = next(iter(text.values())).shape[0]
    n_videos = next(iter(video.values())).shape[0]
    words, dim = settings.words, settings.dim
    t_block, v_block = block_sizes(n_texts, n_videos, head.pair_bytes(text, video), budget)
    pair_flops = head.pair_flops(words, frames, dim)
    ref_pair_flops = head.reference_pair_flops(words, frames, dim)
    timed = n_texts
    subset = settings.subset_texts
    if 0 < subset < n_texts and not is_plain_matmul(head, words, frames, dim):
        # Whole text blocks, at least one.
        timed = min(n_texts, max(t_block, math.ceil(subset / t_block) * t_block))
        if timed < n_texts:
            notes.append(
                f"timed on the first {timed}/{n_texts} texts ({math.ceil(timed / t_block)} of "
                f"{math.ceil(n_texts / t_block)} text blocks), times extrapolated x"
                f"{n_texts / timed:.2f}"
            )
    notes.append(f"blocks {t_block}x{v_block}")
    return Case(
        name=name,
        head=head,
        text=text,
        video=video,
        words=words,
        frames=frames,
        budget=budget,
        timed_texts=timed,
        pair_flops=pair_flops,
        ref_pair_flops=pair_flops if ref_pair_flops is None else ref_pair_flops,
        t_block=t_block,
        v_block=v_block,
        notes=notes,
    )


def build_case(method: str, head: RetrievalHead, settings: CaseSettings) -> Case:
    """``method``'s gallery at the settings' sizes (deterministic in the seed), in the head's
    :func:`row_dtype`."""
    s = settings
    device, dtype = torch.device(s.device), DTYPES[row_dtype(head, s.dtype)]
    raw = random_inputs(s.texts, s.videos, s.words, s.frames, s.dim, s.seed)
    raw = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in raw.items()
    }
    text = text_states(head, raw["sentence"], raw["words"], raw["attention_mask"])
    video = video_states(head, raw["frame_emb"], raw["frame_mask"])
    notes = [f"head {type(head).__name__}"]
    label = dtype_note(head, s.dtype)
    if label:
        notes.append(label)
    return make_case(method, head, text, video, s, s.frames, notes)
