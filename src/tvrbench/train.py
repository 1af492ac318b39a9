"""``tvrbench fit|validate|test``: Lightning's own CLI over every method and the DiDeMo DataModule.

Configs compose: ``tvrbench fit --config configs/method/glccl.yaml --config
configs/data/synthetic.yaml --config configs/trainer/cpu.yaml``. Any method (the
:class:`~tvrbench.retrieval.RetrievalModule`, or a subclass, with its ``head``) is chosen by its
``class_path``; the data config owns ``max_words`` / ``max_frames``, and they reach the head (its
word/frame tables and positions) as :func:`tvrbench.methods.place_data_shape` places them. CPU,
GPU, one process or DDP are trainer settings (``--trainer.accelerator``, ``--trainer.devices``,
``--trainer.strategy ddp``, ``--trainer.num_nodes``), no code changes.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any, Literal


def lightning_cli(args: list[str] | dict[str, Any], run: bool):
    """The one LightningCLI of the project: any method (a
    :class:`~tvrbench.retrieval.RetrievalModule` subclass) and any DataModule by ``class_path``
    (:class:`~tvrbench.data.datamodule.DiDeMoDataModule` for videos or
    :class:`~tvrbench.features.CachedFeatureDataModule` for the fast cached-feature protocol).

    ``args``: command-line arguments (``["fit", "--config", ...]``, with ``run=True``) or a
    config dict ``{seed_everything, model, data, trainer}`` (``run=False``: instantiate only).
    """
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from tvrbench.retrieval import RetrievalModule

    # The arguments are handed over as `args`; nothing is mixed up with sys.argv here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    extra: dict[str, Any] = (
        {"save_config_kwargs": {"overwrite": True}} if run else {"save_config_callback": None}
    )
    from tvrbench.precision import FLOAT32_MATMUL_PRECISIONS, set_float32_precision

    class TvrbenchCLI(LightningCLI):
        """LightningCLI + ``--float32_matmul_precision`` (``highest`` by default: float32
        means float32, not TF32, on Ampere/Hopper), set before anything is built; the data's
        ``max_words`` / ``max_frames`` placed in the model config (:func:`place_data_shape_in`);
        the head's configuration recorded among the module's hyperparameters."""

        def add_arguments_to_parser(self, parser) -> None:
            parser.add_argument(
                "--float32_matmul_precision",
                type=Literal[FLOAT32_MATMUL_PRECISIONS],  # type: ignore[valid-type]
                default="highest",
                help="torch.set_float32_matmul_precision (TF32 allowed unless highest)",
            )

        def before_instantiate_classes(self) -> None:
            config = self.config[self.subcommand] if self.subcommand else self.config
            set_float32_precision(config["float32_matmul_precision"])
            place_data_shape_in(config)

        def after_instantiate_classes(self) -> None:
            # The module keeps no head factory among its hyperparameters (code, not data); the
            # head's configuration is data: checkpoints record the head they were trained with,
            # and `tvrbench test --ckpt_path` rebuilds the model from them.
            config = self.config[self.subcommand] if self.subcommand else self.config
            head = config.get("model.init_args.head")
            if head is not None and self.model is not None:
                self.model.hparams["head"] = head.as_dict()

    return TvrbenchCLI(
        RetrievalModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        run=run,
        auto_configure_optimizers=False,
        **extra,
    )


def place_data_shape_in(config: Any) -> None:
    """Set the data's ``max_words`` / ``max_frames`` in a parsed LightningCLI config (a
    jsonargparse Namespace with ``model`` and ``data``) where the method takes them, as
    :func:`tvrbench.methods.place_data_shape` decides (in the head's ``init_args``, usually). A
    data config without them (cached features) leaves the model as configured."""
    from tvrbench.methods import place_data_shape

    data_args = config.get("data.init_args")
    if config.get("model") is None or data_args is None:
        return
    shape = {key: data_args.get(key) for key in ("max_words", "max_frames")}
    placed = place_data_shape(config.model.as_dict(), **shape)
    sections = {"model.init_args": placed.get("init_args") or {}}
    head = sections["model.init_args"].get("head")
    if isinstance(head, dict):
        sections["model.init_args.head.init_args"] = head.get("init_args") or {}
    for prefix, args in sections.items():
        for key in shape:
            if key in args:
                config[f"{prefix}.{key}"] = args[key]


def instantiate(config: dict[str, Any]):
    """``{seed_everything, model, data, trainer}`` → ``(model, datamodule, trainer)``, seeded
    before the model is built, exactly as ``tvrbench fit --config <that config>`` would."""
    cli = lightning_cli(config, run=False)
    return cli.model, cli.datamodule, cli.trainer


def known_error(err: BaseException) -> BaseException | None:
    """The user-facing error behind ``err`` (jsonargparse wraps errors raised while
    instantiating classes): missing weights, bad annotations, unusable data; else None."""
    from tvrbench.backbone import BackboneNotFoundError
    from tvrbench.data.annotations import AnnotationError
    from tvrbench.data.datamodule import DataSetupError

    return _cause_of_type(err, (BackboneNotFoundError, AnnotationError, DataSetupError))


def _run(subcommand: str, argv: list[str]) -> int:
    try:
        lightning_cli([subcommand, *argv], run=True)
    except Exception as err:
        known = known_error(err)
        if known is None:
            raise
        print(f"tvrbench {subcommand}: {known}", file=sys.stderr)
        return 2
    return 0


def _cause_of_type(err: BaseException, types: tuple[type[BaseException], ...]):
    """The first exception of one of ``types`` in ``err``'s cause/context chain, or None."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def fit_main(argv: list[str]) -> int:
    """Train, selecting the checkpoint on validation R@1 (configs/trainer/*.yaml)."""
    return _run("fit", argv)


def validate_main(argv: list[str]) -> int:
    """Evaluate on the validation split."""
    return _run("validate", argv)


def test_main(argv: list[str]) -> int:
    """Evaluate on the test split, overall and per length bucket."""
    return _run("test", argv)
