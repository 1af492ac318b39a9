"""Head cost under one counter next to the published efficiency table (GLSCL paper Table I).

GLSCL's paper (arXiv 2405.12710, Table I, MSR-VTT 1k-A, ViT-B/32) gives the FLOPs of each
method's similarity head for the full 1,000 × 1,000 test: 32 words, 12 frames, D = 512. This
module recounts every suite method at exactly those sizes with the suite's one convention
(1 FLOP = 1 multiply-add, the heads' written-out formulas, cross-checked with fvcore/torch
counters in ``benchmarks/scoring.py``) on the same random DiDeMo-shaped states
(:mod:`tvrbench.bench.head_cost`):

* ``reference_gflops`` — the official forward's count (the head's ``reference_pair_flops``, or its
  ``pair_flops`` where the official code is the same computation) × pairs;
* ``fast_gflops`` — the suite's fast form (``pair_flops`` × pairs, states cached per item);

times both on this machine (:class:`~tvrbench.bench.head_cost.Case`: chunked fast scorer,
block-wise reference; :func:`tvrbench.bench.latency.time_runs`), and
writes the published figure, the ratio and a one-line reason for every difference. The same table
at DiDeMo sizes (64 words, 64 frames, 1004 × 1004; nothing is published there).

Whole-pipeline cost per query (:func:`pipeline_rows`): CLIP ViT-B/32 text encoding (fvcore, eager
attention, a random ViT-B/32-architecture model), the head's text state, and scoring against a
cached gallery of 1k / 10k / 100k videos (``pair_flops`` × gallery): the share the head takes.

Per-pair methods are timed on the first whole text blocks covering ``subset_texts`` texts and
extrapolated to the full gallery (every block costs the same: same shapes, i.i.d. inputs); the
gallery sizes beyond 1k in the pipeline table are extrapolated linearly from the 1k timing. Both
are stated in the ``time_note`` column.

Usage (``make bench-efficiency``)::

    .venv/bin/python benchmarks/published_efficiency.py [--protocols msrvtt,didemo]
        [--methods NAME[,NAME...]] [--config-dir configs/method] [--device cpu|cuda]
        [--dtype fp32|bf16|fp16] [--no-timing] [--out-dir benchmarks/results]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tvrbench.backbone import TextFeatures
from tvrbench.bench.head_cost import (
    DTYPES,
    CaseSettings,
    build_case,
    build_head,
    random_clip_dir,
    random_inputs,
    reference_note,
)
from tvrbench.bench.latency import time_runs
from tvrbench.methods import CONFIG_DIR, add_method_options, methods_from_options
from tvrbench.retrieval import RetrievalHead

ROOT = Path(__file__).resolve().parents[1]
#: The chunked scorer's memory budget without ``--budget-mb`` (``benchmarks/scoring.py``'s).
BUDGET_MB = 2048.0


@dataclass(frozen=True)
class Protocol:
    """A test protocol's sizes: texts × videos, words L, frames N, width D."""

    name: str
    texts: int
    videos: int
    words: int
    frames: int
    dim: int
    #: Texts timed per method (whole text blocks covering at least this many; 0: all).
    subset_texts: int


PROTOCOLS = {
    "msrvtt": Protocol("msrvtt", 1000, 1000, 32, 12, 512, subset_texts=100),
    "didemo": Protocol("didemo", 1004, 1004, 64, 64, 512, subset_texts=16),
}
GALLERY_SIZES = (1_000, 10_000, 100_000)


@dataclass(frozen=True)
class Published:
    """One row of GLSCL's Table I: the head GFLOPs it prints for the MSR-VTT 1k-A test."""

    gflops: float
    #: Method name in the paper (the suite's config name is the key of :data:`PUBLISHED`).
    paper_name: str


#: GLSCL paper Table I (arXiv 2405.12710), "FLOPs of the similarity calculation head".
PUBLISHED = {
    "meanp": Published(0.5, "CLIP4Clip"),
    "centerclip": Published(1.5, "CenterCLIP"),
    "xclip": Published(220.9, "X-CLIP"),
    "xpool": Published(275.0, "X-Pool"),
    "glscl": Published(1.0, "GLSCL"),
}
#: Rows of Table I for methods the suite does not implement (printed for completeness).
PUBLISHED_ONLY = {"TS2-Net": 6.1, "Prompt Switch": 298.5}


