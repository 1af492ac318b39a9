"""The benchmark report: the Markdown page of a run, its tables formatted from the numbers and
the findings' sentences computed by :mod:`tvrbench.bench.findings`.

``results`` holds per-seed rows (``seed`` = the training seed) and the aggregated rows
(``seed = "mean"``, :func:`tvrbench.bench.seeds.aggregate_seed_rows`); the headline numbers are
the aggregated rows. A table without a ``seed`` column is read as one seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tvrbench.bench.seeds import (
    count_seeds,
    per_seed_rows,
    seed_key,
    seeds_note,
    summary_rows,
)
from tvrbench.metrics import (
    MDR_CONVENTION,
    METRICS,
    TIE_CONVENTION,
    V2T_CONVENTIONS,
    Metric,
)

SYNTHETIC_BANNER = "SYNTHETIC DATA — these are not DiDeMo numbers"
FAST_PROTOCOL_BANNER = (
    "FAST PROTOCOL — frozen backbone, head-only training on cached features; "
    "not comparable to fine-tuned numbers"
)
PROTOCOL_DESCRIPTIONS = {
    "finetune": "finetune (every method fine-tunes CLIP end to end)",
    "cached_features": (
        "cached_features (frozen backbone, head-only training on features cached once per "
        "split; GFLOPs and latencies measured on the full module)"
    ),
}
METRIC = "t2v_R@1"
#: The metrics the methods' papers report for DiDeMo (the keys of each ``PUBLISHED_DIDEMO_T2V``).
PUBLISHED_METRICS = ("R@1", "R@5", "R@10", "MdR", "MnR")
NOT_MEASURED = "1 seed: training variance not measured"
RanksBySeed = Mapping[str, Mapping[Any, Any]]


def bucket_order(results: pd.DataFrame) -> list[str]:
    """Length buckets in the order they appear (shortest first), without ``"all"``."""
    return [b for b in dict.fromkeys(results["bucket"].astype(str)) if b != "all"]


def format_value(x: Any, digits: int = 1) -> str:
    """A number as the report prints it (``–`` for missing, ``digits`` decimals)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        ax = abs(float(x))
        if ax != 0 and (ax < 10 ** (-digits) or ax >= 1e6):
            return f"{float(x):.3g}"
        return f"{float(x):.{digits}f}"
    return str(x)


_fmt = format_value


@dataclass(frozen=True)
class ReportInfo:
    """Everything the report says besides the tables of results (built by
    :func:`tvrbench.bench.outputs.write_outputs`).

    Args:
        data: ``"synthetic"`` (the banner at the top) or ``"didemo"``.
        environment: :func:`tvrbench.bench.environment.collect_environment`'s record.
        config: the run's settings (:meth:`tvrbench.bench.settings.ResolvedBench.record`).
        bad_videos: videos skipped (bad_videos.csv).
        notes: ``"<method> (seed k): <note>"`` lines.
        protocol: ``finetune`` or ``cached_features`` (:data:`FAST_PROTOCOL_BANNER` top and
            bottom).
        skipped: ``{method: reason}``, one line each.
        recipes: ``{method: recipe record}``.
        seeds: the training seeds (empty: the table's).
        training_variance: the :func:`~tvrbench.bench.seeds.seeds_note` line (None: computed).
        v2t_convention: a key of :data:`~tvrbench.metrics.V2T_CONVENTIONS`.
        stress: controlled-length rows per method × ``injected_length_s`` × seed plus
            ``seed = "mean"`` rows (``postproc == none``), with ``stress_findings``.
        published: ``{method: {metric: value}}``; ``published_methods``: the methods run.
        ablation_baselines: ``{ablation method: its baseline method}``.
        postproc_results, postproc_stress: every post-processing's rows; ``postproc_findings``;
            ``postproc``: ``{method: settings record}``.
        qualitative: the qualitative sheet's page (linked).
        run_costs: ``{method: {epochs_trained, train_seconds, wall_seconds, peak_rss_mb}}``.
    """

    data: str | None = None
    environment: Mapping[str, Any] = field(default_factory=dict)
    config: Mapping[str, Any] = field(default_factory=dict)
    bad_videos: int = 0
    notes: Sequence[str] = ()
    protocol: str = "finetune"
    skipped: Mapping[str, str] = field(default_factory=dict)
    recipes: Mapping[str, Any] = field(default_factory=dict)
    seeds: Sequence[Any] = ()
    training_variance: str | None = None
    v2t_convention: str = "best-caption"
    stress: pd.DataFrame | None = None
    stress_findings: Sequence[str] = ()
    published: Mapping[str, Any] = field(default_factory=dict)
    published_methods: Sequence[str] = ()
    ablation_baselines: Mapping[str, Any] = field(default_factory=dict)
    postproc_results: pd.DataFrame | None = None
    postproc_stress: pd.DataFrame | None = None
    postproc_findings: Sequence[str] = ()
    postproc: Mapping[str, Any] = field(default_factory=dict)
    qualitative: str | None = None
    run_costs: Mapping[str, Any] | None = None


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Column:
    """One column of a report table: its header and how a row of the results becomes its
    cell (header and cell side by side, so a table cannot lose one of them)."""

    header: str
    cell: Callable[[pd.Series], str]


