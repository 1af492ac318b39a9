"""The benchmark runner: ``tvrbench bench --config configs/bench/didemo.yaml``.

The story of a run:

1. resolve the configuration (:mod:`tvrbench.bench.config`): for every method and seed, the
   ``tvrbench fit`` config — method, data and trainer configs under the run's recipe;
2. prepare the shared starting point once (:mod:`tvrbench.bench.starting_point`): the data
   (real DiDeMo or the synthetic set) and the CLIP weights (real, or the pretrained tiny CLIP);
3. for every (method, seed) not yet done (:mod:`tvrbench.bench.method`): train with checkpoint
   selection on ``val/R@1``, test once, measure (:mod:`tvrbench.bench.measure`), evaluate the
   selected checkpoint again at every injected length (:mod:`tvrbench.bench.stress`); write its
   record ``methods/<method>/seed<k>.json``;
4. combine the records into results.csv, gallery.csv, stress.csv, results.json, report.md and
   the plots (:mod:`tvrbench.bench.outputs`).

Where the (method, seed) units run (``launcher``, :mod:`tvrbench.bench.launch`): ``none`` — here,
one after another; ``local`` / ``slurm`` — one submitit job each (on this machine / one SLURM
job), after this process prepared the shared starting point; each job writes only its record,
this process waits (or returns with ``no_wait``) and writes the combined outputs.

``<out_dir>/<run>``: ``<run>`` defaults to a hash of the configuration, so re-running the same
command resumes the same folder: only (method, seed) pairs without a record run again.

Protocols (``protocol``): ``finetune`` (default; every method fine-tunes CLIP end to end) or
``cached_features`` (a FAST PROTOCOL, :mod:`tvrbench.bench.cached`: frozen backbone, head-only
training on features cached once per split; labelled in every output).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from tvrbench.bench.config import BenchConfigError, config_hash, resolve_run, split_methods
from tvrbench.bench.launch import LauncherSettings, UnitsFailedError
from tvrbench.bench.measure import MeasureSettings
from tvrbench.bench.settings import BenchConfig, ResolvedBench, resolve
from tvrbench.methods import MethodConfigError, class_of

__all__ = [
    "BenchConfig",
    "BenchConfigError",
    "config_hash",
    "main",
    "run_bench",
    "split_methods",
]


def run_bench(config: BenchConfig) -> Path:
    """Run the benchmark (:class:`~tvrbench.bench.settings.BenchConfig`); returns the run
    folder."""
    from tvrbench.bench.launch import refuse_multi_task_start
    from tvrbench.precision import set_float32_precision

    refuse_multi_task_start()
    try:
        set_float32_precision(config.float32_matmul_precision)
    except ValueError as err:
        raise BenchConfigError(str(err)) from err
    bench = resolve(config)
    from tvrbench.bench import starting_point
    from tvrbench.bench.environment import collect_environment
    from tvrbench.bench.outputs import record_path, write_outputs, write_record
    from tvrbench.device import resolve_device

    launcher = bench.launcher
    # The submitting host of SLURM jobs needs no accelerator: jobs resolve `device` themselves.
    torch_device = resolve_device("cpu" if launcher.kind == "slurm" else config.device)
    starting_point.check_clip_available(config.clip)
    cache_root = config.cache_root
    run_dir = bench.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    banner = (
        "*** SYNTHETIC DATA — these are not DiDeMo numbers ***" if bench.synthetic else "DiDeMo"
    )
    print(f"\n{banner}  (run: {run_dir}; recipe {bench.recipe.name}; seeds {bench.seeds})\n")
    if config.protocol == "cached_features":
        from tvrbench.bench.report import FAST_PROTOCOL_BANNER

        print(f"\n*** {FAST_PROTOCOL_BANNER} ***\n")
    root = starting_point.data_root(
        config.didemo_root, cache_root, config.seed, config.synth_videos
    )
    specs = _Specs(bench, root, torch_device)
    # Resolve every run before any work: a bad method config fails in one line, up front.
    for m in bench.methods:
        specs(m, bench.seeds[0], config.clip_checkpoint)
    pending = [
        (m, s)
        for m in bench.methods
        for s in bench.seeds
        if not record_path(run_dir, m, s).exists()
    ]
    done = len(bench.methods) * len(bench.seeds) - len(pending)
    if done:
        print(f"resuming {run_dir}: {done} (method, seed) done; {len(pending)} to run")
    env = collect_environment(torch_device, config=None)
    shared = _SharedData()
    checkpoints = config.checkpoints or {}
    if pending:
        first_dm = shared.get(specs(*pending[0], config.clip_checkpoint))
        start = config.clip_checkpoint
        if start is None and config.pretrain and config.clip == "tiny":
            start = starting_point.pretrained_tiny_clip(
                first_dm,
                cache_root,
                config.pretrain_minutes,
                config.seed,
                accelerator=specs.accelerator,
            )
        cached = None
        if config.protocol == "cached_features":
            from tvrbench.bench.cached import cached_setup

            cached = cached_setup(
                first_dm, config.clip, start, cache_root, torch_device, config.seed
            )
        measure = bench.measure_settings(env.get("matmul_gflops_per_s"))
        if launcher.kind != "none":
            _run_as_jobs(
                launcher,
                [specs(m, s, start) for m, s in pending],
                run_dir,
                device=config.device,
                measure=measure,
                checkpoints=checkpoints,
                stress=bench.stress,
                shared=shared,
                wait=not config.no_wait,
            )
            if config.no_wait:
                print(f"submitted; collect with the same command (run: {run_dir})")
                return run_dir
            pending = []
        from tvrbench.bench.method import run_method
        from tvrbench.train import instantiate

        for m, s in pending:
            record = run_method(
                specs(m, s, start),
                run_dir,
                torch_device,
                measure,
                instantiate=instantiate,
                datamodule_for=shared.share,
                given_checkpoint=checkpoints.get(m),
                cached=cached,
                stress=bench.stress,
            )
            path = write_record(run_dir, record)
            status = f"SKIPPED: {record.skipped}" if record.skipped else "done"
            print(f"[{m}/seed{s}] {status}: {path.relative_to(run_dir)}")
        shared.write_data_files(run_dir)
    if bench.stress is not None:
        _complete_stress(run_dir, bench.methods, bench.seeds, bench.stress, torch_device, shared)
    test_data = shared.test_dataset(specs(bench.methods[0], bench.seeds[0], config.clip_checkpoint))
    write_outputs(
        run_dir, bench.methods, bench.seeds, bench.record(), env, bench.synthetic, test_data
    )
    return run_dir


class _Specs:
    """The resolved ``tvrbench fit`` config of any (method, seed) of a run
    (:func:`~tvrbench.bench.config.resolve_run`): what the bench decides on top of the method,
    data and trainer configs — the data root, the CLIP and its starting checkpoint, the
    device — and the run's overrides."""

    def __init__(self, bench: ResolvedBench, data_root: Path, device) -> None:
        config = bench.config
        self.bench = bench
        data: dict[str, Any] = {"root": str(data_root), "tokenizer": config.clip}
        if config.cache_dir:
            data["cache_dir"] = str(config.cache_root / "frames")
        if bench.data.get("init_args", {}).get("image_size") is None:
            from tvrbench.backbone import ClipBackbone

            data["image_size"] = ClipBackbone.from_pretrained(config.clip).image_size
        self.data = data
        self.accelerator = "gpu" if device.type == "cuda" else "cpu"
        # DEVICE=cuda:1 trains, tests and measures on GPU 1 (Lightning's devices=1 means GPU 0).
        self.pinned = {"devices": [device.index]} if device.index is not None else {}
        self.overrides = {
            "model": config.model_overrides or {},
            "data": config.data_overrides or {},
            "trainer": bench.trainer_overrides,
        }

    def __call__(self, method: str, seed: int, start: str | None):
        config = self.bench.config
        decided = {
            "model": {"clip": config.clip, **({"clip_checkpoint": start} if start else {})},
            "data": self.data,
            "trainer": {"accelerator": self.accelerator, **self.pinned},
        }
        spec = resolve_run(
            method,
            seed,
            recipe=self.bench.recipe,
            method_config_dir=config.method_config_dir,
            data=self.bench.data,
            trainer=self.bench.trainer,
            bench=decided,
            overrides=self.overrides,
        )
        # Training processes (`tvrbench fit`) set the same float32 matmul precision.
        spec.config["float32_matmul_precision"] = config.float32_matmul_precision
        return spec


