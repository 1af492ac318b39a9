"""The controlled-length protocol in a benchmark run (SPEC §6): every selected checkpoint is
evaluated again on the test gallery lengthened to each injected length ``T``, without retraining.

The lengthened test set is the data layer's :class:`~tvrbench.data.stress.StressDataModule`
(distractor stretches from outside the test gallery around every test video, sampled exactly as a
real video). Per method, seed and ``T`` this module records one row — the metrics of SPEC §4 with
query-bootstrap intervals over the (lengthened) gallery, the mean relevant fraction and relevant
frames, the mean composed frame count, and GFLOPs and latency at that frame count — plus the
per-query ranks (the input of the seeds' two-level bootstrap). ``T = 0`` leaves every video as it
is, so its row equals the run's own test row when the whole test split is the stress gallery.

Entry points: :func:`evaluate_lengths` (called by the runner after each test, and to complete a
resumed run's records), :func:`restress_run` (``tvrbench stress --run DIR``: other lengths for an
existing run's checkpoints) and :func:`stress_findings` (the report's sentences).
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from tvrbench.bench.measure import SAMPLE_KEYS, CostMeter, TestCapture, bucket_rows, rank_record
from tvrbench.bench.postproc import (
    PostprocSettings,
    QueryBank,
    encode_query_bank,
    postproc_from_config,
    postproc_variants,
    with_postproc_ranks,
)
from tvrbench.data.stress import (
    DIDEMO_INJECTED_LENGTHS_S,
    SYNTHETIC_INJECTED_LENGTHS_S,
    StressDataModule,
)


@dataclass
class StressSettings:
    """What the controlled-length protocol of a run evaluates.

    Args:
        injected_lengths_s: the lengths ``T`` (seconds; ``0`` = the unchanged gallery).
        distractor_split: ``"val"`` or ``"train"`` (never the test split).
        placement: ``"random"`` (seeded), ``"start"``, ``"middle"`` or ``"end"``.
        seed: seed of the offsets and distractor draws (the same for every method and seed, so
            every method sees the same lengthened videos).
        gallery: evaluate on the first ``gallery`` test videos only (None = the whole split).
        bootstrap_samples: resamples of the query-bootstrap intervals.
        latency_repeats, latency_warmup: of the latency measurements.
        progress: show the evaluation progress bar.
        postproc: post-processings reported besides ``none`` (one row each per length).
    """

    injected_lengths_s: list[float]
    distractor_split: str = "val"
    placement: str = "random"
    seed: int = 0
    gallery: int | None = None
    bootstrap_samples: int = 1000
    latency_repeats: int = 20
    latency_warmup: int = 3
    progress: bool = True
    postproc: PostprocSettings | None = None

    @staticmethod
    def default_lengths(synthetic: bool) -> list[float]:
        """Real DiDeMo ``[0, 30, 60, 120, 240]`` s; the synthetic set ``[0, 45, 90, 180, 360]``
        s (the same steps in units of its sampling limit, see :mod:`tvrbench.data.stress`)."""
        return list(SYNTHETIC_INJECTED_LENGTHS_S if synthetic else DIDEMO_INJECTED_LENGTHS_S)

    def columns(self) -> dict[str, Any]:
        """The setting columns of every stress row."""
        return {
            "stress_gallery": self.gallery if self.gallery is not None else "all",
            "distractor_split": self.distractor_split,
            "placement": self.placement,
        }


def length_key(injected_length_s: float) -> str:
    """The key of one length's ranks in a record's ``stress_ranks`` (``"45.0"``)."""
    return str(float(injected_length_s))


def missing_lengths(record: dict[str, Any], lengths: Sequence[float]) -> list[float]:
    """The lengths of ``lengths`` that ``record`` has no stress row for."""
    have = {float(r["injected_length_s"]) for r in record.get("stress") or []}
    return [float(t) for t in lengths if float(t) not in have]


def _test_trainer(precision: Any, device: torch.device, capture: TestCapture, progress: bool):
    import lightning as L

    return L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[capture],
    )


def evaluate_lengths(
    module,
    datamodule,
    sample: dict[str, torch.Tensor],
    settings: StressSettings,
    device: torch.device,
    precision: Any = "32-true",
    lengths: Sequence[float] | None = None,
    bank: QueryBank | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate a tested module at every injected length.

    Args:
        module: a :class:`~tvrbench.retrieval.RetrievalModule` holding its selected weights.
        datamodule: the run's :class:`~tvrbench.data.datamodule.DiDeMoDataModule`.
        sample: one test row (``input_ids``, ``attention_mask``, ``frames``, ``frame_mask``)
            that the cost measurements run on.
        settings: the protocol's settings.
        device: where evaluation and every measurement run (one device).
        precision: the training trainer's precision (towers under the same autocast; states,
            similarities and ranks are float32 whatever it is).
        lengths: the lengths to evaluate (default: ``settings.injected_lengths_s``).
        bank: QB-Norm's query bank (encoded here when ``settings.postproc`` needs one).

    Returns:
        ``(rows, ranks)``: one row per length and post-processing (metrics with intervals,
        ``mean_relevant_fraction``, ``mean_relevant_frames``, ``mean_frames``, costs at the
        composed frame count, the settings) and ``{length_key(T): rank record}``.
    """
    rows: list[dict[str, Any]] = []
    ranks: dict[str, Any] = {}
    meter: CostMeter | None = None
    if bank is None and settings.postproc is not None and settings.postproc.needs_bank:
        bank = encode_query_bank(module, datamodule, settings.postproc, device, precision)
    for t in settings.injected_lengths_s if lengths is None else lengths:
        t = float(t)
        stress_dm = StressDataModule(
            datamodule,
            t,
            settings.distractor_split,
            settings.placement,
            settings.seed,
            limit=settings.gallery,
        )
        capture = TestCapture(sample)
        print(f"  controlled length: T = {t:g} s", file=sys.stderr)
        trainer = _test_trainer(precision, device, capture, settings.progress)
        trainer.test(module, datamodule=stress_dm, verbose=False)
        ev = module.last_eval
        if meter is None:
            # The meter places the module on `device` before every measurement: this test
            # just moved it back to the CPU (Lightning's teardown), and the next one will too.
            meter = CostMeter(
                module,
                sample,
                device,
                settings.latency_repeats,
                settings.latency_warmup,
                precision=precision,
            )
        q_lat = meter.query(ev["video_state"])
        summary = stress_dm.summary()
        variants = postproc_variants(module, ev, settings.postproc, bank)  # {postproc: eval}
        for name, variant in variants.items():
            (all_row,) = [
                r
                for r in bucket_rows(
                    variant, capture, meter, settings.bootstrap_samples, settings.seed, q_lat
                )
                if r["bucket"] == "all"
            ]
            all_row.pop("bucket")
            rows.append(
                {
                    "injected_length_s": t,
                    "postproc": name,
                    **all_row,
                    "lengthened_videos": summary["lengthened_videos"],
                    **settings.columns(),
                }
            )
        ranks[length_key(t)] = with_postproc_ranks(rank_record(ev), variants)
    return rows, ranks