def number(key: str, digits: int = 1) -> Callable[[pd.Series], str]:
    """The cell of column ``key`` with ``digits`` decimals (``–`` when missing)."""
    return lambda r: _fmt(r.get(key), digits)


def column_table(frame: pd.DataFrame, columns: Sequence[Column]) -> str:
    """A Markdown table with one row per row of ``frame``."""
    rows = [[c.cell(r) for c in columns] for _, r in frame.iterrows()]
    return markdown_table(rows, [c.header for c in columns])


def _seed_list(results: pd.DataFrame, info: ReportInfo) -> list[Any]:
    """The run's training seeds; the table's when the report is given none."""
    if info.seeds:
        return list(info.seeds)
    rows = per_seed_rows(results)
    if "seed" in rows and len(rows):
        return sorted({seed_key(s) for s in rows["seed"]}, key=str)
    return []


def _with_spread(row: pd.Series, key: str, several: bool) -> str:
    value = _fmt(row.get(key))
    if several:
        value += f" ± {_fmt(row.get(key + '_std'))}"
    return value


def _r1_with_interval(r: pd.Series, several: bool) -> str:
    """t2v R@1 (± its seed spread) and its 95 % interval."""
    interval = f"[{_fmt(r.get('t2v_R@1_lo'))}, {_fmt(r.get('t2v_R@1_hi'))}]"
    return f"{_with_spread(r, 't2v_R@1', several)} {interval}"


def _with_p90(r: pd.Series, prefix: str) -> str:
    """A latency's median and p90 in ms: ``"1.20 (1.50)"``."""
    return f"{_fmt(r.get(prefix + '_ms'), 2)} ({_fmt(r.get(prefix + '_p90_ms'), 2)})"


def _main_header(name: str, spread: str) -> str:
    """The main table's header of t2v metric ``name``: R@1 with spread and interval, MnR with
    spread, every other metric bare."""
    if name == "R@1":
        return f"t2v R@1{spread} [95 % CI]"
    return f"{name}{spread}" if name == "MnR" else name


def _main_cell(r: pd.Series, metric: Metric, several: bool) -> str:
    """The main table's cell of one t2v registry metric (see :func:`_main_header`)."""
    column = f"t2v_{metric.name}"
    if metric.name == "R@1":
        return _r1_with_interval(r, several)
    if metric.name == "MnR":
        return _with_spread(r, column, several)
    return _fmt(r.get(column), metric.digits)


def _metric_cell(metric: Metric, several: bool) -> Callable[[pd.Series], str]:
    """The main table's cell function of one t2v registry metric."""
    return lambda r: _main_cell(r, metric, several)


def _per_seed_table(results: pd.DataFrame, seeds: list[Any]) -> list[str]:
    """t2v R@1 of every training seed, one row per method × bucket."""
    rows = per_seed_rows(results)
    if "seed" not in rows or not len(rows) or METRIC not in rows:
        return []
    keyed = rows.assign(_seed=rows["seed"].map(seed_key))
    seeds = seeds or sorted(set(keyed["_seed"]), key=str)
    body = []
    for (method, bucket), g in keyed.groupby(
        [keyed["method"].astype(str), keyed["bucket"].astype(str)], sort=False
    ):
        by_seed = dict(zip(g["_seed"], g[METRIC]))
        body.append([method, bucket, *[_fmt(by_seed.get(seed_key(s))) for s in seeds]])
    header = ["method", "bucket", *[f"seed {s}" for s in seeds]]
    return ["## t2v R@1 per training seed", "", markdown_table(body, header), ""]


