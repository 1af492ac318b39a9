"""The controlled-length protocol in a benchmark run (SPEC §6): every selected checkpoint is
evaluated again on the test gallery lengthened to each injected length ``T``, without retraining.

The lengthened test set is the data layer's :class:`~tvrbench.data.stress.StressDataModule`
(distractor stretches from outside the test gallery around every test video, sampled exactly as a
real video). Per method, seed and ``T`` this module records one row — the metrics of SPEC §4 with
query-bootstrap intervals over the (lengthened) gallery, the mean relevant fraction and relevant
frames, the mean composed frame count, and GFLOPs and latency at that frame count — plus the
per-query ranks (the input of the seeds' two-level bootstrap). ``T = 0`` leaves every video as it
is, so its row equals the run's own test row when the whole test split is the stress gallery.

Entry points: :func:`evaluate_lengths` (called by the runner after each test) and
:func:`complete_record` (a finished record's checkpoint at the lengths it lacks: a resumed run,
and ``tvrbench stress --run DIR``, :mod:`tvrbench.stress_cli`). The findings' sentences are in
:mod:`tvrbench.bench.findings`.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tvrbench.bench.measure import SAMPLE_KEYS, CostMeter, TestCapture, bucket_rows, rank_record
from tvrbench.bench.postproc import (
    PostprocSettings,
    QueryBank,
    encode_query_bank,
    postproc_variants,
    with_postproc_ranks,
)
from tvrbench.bench.record import MethodRecord
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


def missing_lengths(record: MethodRecord, lengths: Sequence[float]) -> list[float]:
    """The lengths of ``lengths`` that ``record`` has no stress row for."""
    have = {float(r["injected_length_s"]) for r in record.stress}
    return [float(t) for t in lengths if float(t) not in have]


def _test_trainer(precision: Any, device: torch.device, capture: TestCapture, progress: bool):
    from tvrbench.device import evaluation_trainer

    return evaluation_trainer(device, precision, progress, callbacks=[capture])


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
    record: MethodRecord, rows: list[dict[str, Any]], ranks: dict[str, Any]
) -> MethodRecord:
    """``record`` with new length rows added (a length evaluated again replaces its row)."""
    new = {float(r["injected_length_s"]) for r in rows}
    kept = [r for r in record.stress if float(r["injected_length_s"]) not in new]
    merged = sorted([*kept, *rows], key=lambda r: float(r["injected_length_s"]))
    return dataclasses.replace(record, stress=merged, stress_ranks={**record.stress_ranks, **ranks})


# ------------------------------------------------------------------- existing runs (resume, CLI)


def _first_test_row(datamodule) -> dict[str, torch.Tensor]:
    datamodule.setup_split("test")
    batch = next(iter(datamodule.test_dataloader()))
    return {k: batch[k][:1] for k in SAMPLE_KEYS}


def complete_record(
    run_dir: Path,
    record: MethodRecord,
    settings: StressSettings,
    device: torch.device,
    *,
    instantiate,
    datamodule_for=lambda dm: dm,
) -> MethodRecord:
    """Evaluate a finished record's selected checkpoint at the lengths it lacks.

    The module and data come from the run's resolved config
    ``configs/<method>-seed<k>.yaml`` (what trained it), the weights from the record's
    checkpoint, loaded with ``weights_only=True``.
    """
    import yaml

    from tvrbench.bench.config import BenchConfigError, one_device, trainer_precision
    from tvrbench.methods import load_checkpoint_weights, upgrade_model_config

    todo = missing_lengths(record, settings.injected_lengths_s)
    if not todo or record.skipped:
        return record
    method, seed = record.method, record.seed
    path = run_dir / "configs" / f"{method}-seed{seed}.yaml"
    if not path.is_file():
        raise BenchConfigError(f"{path}: no resolved config for {method}/seed{seed} in this run")
    config = yaml.safe_load(path.read_text())
    config["model"] = upgrade_model_config(config["model"])  # an older run's module class
    checkpoint = str(record.checkpoint or "")
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
        precision=trainer_precision(local["trainer"]),
        lengths=todo,
    )
    return merge_stress(record, rows, ranks)
