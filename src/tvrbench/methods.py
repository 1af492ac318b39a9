"""The methods factory: a method's name → its config file, its module class, a built module.

A method is ``configs/method/<name>.yaml`` (the tiny same-budget recipe) and, for real CLIP,
``<name>_published.yaml``; each holds a ``model: {class_path, init_args}`` section naming a
:class:`~tvrbench.retrieval.RetrievalModule` (the shared one, or a subclass where the module itself
differs) whose ``init_args`` name the method's head, ``head: {class_path, init_args}``; optionally
``trainer`` / ``data`` sections the published recipe applies. The benchmark
(:mod:`tvrbench.bench.config`) and the benchmark scripts (``benchmarks/scoring.py``,
``benchmarks/published_efficiency.py``, ``benchmarks/train_step.py``,
``benchmarks/gpu_check.py``) find and build methods only through
this module, so a method added as one file + one config is picked up everywhere by its name.

>>> from pathlib import Path
>>> import tempfile
>>> folder = Path(tempfile.mkdtemp())
>>> _ = (folder / "a.yaml").write_text("model: {class_path: x.A}")
>>> _ = (folder / "a_published.yaml").write_text("model: {class_path: x.A}")
>>> default_methods(folder)
['a']
>>> load_method("b", folder)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
...
MethodConfigError: method b: no config .../b.yaml (methods there: a)
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tvrbench.retrieval import RetrievalHead, RetrievalModule

#: Where the method configs live, relative to the repository root (the working directory of
#: ``make`` targets and of the bench's ``method_config_dir`` default).
CONFIG_DIR = Path("configs") / "method"
#: The benchmark's methods and their order in every table and figure (SPEC §1); any other
#: config follows alphabetically.
DEFAULT_METHODS = ("meanp", "xpool", "centerclip", "xclip", "glscl", "glccl")
#: ``{name}`` → the method file of a recipe (``configs/recipe/<recipe>.yaml``'s ``method_file``).
TINY_METHOD_FILE = "{name}.yaml"


class MethodConfigError(ValueError):
    """A method name, config file or class path is unusable (the message names it)."""


@dataclass(frozen=True)
class MethodConfig:
    """One method file, read: the module to build and the sections a recipe may apply."""

    name: str
    path: Path
    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)
    trainer: dict[str, Any] = field(default_factory=dict)  # the published recipe's trainer
    data: dict[str, Any] = field(default_factory=dict)  # ... and data init_args

    def model(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` (a copy: LightningCLI's ``model`` section)."""
        return {"class_path": self.class_path, "init_args": copy.deepcopy(self.init_args)}


# ------------------------------------------------------------------------------ the names


