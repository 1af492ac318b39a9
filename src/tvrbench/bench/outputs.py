"""The run's outputs: one record per finished (method, seed) in ``methods/<method>/seed<k>.json``
(what resume looks at), combined into ``results.csv`` (rows per method × bucket × seed plus
aggregated ``seed = mean`` rows), ``gallery.csv``, ``stress.csv``, ``results.json``,
``report.md``, the plots and the qualitative sheet. Every file is written atomically
(:mod:`tvrbench.atomic`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tvrbench.atomic import atomic_write_csv, atomic_write_json, atomic_write_text
from tvrbench.bench.record import MethodRecord
from tvrbench.metrics import INTERVAL_COLUMNS, METRIC_COLUMNS, STD_COLUMNS
from tvrbench.precision import PRECISION_STORY

if TYPE_CHECKING:
    from tvrbench.bench.qualitative import TestVideos

COST_COLUMNS = [
    "flops_frames",
    "gflops_text",
    "gflops_video",
    "gflops_pair",
    "gflops_pair_formula",
    "latency_query_ms",
    "latency_query_p90_ms",
    "latency_video_ms",
    "latency_video_p90_ms",
]
RESULT_COLUMNS = [
    "method",
    "seed",
    "bucket",
    "postproc",
    "n_queries",
    *METRIC_COLUMNS,
    *INTERVAL_COLUMNS,
    *STD_COLUMNS,
    "mean_duration_s",
    "mean_frames",
    *COST_COLUMNS,
    "gallery_size",
    "chance_R@1",
    "data",
    "clip_seconds",
    "protocol",
    "recipe",
]
GALLERY_COLUMNS = [
    "method",
    "seed",
    "gallery_size",
    "ms_per_query",
    "p90_ms",
    "materialized",
    "chunk",
    "gflops_pair",
    "achieved_gflops_per_s",
    "fraction_of_matmul",
    "protocol",
]
STRESS_COLUMNS = [
    "method",
    "seed",
    "injected_length_s",
    "postproc",
    "n_queries",
    *METRIC_COLUMNS,
    *INTERVAL_COLUMNS,
    *STD_COLUMNS,
    "mean_relevant_fraction",
    "mean_relevant_frames",
    "mean_frames",
    "mean_duration_s",
    *COST_COLUMNS,
    "gallery_size",
    "chance_R@1",
    "lengthened_videos",
    "n_seeds",
    "stress_gallery",
    "distractor_split",
    "placement",
]
BAD_VIDEO_COLUMNS = ["split", "video", "reason"]


def record_path(run_dir: Path, method: str, seed: int) -> Path:
    return run_dir / "methods" / method / f"seed{seed}.json"


def write_record(run_dir: Path, record: MethodRecord) -> Path:
    path = record_path(run_dir, record.method, record.seed)
    atomic_write_json(path, record.to_json())
    return path


def read_records(run_dir: Path, methods: list[str], seeds: list[int]) -> list[MethodRecord]:
    """The records of ``methods`` × ``seeds`` that exist, in that order."""
    return [
        MethodRecord.from_json(json.loads(record_path(run_dir, m, s).read_text()))
        for m in methods
        for s in seeds
        if record_path(run_dir, m, s).exists()
    ]


def _tagged(rows: list[dict[str, Any]], record: MethodRecord, extra: dict[str, Any]):
    """A record's rows with its method and seed; rows written before post-processing was
    reported are ``postproc = none``."""
    return [
        {"postproc": "none", **row, "method": record.method, "seed": record.seed, **extra}
        for row in rows
    ]


def _per_postproc(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows split by their ``postproc`` (``none`` first)."""
    out: dict[str, list[dict[str, Any]]] = {"none": []}
    for row in rows:
        out.setdefault(str(row.get("postproc", "none")), []).append(row)
    return {k: v for k, v in out.items() if v}