def merge_stress(
    record: dict[str, Any], rows: list[dict[str, Any]], ranks: dict[str, Any]
) -> dict[str, Any]:
    """``record`` with new length rows added (a length evaluated again replaces its row)."""
    new = {float(r["injected_length_s"]) for r in rows}
    kept = [r for r in record.get("stress") or [] if float(r["injected_length_s"]) not in new]
    merged = sorted([*kept, *rows], key=lambda r: float(r["injected_length_s"]))
    return {
        **record,
        "stress": merged,
        "stress_ranks": {**(record.get("stress_ranks") or {}), **ranks},
    }


# ------------------------------------------------------------------- existing runs (resume, CLI)


def _first_test_row(datamodule) -> dict[str, torch.Tensor]:
    datamodule.setup_split("test")
    batch = next(iter(datamodule.test_dataloader()))
    return {k: batch[k][:1] for k in SAMPLE_KEYS}


def complete_record(
    run_dir: Path,
    record: dict[str, Any],
    settings: StressSettings,
    device: torch.device,
    *,
    instantiate,
    datamodule_for=lambda dm: dm,
) -> dict[str, Any]:
    """Evaluate a finished record's selected checkpoint at the lengths it lacks.

    The module and data come from the run's resolved config
    ``configs/<method>-seed<k>.yaml`` (what trained it), the weights from the record's
    checkpoint, loaded with ``weights_only=True``.
    """
    import yaml

    from tvrbench.bench.config import BenchConfigError
    from tvrbench.bench.method import load_checkpoint_weights, one_device

    todo = missing_lengths(record, settings.injected_lengths_s)
    if not todo or record.get("skipped"):
        return record
    method, seed = record["method"], int(record["seed"])
    path = run_dir / "configs" / f"{method}-seed{seed}.yaml"
    if not path.is_file():
        raise BenchConfigError(f"{path}: no resolved config for {method}/seed{seed} in this run")
    config = yaml.safe_load(path.read_text())
    checkpoint = str(record.get("checkpoint") or "")
    if not Path(checkpoint).is_file():
        raise BenchConfigError(
            f"{method}/seed{seed}: checkpoint {checkpoint or '(none recorded)'} is missing; "
            "the controlled-length protocol evaluates the run's selected checkpoints"
        )
    local = copy.deepcopy(config)
    local["trainer"] = one_device(local["trainer"])
    local["trainer"].pop("callbacks", None)
    local["trainer"]["logger"] = False
    module, datamodule, _ = instantiate(local)
    datamodule = datamodule_for(datamodule)
    load_checkpoint_weights(module, checkpoint)
    print(f"[{method}/seed{seed}] controlled length at {', '.join(f'{t:g}' for t in todo)} s")
    rows, ranks = evaluate_lengths(
        module,
        datamodule,
        _first_test_row(datamodule),
        settings,
        device,
        precision=local["trainer"].get("precision", "32-true"),
        lengths=todo,
    )
    return merge_stress(record, rows, ranks)


