"""The precision story, in one place.

Under ``bf16-mixed`` only the CLIP towers run under the trainer's autocast. Everything after them
— pooling, temporal encoders, GLSCL's decoder, CenterCLIP's k-medoids distances, Gram matrices,
scores, logits and losses — runs in float32 for every method, as the official code of every
method does (its heads run outside any autocast). :class:`~tvrbench.retrieval.RetrievalModule`
enters :func:`float32_region` around every head call and hands the head float32 tensors
(:func:`float32_tensors`), so no head has to remember it.

Process-wide float32 matmul precision (TF32 on Ampere/Hopper) is set explicitly — by every
``tvrbench fit|validate|test`` (``--float32_matmul_precision``, default ``highest``: true
float32) and by the benchmark — with :func:`set_float32_precision`, and recorded
(:func:`precision_flags`) in results.json.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor

#: What results.json states about precision (the README's "Precision" section says the same).
PRECISION_STORY = (
    "CLIP towers under the trainer's autocast (bf16-mixed: bf16 matmuls, float32 weights); "
    "every head (pooling, temporal encoder, decoder, k-medoids, Gram matrices), score, logit "
    "and loss in float32 outside autocast, for every method, as the official code runs them; "
    "evaluation similarities and ranks in float32; float32 matmuls at "
    "float32_matmul_precision (environment; highest = no TF32); latencies timed under the "
    "training precision (latency_precision), FLOPs counted as multiply-adds whatever the dtype"
)

#: Trainer precisions under which the CLIP towers run in autocast, and the autocast dtype.
AUTOCAST_DTYPES = {
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16,
}


def float32_region(device_type: str) -> AbstractContextManager:
    """A region where autocast is off (float32 operands stay float32) on ``device_type``."""
    return torch.autocast(device_type, enabled=False)


def float32_tensors(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with floating values in float32; masks and indices unchanged."""
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


def tower_autocast(precision: object, device_type: str) -> AbstractContextManager:
    """The autocast the trainer's ``precision`` puts the CLIP towers under, on ``device_type``
    (disabled for ``32-true`` and other full-precision settings): measurements of latency run
    under it so they describe the setting that produced the accuracy."""
    dtype = AUTOCAST_DTYPES.get(str(precision))
    if dtype is None:
        return torch.autocast(device_type, enabled=False)
    return torch.autocast(device_type, dtype=dtype)


def precision_label(precision: object) -> str:
    """How a measurement ran: ``"bf16 towers, fp32 heads"`` or ``"fp32"``."""
    dtype = AUTOCAST_DTYPES.get(str(precision))
    if dtype is None:
        return "fp32"
    return f"{str(dtype).replace('torch.', '').replace('bfloat16', 'bf16')} towers, fp32 heads"


FLOAT32_MATMUL_PRECISIONS = ("highest", "high", "medium")


def precision_flags() -> dict[str, Any]:
    """Process-wide float32 precision settings that change results on Ampere/Hopper GPUs:
    ``float32_matmul_precision`` (``highest`` = true float32, ``high``/``medium`` allow
    TF32/bf16 passes), and the TF32 switches of cuBLAS and cuDNN."""
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
    }


def set_float32_precision(float32_matmul_precision: str) -> dict[str, Any]:
    """Set the float32 matmul precision (``highest | high | medium``) and cuDNN's TF32 switch to
    match it (TF32 only when not ``highest``); returns :func:`precision_flags`."""
    if float32_matmul_precision not in FLOAT32_MATMUL_PRECISIONS:
        raise ValueError(
            f"float32_matmul_precision must be one of {', '.join(FLOAT32_MATMUL_PRECISIONS)}, "
            f"got {float32_matmul_precision!r}"
        )
    torch.set_float32_matmul_precision(float32_matmul_precision)
    torch.backends.cudnn.allow_tf32 = float32_matmul_precision != "highest"
    return precision_flags()