def _run_as_jobs(
    settings: LauncherSettings,
    specs: list,
    run_dir: Path,
    *,
    device: str,
    measure: MeasureSettings,
    checkpoints: dict[str, str],
    stress,
    shared: _SharedData,
    wait: bool,
) -> None:
    """Every (method, seed) of ``specs`` as one job: the data are probed and decoded into the
    frame cache here first (bad_videos.csv, data_summary.json), so that no job — and no rank
    inside one — waits on another's decoding; then submit and, with ``wait``, collect."""
    from tvrbench.bench.config import training_layout
    from tvrbench.bench.launch import UnitJob, submit_units
    from tvrbench.bench.method import run_unit

    shared.write_data_files(run_dir)
    units = [
        UnitJob(
            spec=spec,
            run_dir=str(run_dir.resolve()),
            device=device,
            measure=measure,
            given_checkpoint=checkpoints.get(spec.method),
            stress=stress,
            measure_matmul=settings.kind == "slurm",
        )
        for spec in specs
    ]
    layout = training_layout(specs[0].config["trainer"]) if settings.kind == "local" else None
    failures = submit_units(settings, units, layout, run_unit, wait=wait)
    if failures:
        lines = [
            f"{len(failures)} of {len(units)} (method, seed) jobs failed; rerun the same "
            "command to resubmit only those:"
        ]
        raise UnitsFailedError("\n".join(lines + [f.line() for f in failures]))