def restress_run(
    run: str,
    injected_lengths_s: list[float] | None = None,
    distractor_split: str | None = None,
    placement: str | None = None,
    stress_gallery: int | None = None,
    device: str | None = None,
) -> Path:
    """``tvrbench stress --run DIR``: evaluate an existing run's selected checkpoints at other
    injected lengths (no retraining), add the rows to its records and rewrite its outputs.

    Unset options keep the run's own settings (``results.json`` ``config``). A different
    distractor split, placement or gallery than the run's would mix settings in one table:
    refused.

    Args:
        run: the run folder (``outputs/bench-didemo/<run>``).
        injected_lengths_s: lengths T in seconds to evaluate (those the run has are skipped);
            default: the run's own, else the data's default set.
        distractor_split: ``val`` or ``train`` (must match the run's existing stress rows).
        placement: ``random``, ``start``, ``middle`` or ``end`` (likewise).
        stress_gallery: the first N test videos (likewise; None: the run's setting).
        device: ``auto``, ``cpu`` or ``cuda`` (default: the run's).
    """
    from tvrbench.bench.config import BenchConfigError, seed_list, split_methods
    from tvrbench.bench.environment import collect_environment
    from tvrbench.bench.outputs import read_records, write_outputs, write_record
    from tvrbench.device import resolve_device
    from tvrbench.train import instantiate

    run_dir = Path(run)
    info_path = run_dir / "results.json"
    if not info_path.is_file():
        raise BenchConfigError(f"{run_dir}: not a benchmark run folder (no results.json)")
    info = json.loads(info_path.read_text())
    config = dict(info["config"])
    synthetic = info.get("data") == "synthetic"
    for name, given in (
        ("distractor_split", distractor_split),
        ("placement", placement),
        ("stress_gallery", stress_gallery),
    ):
        had = config.get(name)
        if given is not None and had is not None and given != had and info.get("stress"):
            raise BenchConfigError(
                f"{name}: the run's stress rows used {had!r}; evaluating {given!r} would mix "
                "settings in one table (start a new run instead)"
            )
        if given is not None:
            config[name] = given
    lengths = injected_lengths_s or config.get("injected_lengths_s")
    lengths = [float(t) for t in (lengths or StressSettings.default_lengths(synthetic))]
    known = {float(r["injected_length_s"]) for r in info.get("stress") or []}
    config.update(stress=True, injected_lengths_s=sorted(known | set(lengths)))
    torch_device = resolve_device(device or config.get("device", "auto"))
    settings = settings_from_config(config, synthetic)
    settings.injected_lengths_s = lengths
    methods = split_methods(config["methods"])
    seeds = seed_list(config["seeds"], int(config.get("seed", 0)))
    shared: dict[str, Any] = {}

    def share(dm):
        key = type(dm).__qualname__ + json.dumps(
            {k: v for k, v in dict(getattr(dm, "hparams", {}) or {}).items() if k != "seed"},
            sort_keys=True,
            default=str,
        )
        return shared.setdefault(key, dm)

    added = False
    for record in read_records(run_dir, methods, seeds):
        done = complete_record(
            run_dir, record, settings, torch_device, instantiate=instantiate, datamodule_for=share
        )
        if done is not record:
            write_record(run_dir, done)
            added = True
    # The run's own environment stays; lengths added now say where they were measured.
    env = dict(info.get("environment") or collect_environment(torch_device, config=None))
    if added:
        env["stress_added_on"] = collect_environment(torch_device, config=None)
    write_outputs(run_dir, methods, seeds, config, env, synthetic)
    return run_dir