def _recipe_names(recipes: Mapping[str, Any] | None) -> str:
    """``"meanp: shared; xpool: published"`` from ``{method: recipe record or name}``."""
    parts = []
    for method, recipe in (recipes or {}).items():
        if isinstance(recipe, Mapping):
            recipe = recipe.get("recipe") or recipe.get("name")
        if recipe:
            parts.append(f"{method}: {recipe}")
    return "; ".join(parts)


def _stress_section(stress: pd.DataFrame | None, stress_lines: Sequence[str]) -> list[str]:
    """Controlled-length rows (SPEC §6): seed means per method × injected length."""
    if stress is None or not len(stress):
        return []
    headline = summary_rows(stress)
    several = count_seeds(stress) > 1
    spread = " ± std" if several else ""
    setting = []
    first = stress.iloc[0]
    if "stress_gallery" in stress:
        gallery = first.get("stress_gallery")
        scope = (
            "the whole test split"
            if str(gallery) in ("all", "None", "nan")
            else f"the first {gallery} test videos only (the gallery and the queries)"
        )
        setting = [
            f"Evaluated on {scope}; distractors from the {first.get('distractor_split')} split, "
            f"video placed at a {first.get('placement')} offset; the checkpoints of the tests "
            "above, not retrained. `stress_vs_length.png` plots R@1 and MnR.",
            "",
        ]
    lines = [
        "## Controlled length: distractors injected around every test video",
        "",
        *setting,
        *[f"- {s}" for s in stress_lines],
        *([""] if stress_lines else []),
    ]
    columns = [
        Column("method", lambda r: str(r["method"])),
        Column("injected s", number("injected_length_s", 0)),
        Column("n", number("n_queries")),
        Column("relevant fraction", number("mean_relevant_fraction", 2)),
        Column(f"t2v R@1{spread} [95 % CI]", lambda r: _r1_with_interval(r, several)),
        Column(f"MnR{spread}", lambda r: _with_spread(r, "t2v_MnR", several)),
        Column("frames", number("mean_frames")),
        Column("GFLOPs video", number("gflops_video", 4)),
        Column("video ms", number("latency_video_ms", 2)),
    ]
    return [*lines, column_table(headline, columns), ""]


def _published_section(
    published: Mapping[str, Mapping[str, Any]], methods: Sequence[str] = ()
) -> list[str]:
    """The papers' own DiDeMo text→video numbers next to ours (real DiDeMo runs only), each
    labelled with its source and protocol; methods without published DiDeMo numbers say so."""
    if not published and not methods:
        return []
    metrics = list(PUBLISHED_METRICS)
    rows = []
    for m in dict.fromkeys([*methods, *published]):
        p = published.get(m)
        if p:
            values = [_fmt(p.get(k)) for k in metrics]
            rows.append([m, *values, p.get("source", "–"), p.get("protocol", "–")])
        else:
            rows.append([m, *["–"] * len(metrics), "none published for DiDeMo", "–"])
    return [
        "## Published DiDeMo text→video numbers (from the papers, not measured here)",
        "",
        "For orientation only: the papers' protocols differ from this run's (checkpoint "
        "selection, frames, epochs); compare with the `all` rows above.",
        "",
        markdown_table(rows, ["method", *metrics, "source", "protocol"]),
        "",
    ]


def ablation_groups(
    methods: Sequence[str], baselines: Mapping[str, Sequence[str]]
) -> list[list[str]]:
    """Ablation rows: for every method ``base`` run together with variants named
    ``base_<variant>`` (configs of the same method, e.g. ``glccl_no_csc``), the method's
    declared reference methods that were run (``baselines[base]``, e.g. X-CLIP for GLCCL:
    "X-CLIP → + GLIM → + CSC = GLCCL"), then the variants, then ``base`` itself."""
    groups = []
    for base in methods:
        variants = [m for m in methods if m.startswith(base + "_")]
        if variants:
            refs = [m for m in baselines.get(base, ()) if m in methods]
            groups.append([*refs, *variants, base])
    return groups