def combine(records: list[MethodRecord], config: dict[str, Any], synthetic: bool) -> dict[str, Any]:
    """Per-seed rows of every record plus the aggregated ``seed = mean`` rows."""
    from tvrbench.bench.seeds import aggregate_seed_rows

    ran = [r for r in records if not r.skipped]
    extra = {
        "data": "synthetic" if synthetic else "didemo",
        "protocol": config.get("protocol", "finetune"),
    }
    rows, gallery, stress = [], [], []
    for r in ran:
        recipe, clip_seconds = r.recipe.get("recipe"), r.recipe.get("clip_seconds")
        rows += _tagged(r.rows, r, {**extra, "recipe": recipe, "clip_seconds": clip_seconds})
        gallery += _tagged(r.gallery, r, {"protocol": extra["protocol"]})
        stress += _tagged(r.stress, r, {})
    n_boot, seed = int(config["bootstrap_samples"]), int(config.get("seed", 0))
    # Seeds are aggregated per post-processing: its own rows and its own per-query ranks.
    ranks = {pp: rank_table(ran, postproc=pp) for pp in _per_postproc(rows)}
    for pp, pp_rows in _per_postproc(rows).items():
        rows += aggregate_seed_rows(pp_rows, ranks[pp], n_boot, seed)
    for pp, pp_rows in _per_postproc(stress).items():
        stress_ranks = rank_table(ran, key="stress_ranks", postproc=pp)
        stress += aggregate_seed_rows(
            pp_rows, stress_ranks, n_boot, seed, group_key="injected_length_s"
        )
    return {"rows": rows, "gallery": gallery, "stress": stress, "ranks": ranks}


def rank_table(
    records: list[MethodRecord], key: str = "ranks", postproc: str = "none"
) -> dict[str, dict[int, Any]]:
    """``{method: {seed: ranks record}}`` of one post-processing (the bootstrap's input)."""
    from tvrbench.bench.postproc import ranks_view

    out: dict[str, dict[int, Any]] = {}
    for r in records:
        entry = ranks_view(getattr(r, key), postproc)
        if entry:
            out.setdefault(r.method, {})[r.seed] = entry
    return out


#: Record keys kept out of results.json's ``methods`` (written there once, or per record only).
RECORD_ONLY = ("ranks", "stress_ranks", "rows", "gallery", "stress")


