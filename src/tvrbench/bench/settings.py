"""Typed settings of a benchmark run: what the user gives (:class:`BenchConfig`, the command line
and ``configs/bench/*.yaml``) and what the run resolves it to (:class:`ResolvedBench`).

``BenchConfig`` holds exactly the ``tvrbench bench`` options (jsonargparse parses the dataclass,
so every option is a flag: ``--seeds 3``, ``--injected_lengths_s [0,60]``, ``--launcher.kind
slurm``). :func:`resolve` turns it into one frozen :class:`ResolvedBench` — methods and seeds as
lists, the recipe, the data and trainer configs, and the settings of each part of the run
(:class:`~tvrbench.bench.launch.LauncherSettings`,
:class:`~tvrbench.bench.postproc.PostprocSettings`,
:class:`~tvrbench.bench.stress.StressSettings`,
:class:`~tvrbench.bench.measure.MeasureSettings`) — before any work, so a bad setting fails in
one line up front. Every consumer reads the resolved object; nothing is resolved twice. Each
value has one owner: the data config owns ``max_words`` / ``max_frames`` (they reach the
methods through :func:`tvrbench.methods.place_data_shape`), the recipe owns the optimiser
values, the trainer config owns the precision.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvrbench.bench.config import (
    PROTOCOLS,
    BenchConfigError,
    Recipe,
    default_run_name,
    load_recipe,
    resolve_recipe_name,
    section,
    seed_list,
    split_methods,
)
from tvrbench.bench.launch import LauncherSettings, check_launch, slurm_trainer_layout
from tvrbench.bench.measure import DEFAULT_GALLERY_SIZES, MeasureSettings
from tvrbench.bench.postproc import PostprocSettings
from tvrbench.bench.stress import StressSettings
from tvrbench.methods import DEFAULT_METHODS

DEFAULT_POSTPROC = ("none", "dsl", "qbnorm")


@dataclass(frozen=True)
class BenchConfig:
    """The options of ``tvrbench bench`` (``configs/bench/*.yaml``).

    Args:
        didemo_root: folder with DiDeMo's ``{split}_data.json`` + ``{split}_list.txt``; None runs
            the built-in synthetic DiDeMo-format data (generated once under ``cache_dir``).
        synth_videos: size of the synthetic dataset (all splits).
        clip: ``"tiny"``, a ``save_pretrained`` folder or a hub id (model and tokenizer).
        clip_checkpoint: a CLIP state dict every method starts from (overrides ``pretrain``).
        methods: names in ``method_config_dir`` (a list or ``"a,b"``).
        method_config_dir: the folder of the method configs (:mod:`tvrbench.methods`).
        recipe: ``auto`` (``tiny`` for the tiny CLIP, ``shared`` otherwise), ``tiny``,
            ``shared`` or ``published`` (``recipe_dir/<name>.yaml``; SPEC §2.7).
        recipe_dir: the folder of the recipes.
        seeds: a count (seeds ``seed, seed+1, …``) or a list; every method trains once per seed.
        seed: base seed; also seeds the synthetic data and the tiny-CLIP pretraining.
        data, trainer: the data config and the trainer config (a YAML path or inline).
        data_overrides, trainer_overrides, model_overrides: applied last to every run's
            ``data.init_args``, ``trainer`` and ``model.init_args`` (merged: ``{head: {init_args:
            {tau: 5}}}`` changes one argument of the method's head).
        protocol: ``finetune`` or ``cached_features`` (FAST PROTOCOL).
        device: ``auto``, ``cpu`` or ``cuda[:i]``: training (the trainer's accelerator) and
            every measurement (one device).
        out_dir, run_name: results go to ``<out_dir>/<run_name>`` (default: from the hash).
        cache_dir: root of tvrbench's caches (frames, synthetic data, pretrained tiny CLIP,
            features); default ``~/.cache/tvrbench``.
        checkpoints: ``{method: path}`` Lightning checkpoints to test instead of training.
        pretrain: pretrain the tiny CLIP on the training split first (tiny CLIP only).
        pretrain_minutes: the tiny CLIP's pretraining budget.
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

    didemo_root: str | None = None
    synth_videos: int = 4500
    clip: str = "tiny"
    clip_checkpoint: str | None = None
    methods: list[str] | str = field(default_factory=lambda: list(DEFAULT_METHODS))
    method_config_dir: str = "configs/method"
    recipe: str = "auto"
    recipe_dir: str = "configs/recipe"
    seeds: int | list[int] = 1
    seed: int = 0
    data: str | dict[str, Any] = "configs/data/synthetic.yaml"
    trainer: str | dict[str, Any] = "configs/trainer/cpu.yaml"
    data_overrides: dict[str, Any] | None = None
    trainer_overrides: dict[str, Any] | None = None
    model_overrides: dict[str, Any] | None = None
    protocol: str = "finetune"
    device: str = "auto"
    out_dir: str = "outputs/bench-didemo"
    run_name: str | None = None
    cache_dir: str | None = None
    checkpoints: dict[str, str] | None = None
    pretrain: bool = True
    pretrain_minutes: float = 2.0
    bootstrap_samples: int = 1000
    gallery_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_GALLERY_SIZES))
    gallery_repeats: int = 3
    gallery_max_mb: float = 1024.0
    latency_repeats: int = 20
    latency_warmup: int = 3
    stress: bool = True
    injected_lengths_s: list[float] | None = None
    distractor_split: str = "val"
    placement: str = "random"
    stress_gallery: int | None = None
    postproc: list[str] = field(default_factory=lambda: list(DEFAULT_POSTPROC))
    bank_max_queries: int | None = 1000
    launcher: LauncherSettings | str = "none"
    no_wait: bool = False
    float32_matmul_precision: str = "highest"

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> BenchConfig:
        """The config a run recorded (results.json ``config``; resolved values such as the
        method list stay as recorded, derived keys such as ``recipe_config`` are left out)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    @property
    def synthetic(self) -> bool:
        return self.didemo_root is None

    @property
    def cache_root(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        return Path.home() / ".cache" / "tvrbench"


@dataclass(frozen=True)
class ResolvedBench:
    """A :class:`BenchConfig` resolved once, before any work (:func:`resolve`)."""

    config: BenchConfig
    methods: list[str]
    seeds: list[int]
    recipe: Recipe
    data: dict[str, Any]  # {"class_path", "init_args"}
    trainer: dict[str, Any]  # the trainer config's trainer section
    trainer_overrides: dict[str, Any]  # the config's, plus a SLURM job's device layout
    launcher: LauncherSettings
    postproc: PostprocSettings | None  # None: only `none`
    stress: StressSettings | None  # None: the controlled-length protocol is off

    @property
    def synthetic(self) -> bool:
        return self.config.synthetic

    def record(self) -> dict[str, Any]:
        """The run's settings as results.json records them (``config``): every option with
        its resolved value, and the recipe file's values (``recipe_config``)."""
        out = dataclasses.asdict(self.config)
        out.update(
            methods=list(self.methods),
            seeds=list(self.seeds),
            recipe=self.recipe.name,
            data=self.data,
            trainer=self.trainer,
            recipe_config=dataclasses.asdict(self.recipe),
            launcher=dataclasses.asdict(self.launcher),
            # As given (None stays None: the run-name hash of existing runs is unchanged), or
            # with a SLURM job's device layout added.
            trainer_overrides=self.trainer_overrides or self.config.trainer_overrides,
            postproc=self.postproc.methods if self.postproc else ["none"],
        )
        if self.stress is not None:
            out["injected_lengths_s"] = list(self.stress.injected_lengths_s)
        return out

    def run_dir(self) -> Path:
        """``<out_dir>/<run_name>``; the name defaults to a hash of the settings that change
        results, so the same command resumes the same folder."""
        name = self.config.run_name or default_run_name(self.record())
        return Path(self.config.out_dir) / name

    def measure_settings(self, matmul_gflops_per_s: float | None) -> MeasureSettings:
        """What every tested module's measurement uses (``matmul_gflops_per_s``: the measuring
        device's dense matmul rate, the denominator of the fraction-of-matmul column)."""
        c = self.config
        return MeasureSettings(
            bootstrap_samples=c.bootstrap_samples,
            gallery_sizes=list(c.gallery_sizes),
            latency_repeats=c.latency_repeats,
            latency_warmup=c.latency_warmup,
            gallery_repeats=c.gallery_repeats,
            gallery_max_mb=c.gallery_max_mb,
            matmul_gflops_per_s=matmul_gflops_per_s,
            seed=c.seed,
            postproc=self.postproc,
        )


def postproc_settings(config: BenchConfig) -> PostprocSettings | None:
    """The run's post-processings (None: only ``none``); a bad name is a one-line error."""
    from tvrbench.postproc import PostprocError

    methods = config.postproc
    try:
        settings = PostprocSettings(
            methods=[methods] if isinstance(methods, str) else list(methods),
            bank_max_queries=config.bank_max_queries,
            seed=config.seed,
        )
    except PostprocError as err:
        raise BenchConfigError(str(err)) from err
    return settings if settings.methods != ["none"] else None


def stress_settings(config: BenchConfig) -> StressSettings:
    """The controlled-length protocol's settings (SPEC §6): the injected lengths (default: the
    data's set), distractors, placement, and the measurement settings it shares with the test."""
    lengths = config.injected_lengths_s or StressSettings.default_lengths(config.synthetic)
    return StressSettings(
        injected_lengths_s=[float(t) for t in lengths],
        distractor_split=config.distractor_split,
        placement=config.placement,
        seed=config.seed,
        gallery=config.stress_gallery,
        bootstrap_samples=config.bootstrap_samples,
        latency_repeats=config.latency_repeats,
        latency_warmup=config.latency_warmup,
        postproc=postproc_settings(config),
    )


def resolve(config: BenchConfig) -> ResolvedBench:
    """Check and resolve every setting (one-line :class:`BenchConfigError` on a bad one)."""
    launcher = LauncherSettings.from_config(config.launcher)
    if config.protocol not in PROTOCOLS:
        raise BenchConfigError(
            f"protocol: {config.protocol!r} is not one of {', '.join(PROTOCOLS)}"
        )
    check_launch(launcher, config.protocol, config.no_wait)
    recipe = load_recipe(resolve_recipe_name(config.recipe, config.clip), config.recipe_dir)
    data = section(config.data, "data", "data config")
    if "class_path" not in data:
        raise BenchConfigError(
            f"data config {config.data}: expected `data: {{class_path, init_args}}`"
        )
    trainer = section(config.trainer, "trainer", "trainer config")
    trainer_overrides = dict(config.trainer_overrides or {})
    if launcher.kind == "slurm":
        # Lightning in a job must use exactly what SLURM allocated (and the hash says so).
        trainer_overrides.update(slurm_trainer_layout(launcher, {**trainer, **trainer_overrides}))
    return ResolvedBench(
        config=config,
        methods=split_methods(config.methods),
        seeds=seed_list(config.seeds, config.seed),
        recipe=recipe,
        data=data,
        trainer=trainer,
        trainer_overrides=trainer_overrides,
        launcher=launcher,
        postproc=postproc_settings(config),
        stress=stress_settings(config) if config.stress else None,
    )