def settings_from_config(config: dict[str, Any], synthetic: bool) -> StressSettings:
    """The protocol's settings from a bench config (``run_bench``'s arguments)."""
    lengths = config.get("injected_lengths_s") or StressSettings.default_lengths(synthetic)
    return StressSettings(
        injected_lengths_s=[float(t) for t in lengths],
        distractor_split=str(config.get("distractor_split") or "val"),
        placement=str(config.get("placement") or "random"),
        seed=int(config.get("seed", 0)),
        gallery=config.get("stress_gallery"),
        bootstrap_samples=int(config.get("bootstrap_samples", 1000)),
        latency_repeats=int(config.get("latency_repeats", 20)),
        latency_warmup=int(config.get("latency_warmup", 3)),
        postproc=postproc_from_config(config),
    )


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="tvrbench stress",
        description=(
            "Evaluate an existing benchmark run's selected checkpoints at other injected video "
            "lengths (SPEC §6), without retraining; updates stress.csv, the plot and the report."
        ),
    )
    parser.add_function_arguments(restress_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tvrbench.bench.config import BenchConfigError

    cfg = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "__path__"}
    try:
        run_dir = restress_run(**kwargs)
    except (BenchConfigError, ValueError) as err:
        print(f"tvrbench stress: {err}", file=sys.stderr)
        return 2
    print(f"stress.csv: {run_dir / 'stress.csv'}")
    return 0


# ------------------------------------------------------------------------------------ findings