def reason(method: str, p: Protocol, reference: float, fast: float) -> str:
    """One line on why the suite's count differs from the published one (MSR-VTT), or what the
    count is made of where nothing is published. ``reference``/``fast``: GFLOPs of the table."""
    lw, n, d, pairs = p.words, p.frames, p.dim, p.texts * p.videos
    g = pairs / 1e9  # GFLOPs of one multiply-add per pair

    def gf(per_pair: float) -> str:
        return f"{per_pair * g:.1f} G"

    if method == "meanp":
        return f"same count: one D-dot per pair (D = {d}: {gf(d)}); Table I rounds it"
    if method == "centerclip":
        return (
            f"CenterCLIP's head is meanP's dot product ({gf(d)}); its clustering is video "
            "encoding, not scoring. Table I's 1.5 G (3x the dot product) is not derivable "
            "from the official head: not reconciled"
        )
    if method == "xpool":
        return (
            f"Table I ≈ one D x D linear plus the attention per pair (D² + 2·N·D = "
            f"{gf(d * d + 2 * n * d)}); the official forward applies two D x D linears per pair "
            f"(out_proj and linear_proj, 2·D² = {gf(2 * d * d)}); our fast form folds both into "
            f"per-video states ({fast:.1f} G)"
        )
    if method == "xclip":
        gemms = lw * n * d + (lw + n) * d + d
        mix = lw * n * (lw + n) + 2 * (lw * lw + n * n)
        return (
            f"Table I ≈ the matrix products L·N·D + (L+N)·D + D ({gf(gemms)}); the official AOSM "
            f"also mixes the L x N similarities with its L x L / N x N weights (L·N·(L+N) + "
            f"2(L² + N²) = {gf(mix)}), which Table I leaves out"
        )
    if method == "glscl":
        return (
            f"Table I ≈ two D-dots per pair (2·D = {gf(2 * d)}), as if both scores were cached "
            f"vectors; the official GIM pools the N frames per pair (2·N·D = {gf(2 * n * d)}) and "
            f"S_l compares Q = 8 concepts (Q·D = {gf(8 * d)}); its unused per-pair weight_fc "
            f"(8·D² = {gf(8 * d * d)}) is left out of both counts"
        )
    if method.startswith("glccl"):
        return (
            f"nothing published; GLIM pools the frames per pair for the sentence and every word "
            f"(2·(L+1)·N·D = {gf(2 * (lw + 1) * n * d)}) and M costs L²·D ({gf(lw * lw * d)}): "
            "the most expensive head here"
        )
    return "nothing published"


@dataclass
class HeadCostRow:
    """One method's head cost at one protocol (a row of ``efficiency-published.csv``)."""

    protocol: str
    method: str
    head: str
    n_texts: int
    n_videos: int
    words: int
    frames: int
    dim: int
    published_gflops: float | None
    reference_gflops: float | None
    fast_gflops: float | None
    reference_over_published: float | None
    fast_over_published: float | None
    fast_time_s: float | None
    reference_time_s: float | None
    timed_texts: int | None
    device: str
    dtype: str
    reason: str
    counted_as: str
    time_note: str


@dataclass
class PipelineRow:
    """Per-query cost of text encoding + scoring against a cached gallery (a row of
    ``efficiency-pipeline.csv``)."""

    protocol: str
    method: str
    gallery_videos: int
    text_tower_gflops: float
    text_state_gflops: float
    scoring_gflops: float
    total_gflops: float
    scoring_share: float
    text_ms: float
    scoring_ms: float
    total_ms: float
    device: str
    time_note: str


def case_settings(p: Protocol, base: argparse.Namespace) -> CaseSettings:
    """Protocol ``p``'s sizes with the run's budget, dtype, device and seed."""
    return CaseSettings(
        texts=p.texts,
        videos=p.videos,
        words=p.words,
        frames=p.frames,
        dim=p.dim,
        budget_mb=base.budget_mb,
        subset_texts=p.subset_texts,
        dtype=base.dtype,
        device=base.device,
        seed=base.seed,
    )