def split_names(methods: str | Iterable[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` → ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    items = [methods] if isinstance(methods, str) else list(methods)
    return list(
        dict.fromkeys(n.strip() for item in items for n in str(item).split(",") if n.strip())
    )


def config_names(config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """Stems of the ``*.yaml`` files in ``config_dir``, sorted."""
    return sorted(p.stem for p in Path(config_dir).glob("*.yaml"))


def method_order(names: Iterable[str]) -> list[str]:
    """``names`` in :data:`DEFAULT_METHODS` order, any other name after them alphabetically."""
    rank = {name: i for i, name in enumerate(DEFAULT_METHODS)}
    return sorted(names, key=lambda n: (rank.get(n, len(rank)), n))


def default_methods(config_dir: str | Path = CONFIG_DIR) -> list[str]:
    """Every method of ``config_dir`` except variants — a config named ``<other>_<suffix>``
    (``meanp_published``: another recipe; ``glccl_no_csc``: an ablation; name them to run
    them) — in :func:`method_order`."""
    names = config_names(config_dir)
    bases = [n for n in names if not any(n.startswith(o + "_") for o in names if o != n)]
    return method_order(bases)


def resolve_methods(
    spec: str | Iterable[str] | None, config_dir: str | Path = CONFIG_DIR
) -> tuple[list[str], list[str]]:
    """A ``--methods`` value (None or empty: :func:`default_methods`) → (the names in the order
    given, the names without a config in ``config_dir``)."""
    names = split_names(spec) if spec else []
    if not names:
        return default_methods(config_dir), []
    known = set(config_names(config_dir))
    return names, [n for n in names if n not in known]


def add_method_options(parser: argparse.ArgumentParser, config_dir: str | Path) -> None:
    """A benchmark script's ``--methods`` and ``--config-dir`` (read back with
    :func:`methods_from_options`)."""
    parser.add_argument(
        "--methods",
        default=None,
        help="NAME[,NAME...]: configs in --config-dir (default: every config but variants)",
    )
    parser.add_argument("--config-dir", default=str(config_dir), help="folder of the method YAMLs")


def methods_from_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The methods ``--methods`` names (default: :func:`default_methods` of ``--config-dir``);
    an unknown name is the parser's one-line error, listing the configs there."""
    config_dir = Path(args.config_dir)
    methods, unknown = resolve_methods(args.methods, config_dir)
    if unknown or not methods:
        known = ", ".join(config_names(config_dir)) or "none"
        parser.error(
            f"unknown method(s) {unknown}: no such config in {config_dir} (there: {known})"
        )
    return methods


# ------------------------------------------------------------------------------ the configs


def load_method(
    name: str, config_dir: str | Path = CONFIG_DIR, method_file: str = TINY_METHOD_FILE
) -> MethodConfig:
    """Read method ``name``'s config (``method_file`` formatted with the name: a recipe's file).

    Raises:
        MethodConfigError: no such file (the message lists the methods there), not YAML, or no
            ``model: {class_path, ...}`` section.
    """
    import yaml

    directory = Path(config_dir)
    path = directory / method_file.format(name=name)
    if not path.is_file():
        known = ", ".join(default_methods(directory)) or "none"
        raise MethodConfigError(f"method {name}: no config {path} (methods there: {known})")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0]
        raise MethodConfigError(f"{path}: not valid YAML ({first})") from err
    model = raw.get("model", raw) if isinstance(raw, dict) else None
    if not isinstance(model, dict) or "class_path" not in model:
        raise MethodConfigError(f"{path}: expected a `model: {{class_path, init_args}}` section")
    data = raw.get("data") or {}
    return MethodConfig(
        name=name,
        path=path,
        class_path=str(model["class_path"]),
        init_args=dict(model.get("init_args") or {}),
        trainer=dict(raw.get("trainer") or {}),
        data=dict(data.get("init_args", data) if isinstance(data, dict) else {}),
    )


def class_of(class_path: str) -> type:
    """Import ``package.module.Class``; a bad path is a one-line :class:`MethodConfigError`."""
    module_name, _, class_name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise MethodConfigError(f"class_path {class_path}: cannot be imported ({err})") from err


def accepted_arguments(cls: type) -> set[str]:
    """Constructor arguments of ``cls``, following ``**kwargs`` up the class hierarchy (a method
    module hands its ``**kwargs`` on to :class:`~tvrbench.retrieval.RetrievalModule`)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    names.discard("self")
    return names


#: Module classes of runs made before heads were injected → their head class (the saved configs
#: of older runs name them; :func:`upgrade_model_config`).
LEGACY_MODULE_HEADS = {
    "baselines.meanp.MeanPModule": "baselines.meanp.MeanPHead",
    "baselines.xpool.XPoolModule": "baselines.xpool.XPoolHead",
    "baselines.xclip.XCLIPModule": "baselines.xclip.XCLIPHead",
    "baselines.glscl.GLSCLModule": "baselines.glscl.GLSCLHead",
    "tvrbench.glccl.GLCCLModule": "tvrbench.glccl.GLCCLHead",
}
RETRIEVAL_MODULE = "tvrbench.retrieval.RetrievalModule"


def upgrade_model_config(model: dict[str, Any]) -> dict[str, Any]:
    """A model section of an older run (a per-method module class taking its head's arguments)
    as today's ``RetrievalModule`` + ``head`` section: the arguments the shared module takes
    stay, the rest become the head's. Parameter names are unchanged, so the run's checkpoints
    load into the result. Any other section is returned as it is (a copy)."""
    out = copy.deepcopy(model)
    head_path = LEGACY_MODULE_HEADS.get(str(out.get("class_path")))
    if head_path is None:
        return out
    shared = accepted_arguments(class_of(RETRIEVAL_MODULE))
    args = out.get("init_args") or {}
    head_args = {k: v for k, v in args.items() if k not in shared}
    module_args = {k: v for k, v in args.items() if k in shared and k != "head"}
    module_args["head"] = {"class_path": head_path, "init_args": head_args}
    return {"class_path": RETRIEVAL_MODULE, "init_args": module_args}


def head_section(model: dict[str, Any]) -> dict[str, Any] | None:
    """The ``head: {class_path, init_args}`` of a model section, or None where the config names
    no head (a module subclass with a default head)."""
    head = (model.get("init_args") or {}).get("head")
    return head if isinstance(head, dict) and "class_path" in head else None


def head_factory(head: dict[str, Any]) -> Callable[[int], RetrievalHead]:
    """``{class_path, init_args}`` → the factory :class:`~tvrbench.retrieval.RetrievalModule`
    calls with the embedding width D (what LightningCLI makes of the same section)."""
    return functools.partial(class_of(head["class_path"]), **(head.get("init_args") or {}))


def method_attribute(class_path: str, init_args: dict[str, Any] | None, name: str) -> Any:
    """Class attribute ``name`` (e.g. ``PUBLISHED_DIDEMO_T2V``) of a configured method: the module
    class's where it sets one (a module subclass such as CenterCLIP's, whose head is meanP's),
    else the head class's (``init_args.head``); None where neither sets it or a class cannot be
    imported."""
    model = upgrade_model_config({"class_path": class_path, "init_args": init_args or {}})
    head = head_section(model)
    for path in (model["class_path"], *([head["class_path"]] if head is not None else [])):
        try:
            cls = class_of(path)
        except MethodConfigError:
            return None
        if hasattr(cls, name):
            return getattr(cls, name)
    return None


def place_data_shape(
    model: dict[str, Any], *, max_words: int | None = None, max_frames: int | None = None
) -> dict[str, Any]:
    """The model section with the data's ``max_words`` / ``max_frames`` (the data config owns
    them) set where the method takes them (its word/frame tables and positions): in the head's
    ``init_args`` where the head class takes them, else in the module's where a module class
    takes them; a method without such tables is left as it is. Returns a new dict."""
    out = copy.deepcopy(model)
    head = head_section(out)
    owner = head if head is not None else out
    accepted = accepted_arguments(class_of(owner["class_path"]))
    for key, value in (("max_words", max_words), ("max_frames", max_frames)):
        if value is not None and key in accepted:
            owner.setdefault("init_args", {})[key] = int(value)
    return out


def check_arguments(model: dict[str, Any], where: str | Path) -> None:
    """A one-line :class:`MethodConfigError` naming every ``init_args`` key the module class
    (or, under ``head``, the head class) does not take (``where``: the config it came from)."""
    sections: list[tuple[dict[str, Any], set[str]]] = [(model, set())]
    head = head_section(model)
    if head is not None:
        sections.append((head, {"dim"}))  # the module passes D
    for section, passed in sections:
        accepted = accepted_arguments(class_of(section["class_path"])) - passed
        unknown = sorted(set(section.get("init_args") or {}) - accepted)
        if unknown:
            raise MethodConfigError(
                f"{where}: {section['class_path']} takes no argument {', '.join(unknown)}"
            )


def build_module(model: dict[str, Any]) -> RetrievalModule:
    """``class_path(**init_args)`` of a model section, its ``head`` section made the factory
    the module calls (seed before calling: heads initialise from the global generator)."""
    args = dict(model.get("init_args") or {})
    head = head_section(model)
    if head is not None:
        args["head"] = head_factory(head)
    return class_of(model["class_path"])(**args)


def create_module(
    name: str,
    config_dir: str | Path = CONFIG_DIR,
    *,
    max_words: int | None = None,
    max_frames: int | None = None,
    **init_args: Any,
) -> RetrievalModule:
    """Method ``name`` built from its tiny-recipe config: ``max_words`` / ``max_frames`` where
    the method takes them (:func:`place_data_shape`), then ``init_args`` on top (module
    arguments: ``clip``, ``clip_checkpoint``, ...).

    Raises:
        MethodConfigError: unknown name, unusable config or an argument the method does not take.
    """
    method = load_method(name, config_dir)
    model = place_data_shape(method.model(), max_words=max_words, max_frames=max_frames)
    model["init_args"].update(init_args)
    check_arguments(model, method.path)
    return build_module(model)


def load_checkpoint_weights(module: Any, path: str | Path) -> None:
    """Load a Lightning checkpoint's weights into ``module`` with ``weights_only=True`` (an
    untrusted file cannot run code); one-line :class:`MethodConfigError` for a missing, unsafe
    or foreign file."""
    import torch

    if not Path(path).is_file():
        raise MethodConfigError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle refuses a non-tensor object: say which
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MethodConfigError(
            f"checkpoint {path}: cannot be loaded with weights_only=True ({first}); only "
            "Lightning checkpoints of tvrbench methods are accepted"
        ) from err
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if state is None:
        raise MethodConfigError(f"checkpoint {path}: not a Lightning checkpoint (no state_dict)")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise MethodConfigError(f"checkpoint {path}: does not fit this method ({first})") from err
