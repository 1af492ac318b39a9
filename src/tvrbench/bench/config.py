"""Configuration resolution of a benchmark run: one place that turns the bench config into the
``tvrbench fit`` config (model / data / trainer) of every (method, seed).

A bench config names a data config (``configs/data/*.yaml``), a trainer config
(``configs/trainer/*.yaml``), a recipe (``configs/recipe/*.yaml``) and method names
(``configs/method/<name>[_published].yaml``). For each method and seed the layers are merged,
lowest first:

1. the data config, the trainer config and the method file's ``model`` section;
2. the recipe: its optimiser values (``model``), ``trainer`` and ``data`` values; under the
   ``published`` recipe also the method file's own ``trainer`` / ``data`` sections;
3. what the bench decides: the data root (DiDeMo or the synthetic set), the CLIP (model and
   tokenizer), the starting checkpoint, the method's word/frame tables from the data, the device,
   the seed, the checkpoint folder and logger of the run;
4. ``model_overrides`` / ``data_overrides`` / ``trainer_overrides`` from the bench config or the
   command line (JSON), last.

The result is a plain LightningCLI config dict, instantiated by :func:`tvrbench.train.instantiate`
— the same parser ``tvrbench fit`` uses — and saved as ``configs/<method>-seed<k>.yaml`` in the
run folder, so ``tvrbench fit --config`` that file reproduces the training.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvrbench.atomic import json_default
from tvrbench.methods import (
    MethodConfigError,
    accepted_arguments,
    check_arguments,
    class_of,
    load_method,
    place_data_shape,
    split_names,
)

RECIPES = ("auto", "tiny", "shared", "published")
PROTOCOLS = ("finetune", "cached_features")
#: Above this CLIP learning rate a real checkpoint's alignment is destroyed (SPEC §2.7).
MAX_REAL_CLIP_LR = 1e-5
#: Bench settings that do not change results (left out of the run-name hash).
NOT_HASHED = {
    "out_dir",
    "run_name",
    "methods",
    "method_config_dir",
    "seeds",
    "stress",
    "injected_lengths_s",
    "postproc",
    "bank_max_queries",
    "launcher",  # where units run; a SLURM job's devices enter through trainer_overrides
    "no_wait",
}
OPTIMIZER_KEYS = ("lr", "backbone_lr", "weight_decay", "betas", "eps", "warmup_frac")
TRAINER_KEYS = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "precision",
    "max_epochs",
    "max_time",
    "gradient_clip_val",
    "accumulate_grad_batches",
    "val_check_interval",
)


#: Lightning's precision when a trainer config names none.
DEFAULT_PRECISION = "32-true"


def trainer_precision(trainer: Mapping[str, Any]) -> str:
    """The precision a trainer config trains with (the trainer config owns it)."""
    return str(trainer.get("precision") or DEFAULT_PRECISION)


class BenchConfigError(MethodConfigError):
    """The benchmark configuration is unusable (message names the setting and the problem)."""


# ------------------------------------------------------------------------------ small helpers


def split_methods(methods: list[str] | str) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` → ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    names = split_names(methods)
    if not names:
        raise BenchConfigError("methods: no method given")
    return names


def seed_list(seeds: int | list[int] | str, base_seed: int = 0) -> list[int]:
    """``3`` → ``[base, base+1, base+2]``; ``[0, 5]`` or ``"0,5"`` → as given."""
    if isinstance(seeds, str):
        seeds = [int(s) for s in seeds.split(",") if s.strip()] if "," in seeds else int(seeds)
    if isinstance(seeds, int):
        if seeds < 1:
            raise BenchConfigError(f"seeds: {seeds} (need at least one seed)")
        return [base_seed + i for i in range(seeds)]
    out = list(dict.fromkeys(int(s) for s in seeds))
    if not out:
        raise BenchConfigError("seeds: empty list")
    return out


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML mapping; a missing file or a non-mapping is a one-line :class:`BenchConfigError`."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise BenchConfigError(f"{what} {path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise BenchConfigError(f"{what} {path}: not valid YAML ({err})".splitlines()[0]) from err
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BenchConfigError(f"{what} {path}: expected a mapping at the top level")
    return raw


def section(spec: str | dict[str, Any] | None, key: str, what: str) -> dict[str, Any]:
    """A config section given as a YAML path (holding ``key:``) or inline as a dict."""
    if spec is None:
        return {}
    if isinstance(spec, (str, Path)):
        raw = read_yaml(spec, what)
        return copy.deepcopy(raw.get(key, raw))
    return copy.deepcopy(dict(spec))


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base`` (nested dicts merged, everything else replaced)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the settings that change results (10 hex digits)."""
    hashed = {k: v for k, v in config.items() if k not in NOT_HASHED}
    blob = json.dumps(hashed, sort_keys=True, default=json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def default_run_name(config: dict[str, Any]) -> str:
    """``<data>-<clip>[-cached]-<hash>``: the same command resumes the same folder."""
    data = "didemo" if config.get("didemo_root") else "synthetic"
    clip = Path(str(config.get("clip", "tiny")).rstrip("/")).name.replace(".", "_")
    fast = "-cached" if config.get("protocol") == "cached_features" else ""
    return f"{data}-{clip}{fast}-{config_hash(config)}"


# ----------------------------------------------------------------------------------- methods


@dataclass
class Recipe:
    """A recipe file (``configs/recipe/<name>.yaml``)."""

    name: str
    method_file: str  # e.g. "{name}.yaml" or "{name}_published.yaml"
    model: dict[str, Any]
    trainer: dict[str, Any]
    data: dict[str, Any]
    method_sections: bool  # apply the method file's own trainer/data sections


def resolve_recipe_name(recipe: str, clip: str) -> str:
    """``auto`` → ``tiny`` for the built-in tiny CLIP, ``shared`` for a real one; the tiny
    same-budget recipe is refused for a real checkpoint."""
    if recipe not in RECIPES:
        raise BenchConfigError(f"recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    if recipe == "auto":
        return "tiny" if clip == "tiny" else "shared"
    if recipe == "tiny" and clip != "tiny":
        raise BenchConfigError(
            f"recipe: tiny is the tiny CLIP's same-budget recipe and cannot train clip {clip} "
            "(use recipe: shared or published; SPEC §2.7)"
        )
    return recipe


def load_recipe(name: str, recipe_dir: str | Path) -> Recipe:
    raw = read_yaml(Path(recipe_dir) / f"{name}.yaml", "recipe")
    return Recipe(
        name=name,
        method_file=str(raw.get("method_file", "{name}.yaml")),
        model=dict(raw.get("model") or {}),
        trainer=dict(raw.get("trainer") or {}),
        data=dict(raw.get("data") or {}),
        method_sections=bool(raw.get("method_sections", False)),
    )


@dataclass
class RunSpec:
    """One (method, seed) of a benchmark run, fully resolved."""

    method: str
    seed: int
    recipe: str
    method_file: str
    config: dict[str, Any]  # LightningCLI config: seed_everything, model, data, trainer

    @property
    def key(self) -> str:
        return f"{self.method}/seed{self.seed}"

    def recipe_record(self) -> dict[str, Any]:
        """Every optimiser and trainer value this run uses (results.json, report header)."""
        model = self.config["model"]["init_args"]
        data = self.config["data"]["init_args"]
        trainer = self.config["trainer"]
        return {
            "recipe": self.recipe,
            "method_file": self.method_file,
            **{k: model.get(k) for k in OPTIMIZER_KEYS},
            **{k: trainer.get(k) for k in TRAINER_KEYS},
            # Lightning's default when the trainer config names none: say it, not "–".
            "precision": trainer_precision(trainer),
            "batch_size": data.get("batch_size"),
            **batch_split_record(data.get("batch_size"), trainer),
            "max_words": data.get("max_words"),
            "max_frames": data.get("max_frames"),
            "sample_fps": data.get("sample_fps"),
            "clip_seconds": data.get("clip_seconds"),
        }


@dataclass(frozen=True)
class DeviceLayout:
    """The devices one training runs on, as Lightning resolves the trainer's settings."""

    accelerator: str  # Lightning's accelerator name: "cpu", "cuda", "mps", ...
    devices: int  # devices per node
    num_nodes: int

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def training_layout(trainer_cfg: Mapping[str, Any]) -> DeviceLayout:
    """``accelerator`` / ``devices`` / ``num_nodes`` of a trainer config, resolved exactly as
    Lightning's accelerator connector does (``-1``, ``"auto"``, ``"0,1"``, lists); a value
    Lightning refuses is a one-line :class:`BenchConfigError` carrying Lightning's message."""
    from lightning.fabric.utilities.device_parser import _select_auto_accelerator
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    accelerator = str(trainer_cfg.get("accelerator", "auto") or "auto")
    devices = trainer_cfg.get("devices", "auto")
    devices = "auto" if devices is None else devices
    num_nodes = trainer_cfg.get("num_nodes", 1) or 1
    setting = f"trainer accelerator={accelerator!r} devices={devices!r} num_nodes={num_nodes!r}"
    try:
        if accelerator == "auto":
            accelerator = _select_auto_accelerator()
        elif accelerator == "gpu":
            accelerator = _AcceleratorConnector._choose_gpu_accelerator_backend()
        if accelerator not in AcceleratorRegistry:
            raise ValueError(f"unknown accelerator (Lightning knows {list(AcceleratorRegistry)})")
        accelerator_cls = AcceleratorRegistry[accelerator]["accelerator"]
        if devices == "auto":
            devices = accelerator_cls.auto_device_count()
        parsed = accelerator_cls.parse_devices(devices)
        count = len(accelerator_cls.get_parallel_devices(parsed))
        if not isinstance(num_nodes, int) or num_nodes < 1:
            raise ValueError(f"`num_nodes` must be a positive integer, but got {num_nodes}.")
    except Exception as err:  # Lightning's TypeError / MisconfigurationException / ValueError
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise BenchConfigError(f"{setting}: {first}") from err
    return DeviceLayout(accelerator, count, num_nodes)


def is_distributed(trainer_cfg: dict[str, Any]) -> bool:
    """More than one device once Lightning resolves ``devices`` / ``num_nodes``."""
    return training_layout(trainer_cfg).distributed


def one_device(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """The same trainer on one device (test and measurement): the first of its device list when
    it names GPU ids (``[2, 3]`` → ``[2]``), else one device."""
    out = dict(trainer_cfg)
    devices = trainer_cfg.get("devices")
    first = [devices[0]] if isinstance(devices, (list, tuple)) and devices else 1
    out.update(devices=first, num_nodes=1, strategy="auto")
    return out


def training_world_size(trainer: dict[str, Any]) -> int:
    """Processes a trainer config trains with: devices per node × ``num_nodes``. An explicit
    count or list is taken as given (the host that trains checks it against its devices: a
    SLURM job's node, not the submitting one); ``"auto"``, ``-1`` and strings are resolved by
    Lightning's own parsing here (:func:`training_layout`)."""
    devices = trainer.get("devices", "auto")
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices * nodes
    if isinstance(devices, (list, tuple)) and devices:
        return len(devices) * nodes
    return training_layout(trainer).world_size


def batch_split_record(global_batch_size: int | None, trainer: dict[str, Any]) -> dict[str, Any]:
    """``global_batch_size`` (the contrastive batch), ``world_size`` and
    ``per_device_batch_size`` of a run (records, results.json, the report's recipe table)."""
    world = training_world_size(trainer)
    per_device = global_batch_size // world if global_batch_size and world else None
    return {
        "global_batch_size": global_batch_size,
        "world_size": world,
        "per_device_batch_size": per_device,
    }


def resolve_run(
    method: str,
    seed: int,
    *,
    recipe: Recipe,
    method_config_dir: str | Path,
    data: dict[str, Any],
    trainer: dict[str, Any],
    bench: dict[str, Any],
    overrides: dict[str, dict[str, Any]],
) -> RunSpec:
    """Merge the layers of the module docstring into one LightningCLI config.

    Args:
        data: ``{"class_path", "init_args"}`` of the data config.
        trainer: the trainer config's ``trainer`` section.
        bench: what the bench decides: ``model`` / ``data`` / ``trainer`` dicts (layer 3).
        overrides: ``{"model": ..., "data": ..., "trainer": ...}`` (layer 4).
    """
    mfile = load_method(method, method_config_dir, recipe.method_file)
    model_args = dict(mfile.init_args)
    data_args = dict(data.get("init_args") or {})
    trainer_cfg = dict(trainer)
    model_args.update(recipe.model)
    trainer_cfg.update(recipe.trainer)
    data_args.update(recipe.data)
    if recipe.method_sections:
        trainer_cfg.update(mfile.trainer)
        data_args.update(mfile.data)
    data_args.update(bench.get("data", {}))
    data_args.update(overrides.get("data") or {})
    accepted = accepted_arguments(class_of(mfile.class_path))
    model_args.update({k: v for k, v in bench.get("model", {}).items() if k in accepted})
    # The method's word/frame tables follow the data (GLCCL's L×L matrices, positions).
    model = place_data_shape(
        {"class_path": mfile.class_path, "init_args": model_args},
        max_words=data_args.get("max_words"),
        max_frames=data_args.get("max_frames"),
    )
    # Merged, so that `{head: {init_args: {tau: 5}}}` changes one head argument.
    model["init_args"] = deep_merge(model["init_args"], overrides.get("model") or {})
    check_arguments(model, mfile.path)
    trainer_cfg.update(bench.get("trainer", {}))
    trainer_cfg.update(overrides.get("trainer") or {})
    model_args = model["init_args"]
    clip = str(model_args.get("clip", "tiny"))
    clip_lr = model_args.get("backbone_lr")
    frozen = bool(model_args.get("freeze_backbone", False))
    if clip != "tiny" and clip_lr is not None and float(clip_lr) > MAX_REAL_CLIP_LR and not frozen:
        raise BenchConfigError(
            f"{mfile.path}: backbone_lr {clip_lr} for clip {clip} is above "
            f"{MAX_REAL_CLIP_LR:g}, outside every published recipe (it destroys the pretrained "
            "alignment; SPEC §2.7) — a tiny-CLIP recipe given a real checkpoint?"
        )
    batch = data_args.get("batch_size")
    world = training_world_size(trainer_cfg)
    if isinstance(batch, int) and batch % world:
        raise BenchConfigError(
            f"batch_size {batch} is the global contrastive batch and does not split evenly "
            f"over {world} training processes (devices x num_nodes); use a multiple of {world}"
        )
    config = {
        "seed_everything": seed,
        "model": model,
        "data": {"class_path": data["class_path"], "init_args": data_args},
        "trainer": trainer_cfg,
    }
    return RunSpec(method, seed, recipe.name, str(mfile.path), config)