def _ablation_section(
    results: pd.DataFrame, baselines: Mapping[str, Sequence[str]] | None
) -> list[str]:
    """t2v R@1 and MnR per bucket of every ablation group, with the change versus the full
    method (seed means when there are several seeds)."""
    headline = summary_rows(results)
    methods = list(dict.fromkeys(headline["method"].astype(str)))
    groups = ablation_groups(methods, baselines or {})
    if not groups:
        return []
    buckets = [*bucket_order(headline), "all"]
    lines = ["## Ablations", ""]
    for group in groups:
        base = group[-1]
        by = {
            (str(r["method"]), str(r["bucket"])): r
            for _, r in headline[headline["method"].astype(str).isin(group)].iterrows()
        }
        rows = []
        for m in group:
            cells = [m]
            for b in buckets:
                r, ref = by.get((m, b)), by.get((base, b))
                if r is None:
                    cells.append("–")
                    continue
                r1, mnr = float(r["t2v_R@1"]), float(r["t2v_MnR"])
                delta = ""
                if m != base and ref is not None:
                    delta = f" ({r1 - float(ref['t2v_R@1']):+.1f})"
                cells.append(f"{_fmt(r1)}{delta} / {_fmt(mnr)}")
            rows.append(cells)
        lines += [
            f"{base}: its reference method(s) and configuration variants, t2v R@1 (change "
            f"versus {base}) / MnR per length bucket; the intervals are in the table above.",
            "",
            markdown_table(rows, ["method", *buckets]),
            "",
        ]
    return lines


# ------------------------------------------------------------------------ post-processing

#: What post-processing each method's published DiDeMo number (``PUBLISHED_DIDEMO_T2V``) used,
#: from the papers and the released evaluation code (../shared/POSTPROC.md, Sources).
PUBLISHED_POSTPROC = {
    "meanp": "none (CLIP4Clip's released code has no DSL or QB-Norm)",
    "xclip": "none (X-CLIP's released code has no DSL or QB-Norm)",
    "glscl": (
        "none (the released code inherits QB-Norm from DiCoSA but comments the calls out; the "
        "paper's 'with QB-Norm' row is MSR-VTT only and cannot come from that code)"
    ),
}
POSTPROC_ELSEWHERE = (
    "Elsewhere in the literature: CAMoE and TS2-Net report DSL numbers, EMCL logs them as "
    "'inverted softmax', DiCoSA's metrics are computed on QB-Norm matrices only; CenterCLIP has "
    "DSL commented out. Such numbers belong in the DSL / QB-Norm columns, not in `none`."
)


def _postproc_cells(table: pd.DataFrame, group: str, methods: Sequence[str]) -> list[list[str]]:
    """One row per method × ``group`` value: ``t2v R@1 / MnR`` per post-processing."""
    headline = summary_rows(table).assign(_group=lambda d: d[group].astype(str))
    by = {(str(r["method"]), r["_group"], str(r["postproc"])): r for _, r in headline.iterrows()}
    rows = []
    for method in dict.fromkeys(headline["method"].astype(str)):
        for value in dict.fromkeys(headline["_group"]):
            cells = []
            for pp in methods:
                r = by.get((method, value, pp))
                cells.append(
                    "–" if r is None else f"{_fmt(r.get(METRIC))} / {_fmt(r.get('t2v_MnR'))}"
                )
            if any(c != "–" for c in cells):
                rows.append([method, value, *cells])
    return rows