def write_outputs(
    run_dir: Path,
    methods: list[str],
    seeds: list[int],
    config: dict[str, Any],
    env: dict[str, Any],
    synthetic: bool,
    test_data: TestVideos | None = None,
) -> None:
    """Combine the records into every output file; print the findings. ``test_data``: the test
    split's dataset (paragraphs and frames of the qualitative sheet); None keeps an existing
    sheet (or writes its page without the image)."""
    import pandas as pd

    from tvrbench.bench.findings import findings, postproc_findings, stress_findings
    from tvrbench.bench.plots import plot_all
    from tvrbench.bench.report import (
        FAST_PROTOCOL_BANNER,
        SYNTHETIC_BANNER,
        ReportInfo,
        render_report,
    )
    from tvrbench.bench.seeds import seeds_note
    from tvrbench.metrics import MDR_CONVENTION, V2T_CONVENTIONS

    protocol = config.get("protocol", "finetune")
    records = read_records(run_dir, methods, seeds)

    def key(r: MethodRecord) -> str:  # the method alone when the run has one seed
        return r.method if len(seeds) == 1 else r.key

    skipped = {key(r): r.skipped for r in records if r.skipped}
    combined = combine(records, config, synthetic)
    rows, gallery_rows, stress_rows = combined["rows"], combined["gallery"], combined["stress"]
    atomic_write_csv(run_dir / "results.csv", rows, RESULT_COLUMNS)
    atomic_write_csv(run_dir / "gallery.csv", gallery_rows, GALLERY_COLUMNS)
    if stress_rows:
        atomic_write_csv(run_dir / "stress.csv", stress_rows, STRESS_COLUMNS)
    bad_path = run_dir / "bad_videos.csv"
    if not bad_path.exists():
        atomic_write_csv(bad_path, [], BAD_VIDEO_COLUMNS)
    n_bad = max(0, len(bad_path.read_text().strip().splitlines()) - 1)
    summary_path = run_dir / "data_summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    columns = list(dict.fromkeys([*RESULT_COLUMNS, *(rows[0] if rows else [])]))
    results = pd.DataFrame(rows, columns=columns)
    gallery = pd.DataFrame(gallery_rows)
    stress = pd.DataFrame(stress_rows) if stress_rows else None
    n_boot, seed = int(config["bootstrap_samples"]), int(config.get("seed", 0))
    # Post-processed rows have their own table and findings; everything else reads `none`.
    all_results, all_stress = results, stress
    results = results[results["postproc"].astype(str) == "none"]
    if stress is not None:
        stress = stress[stress["postproc"].astype(str) == "none"]
    lines = findings(results, combined["ranks"].get("none", {}), n_boot=n_boot, seed=seed)
    pp_lines = postproc_findings(all_results, combined["ranks"], n_boot=n_boot, seed=seed)
    postproc = {key(r): r.postproc for r in records if r.postproc}
    stress_lines: list[str] = []
    if stress is not None:
        stress_lines = stress_findings(stress)
    plots = plot_all(results, gallery, run_dir, synthetic) if rows else []
    if stress is not None:
        from tvrbench.bench.plots import method_colours, plot_stress

        plots.append(plot_stress(stress, run_dir, synthetic, method_colours(results, gallery)))
    from tvrbench.bench.qualitative import write_qualitative

    qualitative = write_qualitative(run_dir, records, methods, seeds, test_data, synthetic)
    notes = [f"{r.method} (seed {r.seed}): {n}" for r in records for n in r.notes]
    recipes = {r.method: r.recipe for r in records}
    variance = seeds_note(len(seeds))
    info = ReportInfo(
        data="synthetic" if synthetic else "didemo",
        environment=env,
        config=config,
        bad_videos=n_bad,
        notes=notes,
        protocol=protocol,
        skipped=skipped,
        recipes=recipes,
        seeds=seeds,
        training_variance=variance,
        stress=stress,
        stress_findings=stress_lines,
        published=published_numbers(records) if not synthetic else {},
        published_methods=[] if synthetic else list(dict.fromkeys(r.method for r in records)),
        ablation_baselines=class_attribute(records, "ABLATION_BASELINES"),
        postproc_results=all_results,
        postproc_stress=all_stress,
        postproc_findings=pp_lines,
        postproc=postproc,
        qualitative=qualitative,
        run_costs={
            key(r): {
                "epochs_trained": r.epochs_trained,
                "train_seconds": r.train_seconds,
                "wall_seconds": r.wall_seconds,
                "peak_rss_mb": r.peak_rss_mb,
            }
            for r in records
            if not r.skipped
        },
    )
    atomic_write_text(run_dir / "report.md", render_report(results, gallery, info, lines, plots))
    from tvrbench.data.manifest import manifest_record

    atomic_write_json(
        run_dir / "results.json",
        {
            "data": info.data,
            "banner": SYNTHETIC_BANNER if synthetic else None,
            "protocol": protocol,
            "protocol_banner": FAST_PROTOCOL_BANNER if protocol == "cached_features" else None,
            "seeds": seeds,
            "training_variance": variance,
            "conventions": {"MdR": MDR_CONVENTION, "v2t": V2T_CONVENTIONS.get("best-caption")},
            "skipped": skipped,
            "config": config,
            "recipes": recipes,
            "environment": env,
            "precision_story": PRECISION_STORY,
            "data_summary": data_summary,
            # manifest.csv (every video: size, SHA-256, duration, status) and its hash.
            "data_manifest": manifest_record(run_dir / "manifest.csv"),
            "findings": lines,
            "postproc_findings": pp_lines,
            "stress_findings": stress_lines,
            # Per (method, seed): post-processings, their parameters, QB-Norm's bank and size.
            "postproc": postproc,
            # Per (method, seed): what the rows do not say (checkpoint, notes, timings, recipe).
            # Its rows, gallery and stress rows are the top-level lists below (and the CSVs),
            # its ranks the records' own files: not written twice.
            "methods": {
                key(r): {k: v for k, v in r.to_json().items() if k not in RECORD_ONLY}
                for r in records
            },
            "results": rows,
            "gallery": gallery_rows,
            "stress": stress_rows,
        },
    )
    printed = [*lines, *pp_lines, *stress_lines]
    print("\n".join(["", f"- {variance}", *(f"- {s}" for s in printed), ""]))
    for name, reason in skipped.items():
        print(f"SKIPPED {name}: {reason}")
    if synthetic:
        print(f"*** {SYNTHETIC_BANNER} ***")
    if protocol == "cached_features":
        print(f"*** {FAST_PROTOCOL_BANNER} ***")
    print(f"report: {run_dir / 'report.md'}")


def class_attribute(records: list[MethodRecord], name: str) -> dict[str, Any]:
    """``{method: value}`` of a class attribute of each record's method, its module class's or
    else its head class's (where set; :func:`tvrbench.methods.method_attribute`)."""
    from tvrbench.methods import method_attribute

    out: dict[str, Any] = {}
    for r in records:
        value = method_attribute(r.class_path, r.init_args, name)
        if value:
            out[r.method] = value
    return out


def published_numbers(records: list[MethodRecord]) -> dict[str, Any]:
    """Each method's published DiDeMo text→video numbers (``PUBLISHED_DIDEMO_T2V`` of its head
    class, or of its module class where that sets one)."""
    return class_attribute(records, "PUBLISHED_DIDEMO_T2V")
