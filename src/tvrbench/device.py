"""The device a command runs on: ``auto`` (CUDA when available), ``cpu`` or ``cuda``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``/``"cuda"``/``"cuda:1"`` as given.

    Raises:
        ValueError: CUDA requested but not available.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    return resolved


def trainer_devices(device: torch.device) -> tuple[str, int | list[int]]:
    """Lightning's ``(accelerator, devices)`` for exactly ``device``: ``cuda:1`` is ``("gpu",
    [1])`` — ``devices=1`` would mean the first GPU, not the one asked for."""
    if device.type == "cuda":
        return "gpu", [device.index if device.index is not None else torch.cuda.current_device()]
    return "cpu", 1


def evaluation_trainer(
    device: torch.device,
    precision: Any = "32-true",
    progress: bool = False,
    callbacks: Sequence[Any] = (),
):
    """A one-device Lightning trainer for ``trainer.test`` on ``device`` (no logger, no
    checkpoints): the controlled-length evaluations and the QB-Norm bank encoding."""
    import lightning as L

    accelerator, devices = trainer_devices(device)
    return L.Trainer(
        accelerator=accelerator,
        devices=devices,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=list(callbacks),
    )