def _postproc_section(info: ReportInfo) -> list[str]:
    """The compact table "t2v R@1 / MnR: none | DSL | QB-Norm" per method (overall and per
    length bucket; per injected length too), the settings and which published numbers used
    which. Empty when only ``none`` ran."""
    from tvrbench.bench.postproc import label
    from tvrbench.postproc import POSTPROC_METHODS

    results = info.postproc_results
    if results is None or "postproc" not in results or not len(results):
        return []
    methods = [m for m in POSTPROC_METHODS if m in set(results["postproc"].astype(str))]
    if methods == ["none"]:
        return []
    header_pp = [label(m) for m in methods]
    lines = [
        "## Post-processing: none | DSL | QB-Norm",
        "",
        "Test-time re-scorings of the same similarity matrix (no retraining), reported apart: "
        f"t2v R@1 / MnR per method and bucket{' (seed means)' if count_seeds(results) > 1 else ''}"
        "; intervals in results.csv (`postproc` column).",
    ]
    settings = next(iter(info.postproc.values()), None) or {}
    if settings.get("dsl"):
        d = settings["dsl"]
        lines.append(
            f"- **DSL** (dual softmax, λ = {_fmt(d.get('inverse_temperature'), 0)} on the cosine "
            "scale; t2v prior over the texts, v2t over the videos): **transductive** — each "
            "query's score depends on every other test query; it cannot serve a single query."
        )
    if settings.get("qbnorm"):
        q = settings["qbnorm"]
        sizes = sorted(
            {
                str(s["qbnorm"].get("bank_queries"))
                for s in info.postproc.values()
                if s.get("qbnorm")
            }
        )
        lines.append(
            f"- **QB-Norm** (dynamic inverted softmax, β = {_fmt(q.get('beta'), 0)}, "
            f"k = {q.get('k')}, θ = {q.get('theta')}, cosine scale): bank = "
            f"{q.get('bank_source')}; {' / '.join(sizes)} bank queries (cap "
            f"{q.get('bank_max_queries')}); v2t banks the same training videos. Uses extra "
            "data at test time."
        )
    methods_run = info.published_methods
    published = {m: PUBLISHED_POSTPROC[m] for m in methods_run if m in PUBLISHED_POSTPROC}
    published = published or PUBLISHED_POSTPROC
    lines.append(
        "- Published DiDeMo numbers quoted by this suite: "
        + "; ".join(f"{m}: {v}" for m, v in published.items())
        + f". {POSTPROC_ELSEWHERE}"
    )
    lines += [
        "",
        markdown_table(
            _postproc_cells(results, "bucket", methods), ["method", "bucket", *header_pp]
        ),
        "",
    ]
    stress = info.postproc_stress
    if stress is not None and "postproc" in stress and len(stress):
        lines += [
            "Controlled length (t2v R@1 / MnR per injected length):",
            "",
            markdown_table(
                _postproc_cells(stress, "injected_length_s", methods),
                ["method", "injected s", *header_pp],
            ),
            "",
        ]
    return lines


def _run_cost_section(costs: Mapping[str, Mapping[str, Any]] | None) -> list[str]:
    """Epochs, training and whole-method wall time, peak RSS of every (method, seed)."""
    if not costs:
        return []
    rows = [
        [
            key,
            _fmt(c.get("epochs_trained")),
            _fmt(c.get("train_seconds"), 0),
            _fmt(c.get("wall_seconds"), 0),
            _fmt(c.get("peak_rss_mb"), 0),
        ]
        for key, c in costs.items()
    ]
    header = ["method", "epochs", "training s", "method wall s", "peak RSS MiB"]
    return [
        "## Run cost on this machine",
        "",
        "Method wall time covers training, testing, every measurement and the controlled-length "
        "evaluation; peak RSS is this process's during the method (a DDP training child's "
        "memory is not included).",
        "",
        markdown_table(rows, header),
        "",
    ]


