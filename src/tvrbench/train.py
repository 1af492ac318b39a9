"""``tvrbench fit|validate|test``: Lightning's own CLI over every method and the DiDeMo DataModule.

Configs compose: ``tvrbench fit --config configs/method/glccl.yaml --config
configs/data/synthetic.yaml --config configs/trainer/cpu.yaml``. Any method (a
:class:`~tvrbench.retrieval.RetrievalModule` subclass) is chosen by its ``class_path``; CPU, GPU,
one process or DDP are trainer settings (``--trainer.accelerator``, ``--trainer.devices``,
``--trainer.strategy ddp``, ``--trainer.num_nodes``), no code changes.
"""

from __future__ import annotations


def _run(subcommand: str, argv: list[str]) -> int:
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from tvrbench.retrieval import RetrievalModule

    # Any DataModule by class_path: tvrbench.data.datamodule.DiDeMoDataModule (videos) or
    # tvrbench.features.CachedFeatureDataModule (the fast cached-feature protocol).
    LightningCLI(
        RetrievalModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=[subcommand, *argv],
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


def fit_main(argv: list[str]) -> int:
    """Train, selecting the checkpoint on validation R@1 (configs/trainer/*.yaml)."""
    return _run("fit", argv)


def validate_main(argv: list[str]) -> int:
    """Evaluate on the validation split."""
    return _run("validate", argv)


def test_main(argv: list[str]) -> int:
    """Evaluate on the test split, overall and per length bucket."""
    return _run("test", argv)
