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

from tvrbench.bench.config import (
    PROTOCOLS,
    BenchConfigError,
    config_hash,
    default_run_name,
    load_recipe,
    resolve_recipe_name,
    resolve_run,
    section,
    seed_list,
    split_methods,
)
from tvrbench.bench.launch import LauncherSettings, UnitsFailedError
from tvrbench.methods import MethodConfigError, class_of

__all__ = ["BenchConfigError", "config_hash", "main", "run_bench", "split_methods"]

DEFAULT_METHODS = ["meanp", "xpool", "centerclip", "xclip", "glscl", "glccl"]
DEFAULT_GALLERY_SIZES = [100, 1000, 10000, 100000]
DEFAULT_POSTPROC = ["none", "dsl", "qbnorm"]


def run_bench(
    didemo_root: str | None = None,
    synth_videos: int = 4500,
    clip: str = "tiny",
    clip_checkpoint: str | None = None,
    methods: list[str] | str = DEFAULT_METHODS,
    method_config_dir: str = "configs/method",
    recipe: str = "auto",
    recipe_dir: str = "configs/recipe",
    seeds: int | list[int] = 1,
    seed: int = 0,
    data: str | dict[str, Any] = "configs/data/synthetic.yaml",
    trainer: str | dict[str, Any] = "configs/trainer/cpu.yaml",
    data_overrides: dict[str, Any] | None = None,
    trainer_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    protocol: str = "finetune",
    device: str = "auto",
    out_dir: str = "outputs/bench-didemo",
    run_name: str | None = None,
    cache_dir: str | None = None,
    checkpoints: dict[str, str] | None = None,
    pretrain: bool = True,
    pretrain_minutes: float = 2.0,
    bootstrap_samples: int = 1000,
    gallery_sizes: list[int] = DEFAULT_GALLERY_SIZES,
    gallery_repeats: int = 3,
    gallery_max_mb: float = 1024.0,
    latency_repeats: int = 20,
    latency_warmup: int = 3,
    stress: bool = True,
    injected_lengths_s: list[float] | None = None,
    distractor_split: str = "val",
    placement: str = "random",
    stress_gallery: int | None = None,
    postproc: list[str] = DEFAULT_POSTPROC,
    bank_max_queries: int | None = 1000,
    launcher: LauncherSettings | str = "none",
    no_wait: bool = False,
    float32_matmul_precision: str = "highest",
) -> Path:
    """Run the benchmark; returns the run folder.

    Args:
        didemo_root: folder with DiDeMo's ``{split}_data.json`` + ``{split}_list.txt``; None runs
            the built-in synthetic DiDeMo-format data (generated once under ``cache_dir``).
        synth_videos: size of the synthetic dataset (all splits).
        clip: ``"tiny"``, a ``save_pretrained`` folder or a hub id (model and tokenizer).
        clip_checkpoint: a CLIP state dict every method starts from (overrides ``pretrain``).
        methods: names in ``method_config_dir`` (a list or ``"a,b"``).
        recipe: ``auto`` (``tiny`` for the tiny CLIP, ``shared`` otherwise), ``tiny``,
            ``shared`` or ``published`` (``recipe_dir/<name>.yaml``; SPEC §2.7).
        seeds: a count (seeds ``seed, seed+1, …``) or a list; every method trains once per seed.
        seed: base seed; also seeds the synthetic data and the tiny-CLIP pretraining.
        data, trainer: the data config and the trainer config (a YAML path or inline).
        data_overrides, trainer_overrides, model_overrides: applied last to every run's
            ``data.init_args``, ``trainer`` and ``model.init_args``.
        protocol: ``finetune`` or ``cached_features`` (FAST PROTOCOL).
        device: ``auto``, ``cpu`` or ``cuda``: training (the trainer's accelerator) and every
            measurement (one device).
        out_dir, run_name: results go to ``<out_dir>/<run_name>`` (default: from the hash).
        cache_dir: root of tvrbench's caches (frames, synthetic data, pretrained tiny CLIP,
            features); default ``~/.cache/tvrbench``.
        checkpoints: ``{method: path}`` Lightning checkpoints to test instead of training.
        pretrain: pretrain the tiny CLIP on the training split first (tiny CLIP only).
        bootstrap_samples: resamples of the 95 % intervals.
        gallery_sizes, gallery_repeats, gallery_max_mb: retrieval cost versus gallery size.
        latency_repeats, latency_warmup: timed and warm-up runs of the latency measurements.
        stress: evaluate every selected checkpoint at the injected lengths (SPEC §6).
        injected_lengths_s: the lengths T (s); None: the data's default set.
        distractor_split, placement: where distractor seconds come from and where the video sits.
        stress_gallery: evaluate the controlled-length protocol on the first N test videos only
            (None: the whole test split); recorded in stress.csv and the report.
        postproc: inference-time post-processings reported as separate rows (``postproc``
            column): ``none`` (always), ``dsl`` (dual softmax, transductive), ``qbnorm``
            (QB-Norm; its bank: the training split encoded by each tested checkpoint).
        bank_max_queries: QB-Norm bank size cap (a seeded sample of training videos; None: the
            whole split); the count is recorded in results.json.
        launcher: ``none`` | ``local`` | ``slurm`` or a :class:`LauncherSettings` section
            (SLURM resources): where every (method, seed) runs.
        no_wait: with ``launcher: slurm``, return once the jobs are submitted; the same command
            run later collects the records (and waits for jobs still queued or running).
        float32_matmul_precision: ``highest`` (true float32: evaluation, similarities, ranks and
            every float32 matmul of training), ``high`` or ``medium`` (TF32/bf16 passes on
            Ampere/Hopper); set in this process and in every training process, and recorded.
    """
    config = dict(locals())
    from tvrbench.bench.launch import refuse_multi_task_start, slurm_trainer_layout
    from tvrbench.precision import set_float32_precision

    refuse_multi_task_start()
    try:
        set_float32_precision(float32_matmul_precision)
    except ValueError as err:
        raise BenchConfigError(str(err)) from err
    settings = LauncherSettings.from_config(launcher)
    config["launcher"] = dict(settings.__dict__)
    if protocol not in PROTOCOLS:
        raise BenchConfigError(f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if settings.kind != "none" and protocol == "cached_features":
        raise BenchConfigError("launcher: the cached_features protocol runs in one process (none)")
    if no_wait and settings.kind != "slurm":
        raise BenchConfigError(
            "no_wait: only with launcher slurm (local jobs end with this process)"
        )
    from tvrbench.bench import starting_point
    from tvrbench.bench.environment import collect_environment
    from tvrbench.bench.outputs import record_path, write_outputs, write_record
    from tvrbench.bench.postproc import postproc_from_config
    from tvrbench.device import resolve_device
    from tvrbench.postproc import PostprocError

    method_names = split_methods(methods)
    seed_values = seed_list(seeds, seed)
    recipe_name = resolve_recipe_name(recipe, clip)
    recipe_cfg = load_recipe(recipe_name, recipe_dir)
    data_cfg = section(data, "data", "data config")
    if "class_path" not in data_cfg:
        raise BenchConfigError(f"data config {data}: expected `data: {{class_path, init_args}}`")
    trainer_cfg = section(trainer, "trainer", "trainer config")
    if settings.kind == "slurm":
        # Lightning in a job must use exactly what SLURM allocated (and the hash says so).
        trainer_overrides = {**(trainer_overrides or {})}
        layout = slurm_trainer_layout(settings, {**trainer_cfg, **trainer_overrides})
        trainer_overrides.update(layout)
        config["trainer_overrides"] = trainer_overrides
    # The submitting host of SLURM jobs needs no accelerator: jobs resolve `device` themselves.
    torch_device = resolve_device("cpu" if settings.kind == "slurm" else device)
    synthetic = didemo_root is None
    config.update(
        methods=method_names,
        seeds=seed_values,
        recipe=recipe_name,
        data=data_cfg,
        trainer=trainer_cfg,
        recipe_config=recipe_cfg.__dict__,
    )
    starting_point.check_clip_available(clip)
    cache_root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "tvrbench"
    run_dir = Path(out_dir) / (run_name or default_run_name(config))
    run_dir.mkdir(parents=True, exist_ok=True)
    banner = "*** SYNTHETIC DATA — these are not DiDeMo numbers ***" if synthetic else "DiDeMo"
    print(f"\n{banner}  (run: {run_dir}; recipe {recipe_name}; seeds {seed_values})\n")
    if protocol == "cached_features":
        from tvrbench.bench.report import FAST_PROTOCOL_BANNER

        print(f"\n*** {FAST_PROTOCOL_BANNER} ***\n")
    root = starting_point.data_root(didemo_root, cache_root, seed, synth_videos)
    bench_data: dict[str, Any] = {"root": str(root), "tokenizer": clip}
    if cache_dir:
        bench_data["cache_dir"] = str(cache_root / "frames")
    if data_cfg.get("init_args", {}).get("image_size") is None:
        from tvrbench.backbone import ClipBackbone

        bench_data["image_size"] = ClipBackbone.from_pretrained(clip).image_size
    overrides = {
        "model": model_overrides or {},
        "data": data_overrides or {},
        "trainer": trainer_overrides or {},
    }
    accelerator = "gpu" if torch_device.type == "cuda" else "cpu"
    # DEVICE=cuda:1 trains, tests and measures on GPU 1 (Lightning's devices=1 means GPU 0).
    pinned = {"devices": [torch_device.index]} if torch_device.index is not None else {}

    def spec_for(method: str, run_seed: int, start: str | None):
        bench = {
            "model": {"clip": clip, **({"clip_checkpoint": start} if start else {})},
            "data": bench_data,
            "trainer": {"accelerator": accelerator, **pinned},
        }
        spec = resolve_run(
            method,
            run_seed,
            recipe=recipe_cfg,
            method_config_dir=method_config_dir,
            data=data_cfg,
            trainer=trainer_cfg,
            bench=bench,
            overrides=overrides,
        )
        # Training processes (`tvrbench fit`) set the same float32 matmul precision.
        spec.config["float32_matmul_precision"] = float32_matmul_precision
        return spec

    # Resolve every run before any work: a bad method config fails in one line, up front.
    for m in method_names:
        spec_for(m, seed_values[0], clip_checkpoint)
    try:
        postproc_settings = postproc_from_config(config)
    except PostprocError as err:
        raise BenchConfigError(str(err)) from err
    config["postproc"] = postproc_settings.methods if postproc_settings else ["none"]
    stress_settings = None
    if stress:
        from tvrbench.bench.stress import settings_from_config

        stress_settings = settings_from_config(config, synthetic)
        config["injected_lengths_s"] = stress_settings.injected_lengths_s
    pending = [
        (m, s) for m in method_names for s in seed_values if not record_path(run_dir, m, s).exists()
    ]
    done = len(method_names) * len(seed_values) - len(pending)
    if done:
        print(f"resuming {run_dir}: {done} (method, seed) done; {len(pending)} to run")
    env = collect_environment(torch_device, config=None)
    shared = _SharedData()
    if pending:
        first_dm = shared.get(spec_for(pending[0][0], pending[0][1], clip_checkpoint))
        start = clip_checkpoint
        if start is None and pretrain and clip == "tiny":
            start = starting_point.pretrained_tiny_clip(
                first_dm, cache_root, pretrain_minutes, seed, accelerator=accelerator
            )
        cached = None
        if protocol == "cached_features":
            from tvrbench.bench.cached import cached_setup

            cached = cached_setup(first_dm, clip, start, cache_root, torch_device, seed)
        measure = {
            "bootstrap_samples": bootstrap_samples,
            "gallery_sizes": list(gallery_sizes),
            "latency_repeats": latency_repeats,
            "latency_warmup": latency_warmup,
            "gallery_repeats": gallery_repeats,
            "gallery_max_mb": gallery_max_mb,
            "matmul_gflops_per_s": env.get("matmul_gflops_per_s"),
            "seed": seed,
            "postproc": postproc_settings,
        }
        if settings.kind != "none":
            _run_as_jobs(
                settings,
                [spec_for(m, s, start) for m, s in pending],
                run_dir,
                device=device,
                measure=measure,
                checkpoints=checkpoints or {},
                stress=stress_settings,
                shared=shared,
                wait=not no_wait,
            )
            if no_wait:
                print(f"submitted; collect with the same command (run: {run_dir})")
                return run_dir
            pending = []
        from tvrbench.bench.method import run_method
        from tvrbench.train import instantiate

        for m, s in pending:
            record = run_method(
                spec_for(m, s, start),
                run_dir,
                torch_device,
                measure,
                instantiate=instantiate,
                datamodule_for=shared.share,
                given_checkpoint=(checkpoints or {}).get(m),
                cached=cached,
                stress=stress_settings,
            )
            path = write_record(run_dir, record)
            status = f"SKIPPED: {record['skipped']}" if record.get("skipped") else "done"
            print(f"[{m}/seed{s}] {status}: {path.relative_to(run_dir)}")
        shared.write_data_files(run_dir)
    if stress_settings is not None:
        _complete_stress(run_dir, method_names, seed_values, stress_settings, torch_device, shared)
    test_data = shared.test_dataset(spec_for(method_names[0], seed_values[0], clip_checkpoint))
    write_outputs(run_dir, method_names, seed_values, config, env, synthetic, test_data)
    return run_dir


def _run_as_jobs(
    settings: LauncherSettings,
    specs: list,
    run_dir: Path,
    *,
    device: str,
    measure: dict[str, Any],
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
    parser.add_function_arguments(run_bench)
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
        run_bench(**kwargs)
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