def _recipe_table(recipes: Mapping[str, Any] | None) -> list[str]:
    """Every optimiser, trainer and data value each method trained with (SPEC §2.7)."""
    records = {m: r for m, r in (recipes or {}).items() if isinstance(r, Mapping)}
    if not records:
        return []
    keys = [
        ("recipe", "recipe"),
        ("lr", "lr new"),
        ("backbone_lr", "lr CLIP"),
        ("weight_decay", "wd"),
        ("betas", "betas"),
        ("eps", "eps"),
        ("warmup_frac", "warm-up"),
        ("gradient_clip_val", "grad-clip"),
        ("precision", "precision"),
        ("max_epochs", "epochs"),
        ("global_batch_size", "global batch"),
        ("per_device_batch_size", "per-device batch"),
        ("devices", "devices"),
        ("num_nodes", "nodes"),
        ("strategy", "strategy"),
        ("max_words", "words"),
        ("max_frames", "frames"),
        ("sample_fps", "fps"),
        ("clip_seconds", "clip s"),
    ]

    def cell(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return "(" + ", ".join(_fmt(v, 3) for v in value) + ")"
        if isinstance(value, float):
            return f"{value:g}"
        return "–" if value is None else str(value)

    rows = [[m, *[cell(r.get(k)) for k, _ in keys]] for m, r in records.items()]
    return [
        "## Training recipe of every method (as run)",
        "",
        markdown_table(rows, ["method", *[label for _, label in keys]]),
        "",
    ]


def render_report(
    results: pd.DataFrame,
    gallery: pd.DataFrame | None,
    info: ReportInfo,
    finding_lines: Sequence[str],
    plots: Sequence[str] = (),
) -> str:
    """The Markdown report.

    ``results``: per-seed rows and ``seed = "mean"`` rows (or one row per method × bucket, read
    as one seed); ``gallery``: gallery.csv's rows; ``info``: everything else it says
    (:class:`ReportInfo`); ``finding_lines``: the findings' sentences
    (:mod:`tvrbench.bench.findings`); ``plots``: the figures' file names."""
    synthetic = info.data == "synthetic"
    protocol = info.protocol
    fast = protocol == "cached_features"
    env = info.environment
    cfg = info.config
    headline = summary_rows(results)
    seeds = _seed_list(results, info)
    n_seeds = max(len(seeds), count_seeds(results))
    several = n_seeds > 1
    v2t = info.v2t_convention
    lines: list[str] = []
    if synthetic:
        lines += [f"> **{SYNTHETIC_BANNER}**", ""]
    if fast:
        lines += [f"> **{FAST_PROTOCOL_BANNER}**", ""]
    lines += ["# tvrbench — text→video retrieval per video length", ""]
    gpu = ""
    if env.get("gpu_name"):
        gpu = f"; GPU {env.get('gpu_name')}, driver {env.get('gpu_driver')}, CUDA {env.get('cuda')}"
    recipe_records = [r for r in info.recipes.values() if isinstance(r, Mapping)]
    clip_seconds = sorted({str(r.get("clip_seconds")) for r in recipe_records}) or [
        str(cfg.get("clip_seconds"))
    ]
    precisions = sorted({str(r.get("precision")) for r in recipe_records if r.get("precision")})
    lines += [
        f"- data: {info.data} ({cfg.get('didemo_root') or 'built-in synthetic'}), "
        f"clip_seconds: {' / '.join(clip_seconds)} (None = whole videos), backbone: "
        f"{cfg.get('clip')}",
        f"- training precision: {' / '.join(precisions) or 'not recorded'} (CLIP towers only; "
        "every head, score, logit and loss in float32); evaluation: states, similarities and "
        f"ranks in float32; float32 matmul precision "
        f"{env.get('float32_matmul_precision', 'not recorded')} (TF32: "
        f"{'on' if env.get('cuda_matmul_allow_tf32') else 'off'}); latencies timed in the "
        "training precision",
        f"- device: {env.get('device')} ({env.get('device_name')}), dtype {env.get('dtype')}, "
        f"{env.get('threads')} threads; dense matmul {_fmt(env.get('matmul_gflops_per_s'))} "
        f"GFLOP/s at {env.get('matmul_probe_size', 1024)}² (1 FLOP = 1 multiply-add); FLOPs and "
        "latencies measured on this one device, whatever the training used",
    ]
    if env.get("cpu_model") or gpu:
        lines.append(f"- CPU: {env.get('cpu_model') or 'unknown'}{gpu}")
    lines += [
        f"- torch {env.get('torch')}, lightning {env.get('lightning')}, transformers "
        f"{env.get('transformers')}, commit {env.get('git_commit')}",
        "- checkpoints selected on the validation split (val/R@1); test used once.",
        f"- metrics: ranks 1-based, {TIE_CONVENTION}; MdR = {MDR_CONVENTION}; "
        f"v2t convention: {v2t} ({V2T_CONVENTIONS.get(v2t, 'unknown')})",
        f"- seeds: {', '.join(map(str, seeds)) or 'not recorded'} — "
        f"{info.training_variance or seeds_note(n_seeds)}",
        f"- bad videos: {info.bad_videos} (bad_videos.csv)",
        f"- protocol: {PROTOCOL_DESCRIPTIONS.get(protocol, protocol)}",
    ]
    recipes = _recipe_names(info.recipes)
    if recipes:
        lines.append(f"- recipes: {recipes}")
    lines += [f"- **skipped: {method}** — {reason}" for method, reason in info.skipped.items()]
    lines += [""] + _recipe_table(info.recipes)
    lines += [
        "## Findings",
        "",
    ]
    lines += [f"- {s}" for s in finding_lines] or ["- (no results)"]
    lines += ["", "## Text→video and video→text per length bucket", ""]
    if several:
        lines += [
            f"Seed means ± sample std over {n_seeds} seeds; 95 % intervals from a two-level "
            "bootstrap (seeds, then queries).",
            "",
        ]
    spread = " ± std" if several else ""
    shown = [m for m in METRICS if m.in_report]
    main_columns = [
        Column("method", lambda r: str(r["method"])),
        Column("bucket", lambda r: str(r["bucket"])),
        Column("n", number("n_queries")),
        Column("dur s", number("mean_duration_s")),
        Column("frames", number("mean_frames")),
        *(Column(_main_header(m.name, spread), _metric_cell(m, several)) for m in shown),
        Column("v2t R@1", number("v2t_R@1")),
        Column("v2t MnR", number("v2t_MnR")),
        Column("chance R@1", number("chance_R@1", 2)),
    ]
    lines += [column_table(headline, main_columns), ""]
    if several:
        lines += _per_seed_table(results, seeds)
    lines += ["## Cost per length bucket", ""]
    cost_columns = [
        Column("method", lambda r: str(r["method"])),
        Column("bucket", lambda r: str(r["bucket"])),
        Column("GFLOPs text", number("gflops_text", 4)),
        Column("GFLOPs video", number("gflops_video", 4)),
        Column("GFLOPs pair", number("gflops_pair", 6)),
        Column("query ms (p90)", lambda r: _with_p90(r, "latency_query")),
        Column("video ms (p90)", lambda r: _with_p90(r, "latency_video")),
    ]
    if several:
        lines += ["Costs are means over seeds.", ""]
    lines += [column_table(headline, cost_columns), ""]
    lines += [
        "GFLOPs pair is the suite's fast form at this run's sizes. The heads' cost at the "
        "published MSR-VTT 1k-A protocol (and DiDeMo's), official forward and fast form next to "
        "GLSCL's Table I with the reason for every difference: "
        "`benchmarks/results/efficiency-published.csv` (`make bench-efficiency`).",
        "",
    ]
    if gallery is not None and len(gallery):
        lines += ["## Retrieval time per query versus gallery size", ""]
        pivot = gallery.pivot_table(index="method", columns="gallery_size", values="ms_per_query")
        header = ["method", *[f"{int(c):,} videos (ms)" for c in pivot.columns]]
        rows = [[m, *[_fmt(v, 2) for v in pivot.loc[m]]] for m in pivot.index]
        lines += [markdown_table(rows, header), ""]
        if "fraction_of_matmul" in gallery:
            big = gallery.sort_values("gallery_size").groupby("method").tail(1)
            parts = [
                f"{r.method} {100 * r.fraction_of_matmul:.1f} %"
                for r in big.itertuples()
                if not math.isnan(r.fraction_of_matmul)
            ]
            if parts:
                lines += [
                    "Achieved scoring rate at the largest gallery as a fraction of the dense "
                    f"matmul rate: {', '.join(parts)}.",
                    "",
                ]
    lines += _postproc_section(info)
    lines += _ablation_section(results, info.ablation_baselines)
    lines += _stress_section(info.stress, info.stress_findings)
    lines += _published_section(info.published, info.published_methods)
    lines += _run_cost_section(info.run_costs)
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    if info.qualitative:
        page = info.qualitative
        lines += [
            "## Qualitative retrieval",
            "",
            f"[{page}]({page}): every method's top-5 videos for a seeded sample of test queries "
            "from every length bucket (first seed, plain similarity), the correct video outlined.",
            "",
        ]
    for note in info.notes:
        lines += [f"- note: {note}"]
    if synthetic:
        lines += ["", f"> **{SYNTHETIC_BANNER}**"]
    if fast:
        lines += ["", f"> **{FAST_PROTOCOL_BANNER}**"]
    return "\n".join(lines) + "\n"
