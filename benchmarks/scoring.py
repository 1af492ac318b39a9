"""Scoring at scale: every method's gallery scoring against the machine's dense matmul rate.

Scores a DiDeMo-test-sized gallery (1004 texts × 1004 videos, L = N = 64, D = 512 by default) from
cached states with :func:`tvrbench.chunking.chunked_score` under a memory budget, next to

* the method's straightforward reference, :meth:`~tvrbench.retrieval.RetrievalHead.reference_score`
  (written from SPEC; the plain matmul where the fast scorer already is one), evaluated block by
  block with the fast scorer's block layout (no reference holds a whole gallery of pairs);
* the machine's dense matmul rate, measured in the same run (a large ``torch.mm`` in the run's
  dtype, fp32 by default; 1 FLOP = 1 multiply-add, as fvcore counts).

Methods (``--methods NAME[,NAME...]``, default: every config of ``--config-dir`` but variants,
:func:`tvrbench.methods.default_methods`) are configs ``<name>.yaml`` with
``model: {class_path, init_args}``. Nothing here knows a method by name: the module is built from
its config (:func:`tvrbench.bench.head_cost.build_head`) on a random tiny CLIP whose projection
width is ``--dim``, with ``--words``/``--frames`` as its ``max_words``/``max_frames`` where the
method takes them (:func:`tvrbench.methods.place_data_shape`), as ``tvrbench bench`` does, and its
head is what is measured.
A config whose module cannot be built is skipped with the reason (exit status 1 when it was
named in ``--methods``). Heads whose pair cost is one dot product (``reference_pair_flops`` None and
``pair_flops == D``: meanP, CenterCLIP) also get a large-gallery row, one per head class
(``--gallery-videos`` one-frame videos; such a head's state is one vector whatever N).

Inputs are random but shaped like DiDeMo: unit-norm features, word lengths drawn uniformly in
[20, 64] of L = 64 and frame counts in [10, 64] of N = 64 (scaled with L and N at other sizes),
padded frames zero like the backbone's, turned into states by the head's own ``text_state`` and
``video_state`` (a head's temporal encoder, if any, is part of its video state, not of scoring).
Head parameters are the module's initialisation plus seeded noise (so no algebraic shortcut can
hide behind an identity matrix). Inputs, head and gallery: :mod:`tvrbench.bench.head_cost`.

Time: median of the timed runs after a warm-up (:func:`tvrbench.bench.latency.time_runs`; CPU:
``time.perf_counter``; CUDA: events on the measured device, synchronised).
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

The heads' cost at the published MSR-VTT sizes next to GLSCL's Table I is
``benchmarks/published_efficiency.py`` (``make bench-efficiency``).
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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from tvrbench.bench.child_env import child_env
from tvrbench.bench.environment import proc_status_kb, reset_peak_rss
from tvrbench.bench.head_cost import (
    DTYPES,
    MIB,
    Case,
    CaseSettings,
    build_case,
    build_head,
    is_plain_matmul,
    make_case,
    random_clip_dir,
    random_inputs,
    reference_note,
    row_dtype,
    text_states,
    video_states,
)
from tvrbench.bench.latency import time_runs
from tvrbench.chunking import slice_state
from tvrbench.methods import CONFIG_DIR, add_method_options, methods_from_options
from tvrbench.retrieval import RetrievalHead

ROOT = Path(__file__).resolve().parents[1]
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
#: Max abs difference allowed between a fast score and its reference, per dtype.
TOLERANCE = {"fp32": 1e-5, "bf16": 2e-2, "fp16": 5e-3}
#: Suffix of a large-gallery row's name (``meanp_centerclip_gallery``: the methods sharing it).
GALLERY_SUFFIX = "_gallery"
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

# ---------------------------------------------------------------------------- cases


def case_settings(args: argparse.Namespace) -> CaseSettings:
    """The run's gallery sizes, budget, timed subset, dtype, device and seed."""
    return CaseSettings(
        texts=args.texts,
        videos=args.videos,
        words=args.words,
        frames=args.frames,
        dim=args.dim,
        budget_mb=args.budget_mb,
        subset_texts=args.subset_texts,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
    )


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
    return make_case(name, head, text, video, case_settings(args), 1, notes)


# -------------------------------------------------------------------------- measuring


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
    add_method_options(p, ROOT / CONFIG_DIR)
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
    args.method_list = methods_from_options(p, args)
    args.named = bool(args.methods)  # methods asked for by name: a skip is a failure
    return args


def default_out(args: argparse.Namespace) -> Path:
    """Where the CSV goes without ``--out``: the committed results, or outputs/ for --quick."""
    device_type = torch.device(args.device).type
    if args.quick:
        return ROOT / "outputs" / "benchmarks" / f"scoring-{device_type}-quick.csv"
    return ROOT / "benchmarks" / "results" / f"scoring-{device_type}.csv"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.measure_peak:
        return child_main(args.measure_peak, args)
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
    settings = case_settings(args)
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    galleries: dict[type, tuple[list[str], RetrievalHead]] = {}
    with tempfile.TemporaryDirectory(prefix="tvrbench-scoring-") as tmp:
        work_dir = Path(tmp)
        clip_dir = random_clip_dir(work_dir, args.dim, args.words)
        for method in args.method_list:
            t0 = time.perf_counter()
            try:
                head = build_head(method, settings, clip_dir, args.config_dir)
                case = build_case(method, head, settings)
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