def _slope_per_minute(lengths_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` against length, per added minute."""
    if len(lengths_s) < 2 or np.ptp(lengths_s) == 0:
        return math.nan
    return float(np.polyfit(lengths_s / 60.0, values, 1)[0])


def _best_and_worst(
    values: dict[str, float], higher_is_better: bool
) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """``((best, value), (worst, value))`` among the finite values; None with fewer than two."""
    finite = {m: v for m, v in values.items() if math.isfinite(v)}
    if len(finite) < 2:
        return None
    order = sorted(finite, key=lambda m: finite[m], reverse=higher_is_better)
    return (order[0], finite[order[0]]), (order[-1], finite[order[-1]])


def stress_findings(stress: pd.DataFrame, metric: str = "t2v_R@1") -> list[str]:
    """Sentences computed from the controlled-length rows (seed means when there are several
    seeds): each method's change from the shortest to the longest injected length (with whether
    the two 95 % intervals are disjoint, and the share of its unchanged value it keeps), the
    least-squares change per added minute of ``metric`` and of the mean rank, which method
    degrades least by each, and the lengths at which the ranking of the methods changes.
    Values within twice chance (``chance_R@1``) are called out: there is nothing left to rank."""
    from tvrbench.bench.seeds import summary_rows

    table = summary_rows(stress)
    if not len(table) or metric not in table:
        return []
    table = table.assign(T=table["injected_length_s"].astype(float))
    lengths = sorted(table["T"].unique())
    if len(lengths) < 2:
        return []
    lo_t, hi_t = lengths[0], lengths[-1]
    rank_metric = metric.split("_")[0] + "_MnR"
    chance = float(table["chance_R@1"].max()) if "chance_R@1" in table else math.nan
    lines: list[str] = []
    slopes: dict[str, float] = {}
    rank_slopes: dict[str, float] = {}
    for method, g in table.groupby("method", sort=False):
        g = g.sort_values("T")
        values = g[metric].astype(float).to_numpy()
        slopes[str(method)] = _slope_per_minute(g["T"].to_numpy(), values)
        if rank_metric in g:
            ranks = g[rank_metric].astype(float).to_numpy()
            rank_slopes[str(method)] = _slope_per_minute(g["T"].to_numpy(), ranks)
        first, last = g.iloc[0], g.iloc[-1]
        disjoint = (
            float(last.get(f"{metric}_hi", math.nan)) < float(first.get(f"{metric}_lo", math.nan))
        ) or (
            float(last.get(f"{metric}_lo", math.nan)) > float(first.get(f"{metric}_hi", math.nan))
        )
        verdict = "95 % intervals disjoint" if disjoint else "95 % intervals overlap"
        kept = (
            f", keeps {100 * last[metric] / first[metric]:.0f} % of it"
            if float(first[metric]) > 0
            else ""
        )
        floor = (
            f" (within twice chance, {chance:.2g})"
            if math.isfinite(chance) and float(last[metric]) <= 2 * chance
            else ""
        )
        rank_part = (
            f"; {rank_metric} {first[rank_metric]:.1f} → {last[rank_metric]:.1f}"
            if rank_metric in g
            else ""
        )
        lines.append(
            f"{method}: {metric} {first[metric]:.1f} at T = {first['T']:g} s → {last[metric]:.1f} "
            f"at T = {last['T']:g} s{floor} ({last[metric] - first[metric]:+.1f} points{kept}; "
            f"{verdict}); {slopes[str(method)]:+.2f} points per added minute (least squares over "
            f"{len(g)} lengths){rank_part}."
        )
    head: list[str] = []
    extremes = _best_and_worst(slopes, higher_is_better=True)
    if extremes:
        (best, b), (worst, w) = extremes
        head.append(
            f"Degrades least as length grows: {best} ({b:+.2f} {metric} points per added "
            f"minute); most: {worst} ({w:+.2f}), over T = {lo_t:g}–{hi_t:g} s (a method that "
            "starts lower has less to lose: see the share each keeps)."
        )
    extremes = _best_and_worst(rank_slopes, higher_is_better=False)
    if extremes:
        (best, b), (worst, w) = extremes
        head.append(
            f"Mean rank grows least: {best} ({b:+.2f} {rank_metric} per added minute); most: "
            f"{worst} ({w:+.2f})."
        )
    lines = head + lines
    previous: list[str] | None = None
    changes: list[str] = []
    for t in lengths:
        at = table[table["T"] == t].sort_values(metric, ascending=False)
        order = [str(m) for m in at["method"]]
        if previous is not None and order != previous:
            changes.append(f"at T = {t:g} s the order becomes {' > '.join(order)}")
        previous = order
    first_order = table[table["T"] == lo_t].sort_values(metric, ascending=False)["method"]
    if changes:
        lines.append(
            f"Ranking by {metric} at T = {lo_t:g} s: {' > '.join(map(str, first_order))}; "
            + "; ".join(changes)
            + " (point estimates; see the intervals)."
        )
    elif len(slopes) > 1:
        lines.append(
            f"The ranking by {metric} ({' > '.join(map(str, first_order))}) is the same at every "
            "injected length (point estimates)."
        )
    return lines