def head_cost_row(
    method: str, head: RetrievalHead, p: Protocol, args: CaseSettings, timed: bool
) -> tuple[HeadCostRow, float]:
    """The row of ``method`` at protocol ``p`` and its fast time per pair (seconds; NaN when not
    timed)."""
    pair_flops = head.pair_flops(p.words, p.frames, p.dim)
    ref = head.reference_pair_flops(p.words, p.frames, p.dim)
    pairs = p.texts * p.videos
    fast_g, ref_g = pair_flops * pairs / 1e9, (pair_flops if ref is None else ref) * pairs / 1e9
    pub = PUBLISHED.get(method)
    fast_s = ref_s = None
    n_timed: int | None = None
    note = "not timed"
    if timed:
        case = build_case(method, head, args)
        device = torch.device(args.device)
        n_timed = case.timed_texts
        scale = case.n_texts / n_timed
        with torch.no_grad():
            case.fast(case.warmup_texts)
            f_times, _ = time_runs(lambda: case.fast(n_timed), device, 2, 30.0, 0.5)
            case.reference(case.warmup_texts)
            r_times, _ = time_runs(lambda: case.reference(n_timed), device, 2, 30.0, 0.5)
        fast_s = statistics.median(f_times) * scale
        ref_s = statistics.median(r_times) * scale
        note = f"median of {len(f_times)}/{len(r_times)} runs"
        if n_timed < case.n_texts:
            note += f"; timed on {n_timed}/{case.n_texts} texts, extrapolated x{scale:.2f}"
    row = HeadCostRow(
        protocol=p.name,
        method=method,
        head=type(head).__name__,
        n_texts=p.texts,
        n_videos=p.videos,
        words=p.words,
        frames=p.frames,
        dim=p.dim,
        published_gflops=pub.gflops if pub and p.name == "msrvtt" else None,
        reference_gflops=ref_g,
        fast_gflops=fast_g,
        reference_over_published=ref_g / pub.gflops if pub and p.name == "msrvtt" else None,
        fast_over_published=fast_g / pub.gflops if pub and p.name == "msrvtt" else None,
        fast_time_s=fast_s,
        reference_time_s=ref_s,
        timed_texts=n_timed,
        device=args.device,
        dtype=args.dtype,
        reason=reason(method, p, ref_g, fast_g)
        if p.name == "msrvtt"
        else "nothing published at DiDeMo sizes (Table I is MSR-VTT)",
        counted_as=reference_note(head),
        time_note=note,
    )
    per_pair_s = fast_s / pairs if fast_s is not None else float("nan")
    return row, per_pair_s


def published_only_rows() -> list[HeadCostRow]:
    """Table I's rows for methods the suite does not implement."""
    p = PROTOCOLS["msrvtt"]
    return [
        HeadCostRow(
            "msrvtt",
            name,
            "",
            p.texts,
            p.videos,
            p.words,
            p.frames,
            p.dim,
            gflops,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            "",
            "",
            "not implemented in the suite",
            "",
            "",
        )  # fmt: skip
        for name, gflops in PUBLISHED_ONLY.items()
    ]


# --------------------------------------------------------------------------- pipeline


@dataclass
class TextTowerCost:
    """ViT-B/32 text encoding of one query of ``words`` tokens: GFLOPs and CPU time (ms)."""

    words: int
    gflops: float
    ms: float


