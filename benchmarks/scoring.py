"""Scoring at scale: every method's gallery scoring against the machine's dense matmul rate.

Scores a DiDeMo-test-sized gallery (1004 texts × 1004 videos, L = N = 64, D = 512 by default) from
cached states with :func:`tvrbench.chunking.chunked_score` under a memory budget, next to

* the method's straightforward reference, :meth:`~tvrbench.retrieval.RetrievalHead.reference_score`
  (written from SPEC; the plain matmul where the fast scorer already is one), evaluated block by
  block with the fast scorer's block layout (no reference holds a whole gallery of pairs);
* the machine's dense matmul rate, measured in the same run (a large ``torch.mm`` in the run's
  dtype, fp32 by default; 1 FLOP = 1 multiply-add, as fvcore counts).

Methods (``--methods NAME[,NAME...]``, default: every config of ``--config-dir`` but variants, see
``benchmarks/train_step.py``'s ``default_methods``) are configs ``<name>.yaml`` with
``model: {class_path, init_args}``. Nothing here knows a method by name: the module is built from
its config (``benchmarks/train_step.py``'s ``build_from_config``) on a random tiny CLIP whose
projection width is ``--dim``, with ``max_words``/``max_frames`` set to ``--words``/``--frames``
where the constructor takes them, as ``tvrbench bench`` does, and its head is what is measured.
A config whose module cannot be built is skipped with the reason (exit status 1 when it was
named in ``--methods``). Heads whose pair cost is one dot product (``reference_pair_flops`` None and
``pair_flops == D``: meanP, CenterCLIP) also get a large-gallery row, one per head class
(``--gallery-videos`` one-frame videos; such a head's state is one vector whatever N).

Inputs are random but shaped like DiDeMo: unit-norm features, word lengths drawn uniformly in
[20, 64] of L = 64 and frame counts in [10, 64] of N = 64 (scaled with L and N at other sizes),
padded frames zero like the backbone's, turned into states by the head's own ``text_state`` and
``video_state`` (a head's temporal encoder, if any, is part of its video state, not of scoring).
Head parameters are the module's initialisation plus seeded noise (so no algebraic shortcut can
hide behind an identity matrix).

Time: median of the timed runs after a warm-up (CPU: ``time.perf_counter``; CUDA: synchronised).
A measurement stops early once its runs exceed ``--cap-s`` (at least one run); the run count is
printed. Per-pair methods are slow at full size on a small CPU: when ``--subset-texts`` is below
the number of texts, every method whose pair cost is more than a dot product is timed, fast and
reference alike, on the first whole text blocks (the blocks are identical in shape and the inputs
i.i.d., so every block costs the same) and extrapolated to the full gallery; the printed table and
the CSV (``timed_texts``, ``note``) say so.

Peak memory: CPU — a fresh child process per measurement loads the same head and states, resets
its peak-RSS mark (``/proc/self/clear_refs``), scores once and reports ``VmHWM − VmRSS`` (torch
allocations are invisible to tracemalloc; a fresh process keeps earlier runs' freed memory from
hiding the peak); CUDA — ``torch.cuda.max_memory_allocated`` growth. Both on two text blocks (the
working set is per block). ``--quick`` measures in this process instead (a lower bound on CPU).

FLOPs: the heads' ``pair_flops`` × pairs, cross-checked with ``torch.utils.flop_counter`` (matrix
products only, so slightly below the formula, which also counts element-wise work) on a small block;
the reference's per-pair count is the head's ``reference_pair_flops`` (printed next to the fast one
with the head's note on how it was counted). Each fast score is checked against its reference (max
abs diff ≤ 1e-5 in fp32); the script exits with status 1 when a check fails. Targets (a per-pair
method's fast peak within the budget, a dot-product method at ≥ 70 % of the matmul rate) are
reported, with the measurement behind any miss, next to each speed-up over its reference.

``--quick``: 24 × 24 pairs, L = 12, N = 10, D = 64, a 0.25 MiB budget (so the per-pair methods
run in several blocks), a 2,000-video gallery, a 256² matmul, short timings, written to
``outputs/benchmarks/scoring-<device>-quick.csv`` unless ``--out`` says otherwise (the committed
results are full runs); a size given explicitly wins over ``--quick``.

Usage::

    .venv/bin/python benchmarks/scoring.py [--quick] [--methods NAME[,NAME...]]
        [--config-dir configs/method] [--device cpu|cuda] [--dtype fp32|bf16|fp16]
        [--texts 1004 --videos 1004 --words 64 --frames 64 --dim 512] [--budget-mb 2048]
        [--gallery-videos 100000] [--out benchmarks/results/scoring-<device>.csv]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make `baselines` and `benchmarks` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.train_step import (  # noqa: E402  (method discovery, shared and torch-free)
    CONFIG_DIR,
    build_from_config,
    child_env,
    config_names,
    method_config,
    resolve_methods,
)
from tvrbench.backbone import TextFeatures  # noqa: E402
from tvrbench.bench.environment import proc_status_kb, reset_peak_rss  # noqa: E402
from tvrbench.chunking import block_sizes, chunked_score, slice_state  # noqa: E402
from tvrbench.retrieval import RetrievalHead, State  # noqa: E402

COLUMNS = [
    "device",
    "method",
    "n_texts",
    "n_videos",
    "words",
    "frames",
    "dim",
    "dtype",
    "time_s",
    "ref_time_s",
    "speedup",
    "peak_mb",
    "ref_peak_mb",
    "mem_ratio",
    "flops",
    "gflops_per_s",
    "matmul_gflops_per_s",
    "frac_of_matmul",
    "budget_mb",
    "max_abs_diff_vs_ref",
]
#: Extra columns after the documented ones: texts actually timed, and how a figure was obtained.
EXTRA_COLUMNS = ["timed_texts", "ref_runs", "note"]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Max abs difference allowed between a fast score and its reference, per dtype.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 5e-3}
#: Suffix of a large-gallery row's name (``meanp_centerclip_gallery``: the methods sharing it).
GALLERY_SUFFIX = "_gallery"
PARAM_NOISE = 0.02
MAX_RUNS = 100
MIB = 1024**2
#: Items per call when building states (bounds the memory of a temporal encoder's activations).
STATE_BATCH = 256
#: Sizes of a run without ``--quick`` and with it (an explicit flag wins over both).
FULL_SIZES: dict[str, Any] = {
    "texts": 1004,
    "videos": 1004,
    "words": 64,
    "frames": 64,
    "dim": 512,
    "budget_mb": 2048.0,
    "gallery_videos": 100_000,
    "subset_texts": 50,
    "repeats": 3,
    "cap_s": 45.0,
    "min_timed_s": 1.0,
    "matmul_size": 0,
}
QUICK_SIZES: dict[str, Any] = {
    "texts": 24,
    "videos": 24,
    "words": 12,
    "frames": 10,
    "dim": 64,
    "budget_mb": 0.25,
    "gallery_videos": 2000,
    "subset_texts": 0,
    "repeats": 1,
    "cap_s": 2.0,
    "min_timed_s": 0.02,
    "matmul_size": 256,
}

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


# ---------------------------------------------------------------------------- methods


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


def build_head(method: str, args: argparse.Namespace, clip_dir: Path) -> RetrievalHead:
    """``method``'s head, from its config, at the run's sizes, perturbed, on the run's device
    and in :func:`row_dtype` (eval mode, no grad). Raises whatever building the module
    raises."""
    class_path, init_args = method_config(method, Path(args.config_dir))
    overrides = {
        "clip": str(clip_dir),
        "clip_checkpoint": None,
        "max_words": args.words,
        "max_frames": args.frames,
    }
    torch.manual_seed(args.seed)
    module = build_from_config(class_path, init_args, overrides)
    head = module.head
    if not isinstance(head, RetrievalHead):
        raise TypeError(f"{type(module).__name__}.head is not a RetrievalHead")
    head = perturb(head, args.seed)
    dtype = DTYPES[row_dtype(head, args.dtype)]
    return head.to(device=torch.device(args.device), dtype=dtype)


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


# ---------------------------------------------------------------------------- cases


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
    args: argparse.Namespace,
    frames: int,
    notes: list[str],
) -> Case:
    """The block layout, timed texts and costs of ``head`` on these states."""
    budget = int(args.budget_mb * MIB)
    n_texts = next(iter(text.values())).shape[0]
    n_videos = next(iter(video.values())).shape[0]
    words, dim = args.words, args.dim
    t_block, v_block = block_sizes(n_texts, n_videos, head.pair_bytes(text, video), budget)
    pair_flops = head.pair_flops(words, frames, dim)
    ref_pair_flops = head.reference_pair_flops(words, frames, dim)
    timed = n_texts
    if 0 < args.subset_texts < n_texts and not is_plain_matmul(head, words, frames, dim):
        # Whole text blocks, at least one.
        timed = min(n_texts, max(t_block, math.ceil(args.subset_texts / t_block) * t_block))
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


def build_case(method: str, head: RetrievalHead, args: argparse.Namespace) -> Case:
    """``method``'s gallery at the sizes in ``args`` (deterministic in the seed), in the head's
    :func:`row_dtype`."""
    device, dtype = torch.device(args.device), DTYPES[row_dtype(head, args.dtype)]
    raw = random_inputs(args.texts, args.videos, args.words, args.frames, args.dim, args.seed)
    raw = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        for k, v in raw.items()
    }
    text = text_states(head, raw["sentence"], raw["words"], raw["attention_mask"])
    video = video_states(head, raw["frame_emb"], raw["frame_mask"])
    notes = [f"head {type(head).__name__}"]
    label = dtype_note(head, args.dtype)
    if label:
        notes.append(label)
    return make_case(method, head, text, video, args, args.frames, notes)


def build_gallery_case(methods: list[str], head: RetrievalHead, args: argparse.Namespace) -> Case:
    """The large cached gallery of a dot-product head: ``--gallery-videos`` one-frame videos
    (such a head's video state is one vector whatever N) against the run's texts."""
    device, dtype = torch.device(args.device), DTYPES[row_dtype(head, args.dtype)]
    raw = random_inputs(args.texts, 1, args.words, 1, args.dim, args.seed)
    gen = torch.Generator().manual_seed(args.seed + 2)
    frames = F.normalize(torch.randn(args.gallery_videos, 1, args.dim, generator=gen), dim=-1)
    frames = frames.to(device=device, dtype=dtype)
    mask = torch.ones(args.gallery_videos, 1, dtype=torch.bool, device=device)
    text = text_states(
        head,
        raw["sentence"].to(device=device, dtype=dtype),
        raw["words"].to(device=device, dtype=dtype),
        raw["attention_mask"].to(device),
    )
    video = video_states(head, frames, mask)
    notes = [
        f"head {type(head).__name__}; cached gallery of one-frame videos, shared by "
        f"{', '.join(methods)}"
    ]
    name = "_".join(methods) + GALLERY_SUFFIX
    return make_case(name, head, text, video, args, 1, notes)


# -------------------------------------------------------------------------- measuring


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(
    fn: Callable[[], Tensor],
    device: torch.device,
    repeats: int,
    cap_s: float,
    min_timed_s: float = FULL_SIZES["min_timed_s"],
) -> tuple[list[float], Tensor]:
    """Wall times of ``repeats`` runs (fewer once their sum passes ``cap_s``, at least one; more,
    up to :data:`MAX_RUNS`, while their sum is under ``min_timed_s``) and the last output.
    The caller warms up first."""
    times: list[float] = []
    out: Tensor | None = None
    # Short calls (milliseconds) repeat until min_timed_s has passed, for a stable median.
    while len(times) < max(1, repeats) or (sum(times) < min_timed_s and len(times) < MAX_RUNS):
        synchronize(device)
        start = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        if sum(times) > cap_s:
            break
    assert out is not None
    return times, out


def matmul_rate_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """Dense ``torch.mm`` rate of ``size×size`` operands, GFLOP/s (multiply-adds)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    times, _ = time_runs(lambda: a @ b, device, 1, math.inf)  # warm-up
    times, _ = time_runs(lambda: a @ b, device, repeats, math.inf)
    return size**3 / statistics.median(times) / 1e9


def measure_peak_here(fn: Callable[[], Tensor], device: torch.device) -> dict[str, Any]:
    """Peak memory growth of one call of ``fn`` in this process, bytes."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        out = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - base
        del out
        return {"peak_bytes": peak, "how": "torch.cuda.max_memory_allocated"}
    reset = reset_peak_rss()
    base_kb = proc_status_kb("VmRSS")
    if base_kb is None:  # no /proc: ru_maxrss covers the whole process (an upper bound)
        import resource

        out = fn()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_bytes": peak_kb * 1024, "how": "ru_maxrss (whole process)"}
    out = fn()
    peak_kb = proc_status_kb("VmHWM") or base_kb
    del out
    how = "VmHWM-VmRSS" if reset else "VmHWM-VmRSS (peak mark not reset: upper bound)"
    return {"peak_bytes": (peak_kb - base_kb) * 1024, "how": how}


def measure_peak(
    case: Case, kind: str, args: argparse.Namespace, case_file: Path
) -> tuple[float, str]:
    """Peak memory (MiB) of one ``kind`` ("fast" or "reference") run of ``case`` on
    ``case.peak_texts`` texts and how it was measured. CPU: in a fresh child process that loads
    ``case_file`` (unless ``--quick``); CUDA: in this process. NaN and the reason on failure."""
    fn = case.fast if kind == "fast" else case.reference
    if args.device.startswith("cuda") or args.quick:
        with torch.no_grad():
            result = measure_peak_here(lambda: fn(case.peak_texts), torch.device(args.device))
        how = result["how"] + (" in this process (--quick)" if args.quick else "")
        return result["peak_bytes"] / MIB, how
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--threads={args.threads}"]
    cmd += [f"--device={args.device}", f"--measure-peak={case_file}:{kind}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return math.nan, f"child failed: {why}"
    result = json.loads(lines[-1])
    return result["peak_bytes"] / MIB, result["how"]


def save_case(case: Case, path: Path) -> None:
    """The head (pickled) and the states of ``case``, for a measuring child."""
    fields = {k: getattr(case, k) for k in Case.__dataclass_fields__}
    torch.save(fields, path)


def child_main(spec: str, args: argparse.Namespace) -> int:
    """Body of a measuring child: load the case, score once, print the peak as JSON."""
    path, _, kind = spec.rpartition(":")
    case = Case(**torch.load(path, weights_only=False))
    fn = case.fast if kind == "fast" else case.reference
    with torch.no_grad():
        result = measure_peak_here(lambda: fn(case.peak_texts), torch.device(args.device))
    print(json.dumps(result))
    return 0


def counted_flops(case: Case, n_texts: int, n_videos: int) -> tuple[int, int]:
    """Multiply-adds of the fast scorer on a small block: (``torch.utils.flop_counter`` count of
    matrix products, formula ``pair_flops × pairs``)."""
    from torch.utils.flop_counter import FlopCounterMode

    text = slice_state(case.text, 0, n_texts)
    video = slice_state(case.video, 0, n_videos)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        case.head.score(text, video)
    # flop_counter counts 2 FLOPs per multiply-add.
    return counter.get_total_flops() // 2, case.pair_flops * n_texts * n_videos


# ------------------------------------------------------------------------------- run


def run_case(
    case: Case, args: argparse.Namespace, matmul_gflops: float, work_dir: Path
) -> dict[str, Any]:
    """Time, measure and check one case; returns its CSV row (plus printing extras)."""
    device = torch.device(args.device)
    n = case.timed_texts
    scale = case.n_texts / n  # extrapolation to the full gallery
    with torch.no_grad():
        case.fast(case.warmup_texts)
        fast_times, fast_out = time_runs(
            lambda: case.fast(n), device, args.repeats, args.cap_s, args.min_timed_s
        )
        case.reference(case.warmup_texts)
        ref_times, ref_out = time_runs(
            lambda: case.reference(n), device, args.repeats, args.cap_s, args.min_timed_s
        )
        diff = (fast_out.float() - ref_out.float()).abs().max().item()
        small_t, small_v = min(4, case.n_texts), min(16, case.n_videos)
        counted, formula = counted_flops(case, small_t, small_v)
    del fast_out, ref_out
    gc.collect()
    case_file = work_dir / f"{case.name}.pt"
    if not (args.quick or device.type == "cuda"):
        save_case(case, case_file)
    peak_mb, how = measure_peak(case, "fast", args, case_file)
    ref_peak_mb, ref_how = measure_peak(case, "reference", args, case_file)
    case_file.unlink(missing_ok=True)

    time_s = statistics.median(fast_times) * scale
    ref_time_s = statistics.median(ref_times) * scale
    flops = case.pair_flops * case.n_texts * case.n_videos
    gflops_per_s = flops / time_s / 1e9
    ref_gflops_per_s = case.ref_pair_flops * case.n_texts * case.n_videos / ref_time_s / 1e9
    notes = list(case.notes)
    notes.append(f"runs {len(fast_times)}/{len(ref_times)}; peak via {how}")
    if case.peak_texts < n:
        notes.append(f"peaks on the first {case.peak_texts} texts (the working set is per block)")
    if ref_how != how:
        notes.append(f"reference peak via {ref_how}")
    row = {
        "device": device.type,
        "method": case.name,
        "n_texts": case.n_texts,
        "n_videos": case.n_videos,
        "words": case.words,
        "frames": case.frames,
        "dim": args.dim,
        "dtype": row_dtype(case.head, args.dtype),
        "time_s": time_s,
        "ref_time_s": ref_time_s,
        "speedup": ref_time_s / time_s,
        "peak_mb": peak_mb,
        "ref_peak_mb": ref_peak_mb,
        "mem_ratio": peak_mb / ref_peak_mb if ref_peak_mb > 0 else math.nan,
        "flops": flops,
        "gflops_per_s": gflops_per_s,
        "matmul_gflops_per_s": matmul_gflops,
        "frac_of_matmul": gflops_per_s / matmul_gflops,
        "budget_mb": args.budget_mb,
        "max_abs_diff_vs_ref": diff,
        "timed_texts": n,
        "ref_runs": len(ref_times),
        "note": "; ".join(notes),
    }
    row["_ref_gflops_per_s"] = ref_gflops_per_s
    row["_counted"] = (counted, formula, small_t, small_v)
    row["_plain"] = is_plain_matmul(case.head, case.words, case.frames, args.dim)
    row["_pair_flops"] = (case.pair_flops, case.ref_pair_flops, reference_note(case.head))
    return row


def check_targets(row: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """One line per target of the row: met, or missed with the measurement behind it."""
    name, lines = row["method"], []
    if not row["_plain"]:
        ok = row["peak_mb"] <= args.budget_mb
        ratio = row["mem_ratio"]
        share = f"{100 * ratio:.1f} %" if math.isfinite(ratio) else "(not comparable)"
        lines.append(
            f"{name} speed-up {row['speedup']:.2f}x over its reference; peak "
            f"{row['peak_mb']:.2f} MiB = {share} of the reference's {row['ref_peak_mb']:.2f} MiB "
            f"(target: within the {args.budget_mb:g} MiB budget): {'met' if ok else 'MISSED'}"
        )
        return lines
    ok = row["frac_of_matmul"] >= 0.7
    line = (
        f"{name} {row['gflops_per_s']:.1f} GFLOP/s = {100 * row['frac_of_matmul']:.0f} % "
        f"of the matmul rate (target >= 70 %): {'met' if ok else 'MISSED'}"
    )
    if not ok:
        plain = row["_ref_gflops_per_s"]
        line += (
            f" — {row['flops'] / 1e9:.2f} GFLOP in {1e3 * row['time_s']:.1f} ms. Its reference "
            f"(the plain torch matmul of the same [{row['n_texts']}, {args.dim}] x "
            f"[{args.dim}, {row['n_videos']}] shape) reaches {plain:.1f} GFLOP/s "
            f"({100 * plain / row['matmul_gflops_per_s']:.0f} % of the "
            f"{row['matmul_gflops_per_s']:.0f} GFLOP/s square product) in this run: the "
            f"limit is the shape (a short call with a large output per FLOP), not the chunking"
        )
        if not name.endswith(GALLERY_SUFFIX):
            line += "; the large-gallery row is the one that can reach the target"
    lines.append(line)
    return lines


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    width = max([26, *(len(r["method"]) + 2 for r in rows)])
    header = (
        f"{'method':<{width}}{'time_s':>10}{'ref_s':>10}{'speedup':>9}{'peak_MiB':>10}"
        f"{'ref_MiB':>10}{'mem':>7}{'GFLOP':>10}{'GFLOP/s':>9}{'ref_GF/s':>9}{'of_mm':>7}"
        f"{'max|diff|':>11}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:<{width}}{r['time_s']:>10.4f}{r['ref_time_s']:>10.4f}"
            f"{r['speedup']:>9.2f}{r['peak_mb']:>10.1f}{r['ref_peak_mb']:>10.1f}"
            f"{r['mem_ratio']:>7.3f}{r['flops'] / 1e9:>10.2f}{r['gflops_per_s']:>9.1f}"
            f"{r['_ref_gflops_per_s']:>9.1f}{100 * r['frac_of_matmul']:>6.0f}%"
            f"{r['max_abs_diff_vs_ref']:>11.2e}"
        )
    print()
    for r in rows:
        counted, formula, bt, bv = r["_counted"]
        print(
            f"{r['method']}: {r['n_texts']}x{r['n_videos']} pairs; FLOP cross-check on "
            f"{bt}x{bv}: flop_counter {counted:,} (matrix products) vs pair_flops x pairs "
            f"{formula:,} ({counted / formula:.3f}); {r['note']}"
        )
    compared = [r for r in rows if r["_pair_flops"][0] != r["_pair_flops"][1]]
    if compared:
        print()
        print(
            f"per-pair multiply-adds at L = {args.words}, N = {args.frames}, D = {args.dim}, "
            "fast vs reference (how the reference was counted):"
        )
    for r in compared:
        fast, ref, note = r["_pair_flops"]
        print(
            f"  {r['method']}: {fast / 1e6:.4g} M vs {ref / 1e6:.4g} M ({ref / fast:.2f}x) — {note}"
        )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows atomically: the documented columns, floats to 6 significant digits."""
    from tvrbench.atomic import atomic_write_csv

    columns = COLUMNS + EXTRA_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [{k: r[k] for k in columns if k in r} for r in rows]  # the documented columns only
    atomic_write_csv(path, kept, columns, float_format=".6g")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in seconds")
    p.add_argument(
        "--methods",
        default=None,
        help="NAME[,NAME...]: configs in --config-dir (default: every config but variants)",
    )
    p.add_argument("--config-dir", default=str(CONFIG_DIR), help="folder of the method YAMLs")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--texts", type=int, default=None, help="Bt (1004)")
    p.add_argument("--videos", type=int, default=None, help="Bv (1004)")
    p.add_argument("--words", type=int, default=None, help="L, max tokens per text (64)")
    p.add_argument("--frames", type=int, default=None, help="N, max frames per video (64)")
    p.add_argument("--dim", type=int, default=None, help="D, joint embedding width (512)")
    p.add_argument("--budget-mb", type=float, default=None, help="scoring memory budget, MiB")
    p.add_argument(
        "--gallery-videos",
        type=int,
        default=None,
        help="videos of the large cached gallery of dot-product heads (0: skip those rows)",
    )
    p.add_argument(
        "--subset-texts",
        type=int,
        default=None,
        help="per-pair methods: time on the first whole text blocks covering this many texts, "
        "extrapolate (0: time every text)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed runs after the warm-up")
    p.add_argument("--cap-s", type=float, default=None, help="stop repeating once runs pass this")
    p.add_argument("--min-timed-s", type=float, default=None, help="repeat short calls this long")
    p.add_argument(
        "--matmul-size", type=int, default=None, help="0: 4096 on CPU, 8192 on CUDA (256 quick)"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV (default benchmarks/results/scoring-<dev>.csv)")
    p.add_argument(
        "--published-protocol",
        default=None,
        help="msrvtt[,didemo]: every method's head cost at GLSCL Table I's MSR-VTT 1k-A sizes "
        "(and DiDeMo's) next to the published figures, and the per-query pipeline cost; writes "
        "efficiency-published.csv and efficiency-pipeline.csv (benchmarks/published_efficiency.py)",
    )
    p.add_argument("--no-timing", action="store_true", help="--published-protocol: counts only")
    p.add_argument("--measure-peak", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure_peak:
        return args
    for name, value in (QUICK_SIZES if args.quick else FULL_SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("texts", "videos", "words", "frames", "dim"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    config_dir = Path(args.config_dir)
    methods, unknown = resolve_methods(args.methods, config_dir)
    if unknown or not methods:
        known = ", ".join(config_names(config_dir)) or "none"
        p.error(f"unknown method(s) {unknown}: no such config in {config_dir} (there: {known})")
    args.method_list = methods
    args.named = bool(args.methods)  # methods asked for by name: a skip is a failure
    if args.published_protocol:
        from benchmarks.published_efficiency import PROTOCOLS

        args.protocols = args.published_protocol.split(",")
        bad = [name for name in args.protocols if name not in PROTOCOLS]
        if bad:
            p.error(f"--published-protocol {bad}: not one of {', '.join(PROTOCOLS)}")
    return args


def default_out(args: argparse.Namespace) -> Path:
    """Where the CSV goes without ``--out``: the committed results, or outputs/ for --quick."""
    device_type = torch.device(args.device).type
    if args.quick:
        return ROOT / "outputs" / "benchmarks" / f"scoring-{device_type}-quick.csv"
    return ROOT / "benchmarks" / "results" / f"scoring-{device_type}.csv"


def published_protocol_main(args: argparse.Namespace) -> int:
    """``--published-protocol``: the head-cost table next to GLSCL's Table I and the per-query
    pipeline cost, written to ``--out``'s folder (default ``benchmarks/results``)."""
    from benchmarks.published_efficiency import markdown_table, run

    start = time.perf_counter()
    out_dir = Path(args.out).parent if args.out else ROOT / "benchmarks" / "results"
    print(
        f"published protocol(s) {','.join(args.protocols)}, methods {','.join(args.method_list)}, "
        f"device {args.device}, {torch.get_num_threads()} threads, dtype {args.dtype}",
        flush=True,
    )
    head_rows, _ = run(args.protocols, args.method_list, args, out_dir)
    print()
    print(markdown_table(head_rows))
    print(f"wrote {out_dir}/efficiency-published.csv and efficiency-pipeline.csv "
          f"({time.perf_counter() - start:.0f} s in all)")  # fmt: skip
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.measure_peak:
        return child_main(args.measure_peak, args)
    if args.published_protocol:
        return published_protocol_main(args)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    size = args.matmul_size or (8192 if device.type == "cuda" else 4096)
    start = time.perf_counter()
    repeats = 3 if device.type == "cpu" else 10
    matmul = matmul_rate_gflops(device, dtype, size, repeats)
    #: The matmul rate of every dtype a row runs in (a float32-only head in a bf16 run: fp32).
    rates = {args.dtype: matmul}

    def rate_of(head: RetrievalHead) -> float:
        name = row_dtype(head, args.dtype)
        if name not in rates:
            rates[name] = matmul_rate_gflops(device, DTYPES[name], size, repeats)
            print(f"dense matmul {size}^3 in {name}: {rates[name]:.1f} GFLOP/s", flush=True)
        return rates[name]

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"device {name}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"dtype {args.dtype}; dense matmul {size}^3: {matmul:.1f} GFLOP/s (multiply-adds); "
        f"{args.texts}x{args.videos} pairs, L = {args.words}, N = {args.frames}, D = {args.dim}; "
        f"methods {','.join(args.method_list)} (configs in {args.config_dir})",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    galleries: dict[type, tuple[list[str], RetrievalHead]] = {}
    with tempfile.TemporaryDirectory(prefix="tvrbench-scoring-") as tmp:
        work_dir = Path(tmp)
        clip_dir = random_clip_dir(work_dir, args.dim, args.words)
        for method in args.method_list:
            t0 = time.perf_counter()
            try:
                head = build_head(method, args, clip_dir)
                case = build_case(method, head, args)
            except Exception as err:  # a module that cannot be built here is skipped
                print(f"  skipped {method}: {type(err).__name__}: {err}", flush=True)
                skipped.append(method)
                continue
            rows.append(run_case(case, args, rate_of(head), work_dir))
            if is_plain_matmul(head, args.words, args.frames, args.dim):
                galleries.setdefault(type(head), ([], head))[0].append(method)
            del case
            gc.collect()
            print(f"  {method}: done in {time.perf_counter() - t0:.1f} s", flush=True)
        if args.gallery_videos > 0:
            for methods, head in galleries.values():
                t0 = time.perf_counter()
                case = build_gallery_case(methods, head, args)
                rows.append(run_case(case, args, rate_of(head), work_dir))
                del case
                gc.collect()
                print(f"  {rows[-1]['method']}: done in {time.perf_counter() - t0:.1f} s")
    print()
    if rows:
        print_table(rows, args)
        print()
    tol = TOLERANCE[args.dtype]
    failed = [r["method"] for r in rows if not r["max_abs_diff_vs_ref"] <= TOLERANCE[r["dtype"]]]
    for r in rows:
        for line in check_targets(r, args):
            print(line)
    print(
        f"numerics: fast == reference within {tol:g} (max abs diff; fp32 rows "
        f"{TOLERANCE['fp32']:g}) for "
        + ("every method" if not failed else f"all but {failed} — FAILED")
    )
    if skipped:
        print(f"skipped (module cannot be built here): {','.join(skipped)}")
    out = Path(args.out) if args.out else default_out(args)
    write_csv(rows, out)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s in all)")
    if args.named and skipped:
        print(f"error: no measurement for {','.join(skipped)}", file=sys.stderr)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