def _complete_stress(run_dir, methods, seeds, settings, device, shared) -> None:
    """Records of a resumed run that lack some injected lengths (e.g. ``stress`` turned on, or
    lengths added, after they were written): evaluate their selected checkpoints at those."""
    from tvrbench.bench.outputs import read_records, write_record
    from tvrbench.bench.stress import complete_record
    from tvrbench.train import instantiate

    for record in read_records(run_dir, methods, seeds):
        done = complete_record(
            run_dir, record, settings, device, instantiate=instantiate, datamodule_for=shared.share
        )
        if done is not record:
            write_record(run_dir, done)


class _SharedData:
    """DataModules shared by the runs whose data configs are equal (seed aside): set up once."""

    def __init__(self) -> None:
        self._by_key: dict[str, Any] = {}

    @staticmethod
    def _key(datamodule) -> str:
        import json

        hp = dict(getattr(datamodule, "hparams", {}) or {})
        hp.pop("seed", None)
        return type(datamodule).__qualname__ + json.dumps(hp, sort_keys=True, default=str)

    def share(self, datamodule):
        return self._by_key.setdefault(self._key(datamodule), datamodule)

    def get(self, spec):
        """The DataModule of ``spec`` (built without the model)."""
        cls = class_of(spec.config["data"]["class_path"])
        return self.share(cls(**spec.config["data"]["init_args"]))

    def test_dataset(self, spec):
        """The test split's dataset (the qualitative sheet's paragraphs and frames, from the
        frame cache); None, said in one line, when it cannot be set up in this process."""
        try:
            datamodule = self.get(spec)
            datamodule.setup_split("test")
            return datamodule.dataset("test")
        except Exception as err:  # the sheet is informative: the run's results do not need it
            print(f"qualitative sheet without thumbnails: no test split here ({err})")
            return None

    def write_data_files(self, run_dir: Path) -> None:
        """bad_videos.csv (every skipped video, never dropped silently) and data_summary.json."""
        from tvrbench.atomic import atomic_write_csv, atomic_write_json
        from tvrbench.bench.outputs import BAD_VIDEO_COLUMNS

        bad: list[dict[str, Any]] = []
        summary: dict[str, Any] = {}
        for dm in self._by_key.values():
            if hasattr(dm, "bad_videos"):
                bad += [dict(row) for row in dm.bad_videos()]
            for split in ("train", "val", "test"):
                if split in summary or not hasattr(dm, "summary"):
                    continue
                try:
                    dm.setup_split(split) if hasattr(dm, "setup_split") else None
                    summary[split] = dm.summary(split)
                    summary[split + "_bucket_edges"] = list(dm.bucket_edges(split))
                except Exception as err:  # informative only; the run does not depend on it
                    summary[split] = {"error": str(err)}
        unique = list({json_key(r): r for r in bad}.values())
        atomic_write_csv(run_dir / "bad_videos.csv", unique, BAD_VIDEO_COLUMNS)
        atomic_write_json(run_dir / "data_summary.json", summary)
        from tvrbench.data.manifest import datamodule_manifest

        for dm in self._by_key.values():  # manifest.csv: the first DataModule with video files
            if datamodule_manifest(dm, run_dir / "manifest.csv") is not None:
                break


def json_key(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------- CLI


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="tvrbench bench",
        description="Benchmark text-video retrieval methods per video length (SPEC §4-§6).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a configs/bench/*.yaml file")
    parser.add_class_arguments(BenchConfig)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler
        logging.getLogger(name).propagate = False
    parser = build_parser()
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    kwargs = cfg.as_dict()
    for key in ("config", "__path__"):
        kwargs.pop(key, None)
    from tvrbench.backbone import BackboneNotFoundError
    from tvrbench.data.annotations import AnnotationError
    from tvrbench.data.datamodule import DataSetupError
    from tvrbench.train import known_error

    try:
        run_bench(BenchConfig(**kwargs))
    except (MethodConfigError, BackboneNotFoundError, AnnotationError, DataSetupError) as err:
        print(f"tvrbench bench: {err}", file=sys.stderr)
        return 2
    except UnitsFailedError as err:
        print(f"tvrbench bench: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        known = known_error(err)
        if known is None:
            raise
        print(f"tvrbench bench: {known}", file=sys.stderr)
        return 2
    return 0