def text_tower_costs(word_counts: list[int], device: str, seed: int) -> list[TextTowerCost]:
    """fvcore count (eager attention) and the median time of encoding one query with the text
    tower of a random ViT-B/32-architecture CLIP (the weights do not change the cost)."""
    from tvrbench.backbone import ClipBackbone, build_vit_b32_model
    from tvrbench.bench.flops import count_flops, eager_attention

    holder = torch.nn.Module()
    holder.backbone = ClipBackbone(build_vit_b32_model(seed)).eval().to(device)
    backbone: Any = holder.backbone
    out = []
    for words in word_counts:
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 49000, (1, words), generator=gen)
        ids[0, -1] = 49407  # end of text
        ids, mask = ids.to(device), torch.ones_like(ids).to(device)

        def encode(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            text = backbone.encode_text(ids, mask)
            return text.sentence, text.words  # (1, D), (1, L, D)

        with eager_attention(holder):
            flops = count_flops(backbone, encode, (ids, mask))
        with torch.no_grad():
            backbone.encode_text(ids, mask)  # warm-up
            times, _ = time_runs(
                lambda: backbone.encode_text(ids, mask).sentence,  # noqa: B023
                torch.device(device),
                5,
                10.0,
                0.2,
            )
        out.append(TextTowerCost(words, flops / 1e9, 1e3 * statistics.median(times)))
    return out


def text_state_cost(head: RetrievalHead, p: Protocol, device: str) -> tuple[float, float]:
    """GFLOPs (fvcore) and time (ms) of the head's text state for one query."""
    from tvrbench.bench.flops import count_flops

    raw = random_inputs(1, 1, p.words, 1, p.dim, 0)
    dtype = next((q.dtype for q in head.parameters()), torch.float32)
    s = raw["sentence"].to(device=device, dtype=dtype)
    w = raw["words"].to(device=device, dtype=dtype)
    m = torch.ones(1, p.words, dtype=torch.bool, device=device)

    def state(s: torch.Tensor, w: torch.Tensor, m: torch.Tensor) -> dict[str, torch.Tensor]:
        return head.text_state(TextFeatures(s, w, m))

    flops = count_flops(head, state, (s, w, m))
    with torch.no_grad():
        state(s, w, m)
        times, _ = time_runs(
            lambda: next(iter(state(s, w, m).values())), torch.device(device), 5, 5.0, 0.05
        )
    return flops / 1e9, 1e3 * statistics.median(times)


def pipeline_rows(
    method: str,
    head: RetrievalHead,
    p: Protocol,
    tower: TextTowerCost,
    per_pair_s: float,
    device: str,
) -> list[PipelineRow]:
    """One row per gallery size of :data:`GALLERY_SIZES`."""
    state_g, state_ms = text_state_cost(head, p, device)
    pair_g = head.pair_flops(p.words, p.frames, p.dim) / 1e9
    rows = []
    for gallery in GALLERY_SIZES:
        scoring_g = pair_g * gallery
        total_g = tower.gflops + state_g + scoring_g
        scoring_ms = 1e3 * per_pair_s * gallery
        note = (
            f"text tower and text state timed per query (batch 1); scoring time = the "
            f"{p.texts}x{p.videos} fast timing per pair x {gallery}"
        )
        if gallery != p.videos:
            note += " (extrapolated linearly)"
        rows.append(
            PipelineRow(
                protocol=p.name,
                method=method,
                gallery_videos=gallery,
                text_tower_gflops=tower.gflops,
                text_state_gflops=state_g,
                scoring_gflops=scoring_g,
                total_gflops=total_g,
                scoring_share=scoring_g / total_g,
                text_ms=tower.ms + state_ms,
                scoring_ms=scoring_ms,
                total_ms=tower.ms + state_ms + scoring_ms,
                device=device,
                time_note=note,
            )
        )
    return rows


# ---------------------------------------------------------------------------------- run


def run(
    protocols: list[str], methods: list[str], base: argparse.Namespace, out_dir: Path
) -> tuple[list[HeadCostRow], list[PipelineRow]]:
    """Both tables for ``protocols`` × ``methods``, written to ``out_dir``
    (``efficiency-published.csv``, ``efficiency-pipeline.csv``)."""
    from tvrbench.atomic import atomic_write_csv

    if base.dtype not in DTYPES:
        raise ValueError(f"--dtype {base.dtype!r} is not one of {', '.join(DTYPES)}")
    head_rows: list[HeadCostRow] = []
    pipe_rows: list[PipelineRow] = []
    chosen = [PROTOCOLS[name] for name in protocols]
    towers = {
        t.words: t
        for t in text_tower_costs(sorted({p.words for p in chosen}), base.device, base.seed)
    }
    for t in towers.values():
        print(f"ViT-B/32 text tower, {t.words} tokens: {t.gflops:.2f} GFLOPs, {t.ms:.1f} ms")
    with tempfile.TemporaryDirectory(prefix="tvrbench-efficiency-") as tmp:
        for p in chosen:
            args = case_settings(p, base)
            clip_dir = random_clip_dir(Path(tmp) / p.name, p.dim, p.words)
            for method in methods:
                t0 = time.perf_counter()
                head = build_head(method, args, clip_dir, base.config_dir)
                row, per_pair_s = head_cost_row(method, head, p, args, timed=not base.no_timing)
                head_rows.append(row)
                pipe_rows += pipeline_rows(
                    method, head, p, towers[p.words], per_pair_s, base.device
                )
                print(
                    f"  {p.name} {method}: reference {row.reference_gflops:.1f} G, fast "
                    f"{row.fast_gflops:.1f} G, published {row.published_gflops}; "
                    f"{time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
    if "msrvtt" in protocols:
        head_rows += published_only_rows()
    columns = list(HeadCostRow.__dataclass_fields__)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(
        out_dir / "efficiency-published.csv",
        [{k: ("" if v is None else v) for k, v in asdict(r).items()} for r in head_rows],
        columns,
        float_format=".4g",
    )
    atomic_write_csv(
        out_dir / "efficiency-pipeline.csv",
        [asdict(r) for r in pipe_rows],
        list(PipelineRow.__dataclass_fields__),
        float_format=".4g",
    )
    return head_rows, pipe_rows


def markdown_table(rows: list[HeadCostRow]) -> str:
    """The MSR-VTT rows as a Markdown table (published vs ours, ratio, reason)."""
    lines = [
        "| method | published G | official forward G | fast form G | official / published "
        "| fast time (s) | why they differ |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(x: float | None, spec: str = ".1f") -> str:
        return "–" if x is None else format(x, spec)

    for r in rows:
        if r.protocol != "msrvtt":
            continue
        lines.append(
            f"| {r.method} | {fmt(r.published_gflops)} | {fmt(r.reference_gflops)} | "
            f"{fmt(r.fast_gflops)} | {fmt(r.reference_over_published, '.2f')} | "
            f"{fmt(r.fast_time_s, '.2f')} | {r.reason} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument(
        "--protocols",
        default="msrvtt,didemo",
        help=f"NAME[,NAME...] of {', '.join(PROTOCOLS)}: Table I's MSR-VTT 1k-A sizes, DiDeMo's",
    )
    add_method_options(p, ROOT / CONFIG_DIR)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--budget-mb", type=float, default=BUDGET_MB, help="scoring memory budget, MiB")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-timing", action="store_true", help="counts only (the text tower timed)")
    p.add_argument(
        "--out-dir",
        default=str(ROOT / "benchmarks" / "results"),
        help="folder of efficiency-published.csv and efficiency-pipeline.csv",
    )
    args = p.parse_args(argv)
    args.protocol_list = [n.strip() for n in args.protocols.split(",") if n.strip()]
    bad = [name for name in args.protocol_list if name not in PROTOCOLS]
    if bad or not args.protocol_list:
        p.error(f"--protocols {bad}: not one of {', '.join(PROTOCOLS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda requested but CUDA is not available")
    args.method_list = methods_from_options(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    """Both tables for ``--protocols`` × ``--methods``, written to ``--out-dir``; the MSR-VTT
    rows printed as Markdown."""
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    out_dir = Path(args.out_dir)
    print(
        f"published protocol(s) {','.join(args.protocol_list)}, methods "
        f"{','.join(args.method_list)}, device {args.device}, {torch.get_num_threads()} threads, "
        f"dtype {args.dtype}",
        flush=True,
    )
    head_rows, _ = run(args.protocol_list, args.method_list, args, out_dir)
    print()
    print(markdown_table(head_rows))
    print(f"wrote {out_dir}/efficiency-published.csv and efficiency-pipeline.csv "
          f"({time.perf_counter() - start:.0f} s in all)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
