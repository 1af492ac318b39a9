"""``tvrbench fit|validate|test``: Lightning's own CLI over every method and the DiDeMo DataModule.

Configs compose: ``tvrbench fit --config configs/method/glccl.yaml --config
configs/data/synthetic.yaml --config configs/trainer/cpu.yaml``. Any method (a
:class:`~tvrbench.retrieval.RetrievalModule` subclass) is chosen by its ``class_path``; CPU, GPU,
one process or DDP are trainer settings (``--trainer.accelerator``, ``--trainer.devices``,
``--trainer.strategy ddp``, ``--trainer.num_nodes``), no code changes.
"""

from __future__ import annotations

import sys
import warnings


def _run(subcommand: str, argv: list[str]) -> int:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from tvrbench.backbone import BackboneNotFoundError
    from tvrbench.data.annotations import AnnotationError
    from tvrbench.data.datamodule import DataSetupError
    from tvrbench.retrieval import RetrievalModule

    # `tvrbench fit ...` hands its own arguments over as `args`; nothing is mixed up here.
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # Any DataModule by class_path: tvrbench.data.datamodule.DiDeMoDataModule (videos) or
    # tvrbench.features.CachedFeatureDataModule (the fast cached-feature protocol).
    try:
        LightningCLI(
            RetrievalModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=[subcommand, *argv],
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
        )
    except Exception as err:  # jsonargparse wraps errors raised while instantiating classes
        known = _cause_of_type(err, (BackboneNotFoundError, AnnotationError, DataSetupError))
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
