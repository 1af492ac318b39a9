"""Memory of a training step: the measured activation figures, the estimate that decides
``activation_checkpointing: auto``, and a peak-memory meter that works on CPU and CUDA.

Activation memory is what autograd keeps between the forward and the backward pass, plus what the
backward pass allocates while it runs. It grows with the per-device batch: for the CLIP towers
about ``frames × per_frame + texts × per_text``. The figures below were measured by
``benchmarks/train_step.py --activations`` (ViT-B/32 architecture with random weights, CPU,
:class:`PeakMemoryMeter`: peak bytes of one forward + backward of a tower at two batch sizes, the
difference divided by the added frames or texts, so parameters and their gradients cancel out).
Other CLIP sizes scale them by ``tokens × width × layers`` of the tower, the terms activations
are proportional to.

Checkpointing (transformers' gradient checkpointing of the CLIP layers, non-reentrant) keeps only
each layer's input and recomputes the layer during the backward pass, so the per-frame figure
drops to the layer inputs plus one layer's activations being recomputed.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

MIB = 1024**2
ActivationCheckpointing = bool | Literal["auto"]

#: ViT-B/32 sizes the measured figures belong to (tokens × width × layers of each tower).
VIT_B32_FRAME_UNITS = 50 * 768 * 12  # 49 patches + class token, width 768, 12 layers
VIT_B32_WORDS = 64  # the text figure is measured at 64 tokens (DiDeMo's max_words)
VIT_B32_TEXT_UNITS = VIT_B32_WORDS * 512 * 12  # width 512, 12 layers


@dataclass(frozen=True)
class ActivationFigures:
    """Activation MiB of one frame and one text (64 tokens) through the ViT-B/32 towers."""

    per_frame_mib: float
    per_text_mib: float


#: Measured on CPU (``benchmarks/train_step.py --activations``, torch 2.13, embeddings frozen;
#: benchmarks/results/activations-cpu.csv): key (autocast dtype or "fp32", checkpointing). CUDA
#: autocast keeps about the same tensors; ``make gpu-check`` measures the real step on a GPU.
MEASURED_ACTIVATIONS: dict[tuple[str, bool], ActivationFigures] = {
    ("bf16", False): ActivationFigures(per_frame_mib=22.07, per_text_mib=18.35),
    ("bf16", True): ActivationFigures(per_frame_mib=3.78, per_text_mib=2.13),
    ("fp32", False): ActivationFigures(per_frame_mib=36.65, per_text_mib=30.79),
    ("fp32", True): ActivationFigures(per_frame_mib=6.14, per_text_mib=4.76),
}
#: fp32 weights, their gradients and AdamW's two moments: bytes per trainable parameter.
TRAINING_BYTES_PER_PARAMETER = 16


def parse_activation_checkpointing(value: Any) -> ActivationCheckpointing:
    """``auto | true | false`` (bools or their spellings) → ``True``, ``False`` or ``"auto"``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("auto", "true", "false"):
        return "auto" if text == "auto" else text == "true"
    raise ValueError(f"activation_checkpointing: {value!r} is not one of auto, true, false")


def precision_key(precision: str | int | None) -> str:
    """Lightning's precision setting → the key of :data:`MEASURED_ACTIVATIONS`: ``"bf16"`` for
    any 16-bit setting (bf16 and fp16 keep activations of the same size), else ``"fp32"``."""
    return "bf16" if "16" in str(precision) else "fp32"


def _units(config: Any, tokens: int) -> int:
    return tokens * int(config.hidden_size) * int(config.num_hidden_layers)


def frame_tokens(vision_config: Any) -> int:
    """Tokens per frame in the vision tower: patches plus the class token."""
    return (int(vision_config.image_size) // int(vision_config.patch_size)) ** 2 + 1


@dataclass(frozen=True)
class StepMemoryEstimate:
    """Estimated memory of one training step on one device, bytes."""

    activation_bytes: int
    parameter_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.activation_bytes + self.parameter_bytes


def estimate_step_memory(
    clip_config: Any,
    per_device_batch: int,
    frames: int,
    words: int,
    precision: str | int | None,
    checkpointing: bool,
    trainable_parameters: int,
    towers_trained: bool = True,
    figures: ActivationFigures | None = None,
) -> StepMemoryEstimate:
    """Memory of one training step: tower activations (the measured figures scaled to this
    CLIP's size, every frame real) + weights, gradients and AdamW state of the trainable
    parameters. Heads' activations are small beside the towers' and are not counted.

    Args:
        clip_config: the ``transformers.CLIPConfig`` (``text_config``, ``vision_config``).
        per_device_batch: videos (= texts) per device and step.
        frames: frames per video (``max_frames``); words: tokens per text (``max_words``).
        precision: the trainer's precision (``"bf16-mixed"``, ``"32-true"``, ...).
        checkpointing: whether the towers are checkpointed.
        trainable_parameters: parameters the optimiser updates.
        towers_trained: False when the backbone is frozen (no tower activations are kept).
        figures: per-frame and per-text MiB at ViT-B/32 (default: :data:`MEASURED_ACTIVATIONS`).
    """
    if figures is None:
        figures = MEASURED_ACTIVATIONS[(precision_key(precision), checkpointing)]
    activation_mib = 0.0
    if towers_trained:
        vision, text = clip_config.vision_config, clip_config.text_config
        frame_scale = _units(vision, frame_tokens(vision)) / VIT_B32_FRAME_UNITS
        text_scale = _units(text, words) / VIT_B32_TEXT_UNITS
        per_video_mib = frames * figures.per_frame_mib * frame_scale
        activation_mib = per_device_batch * (per_video_mib + figures.per_text_mib * text_scale)
    return StepMemoryEstimate(
        activation_bytes=int(activation_mib * MIB),
        parameter_bytes=TRAINING_BYTES_PER_PARAMETER * trainable_parameters,
    )


@dataclass(frozen=True)
class CheckpointingDecision:
    """The resolved ``activation_checkpointing`` and why."""

    enabled: bool
    reason: str


def resolve_activation_checkpointing(
    setting: ActivationCheckpointing,
    device: torch.device,
    estimate: Callable[[], StepMemoryEstimate],
    free_bytes: int | None = None,
) -> CheckpointingDecision:
    """``true``/``false`` as given; ``auto``: on when the estimated step memory without
    checkpointing exceeds the device's free memory (``torch.cuda.mem_get_info`` unless
    ``free_bytes`` is given); off on a CPU (host memory is not the limit there)."""
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"activation_checkpointing: {setting!r} is not one of auto, true, false")
    if setting is True or setting is False:
        return CheckpointingDecision(bool(setting), f"activation_checkpointing: {setting}")
    if device.type != "cuda" and free_bytes is None:
        return CheckpointingDecision(False, f"activation_checkpointing auto: off on {device.type}")
    if free_bytes is None:
        free_bytes = int(torch.cuda.mem_get_info(device)[0])
    need = estimate().total_bytes
    enabled = need > free_bytes
    return CheckpointingDecision(
        enabled,
        f"activation_checkpointing auto: {'on' if enabled else 'off'} (estimated step "
        f"{need / 1024**3:.1f} GiB without it, {free_bytes / 1024**3:.1f} GiB free)",
    )


# ------------------------------------------------------------------------------- the meter


class PeakMemoryMeter(TorchDispatchMode):
    """Peak bytes of tensor storage allocated inside the ``with`` block, on any device.

    Every storage an operator returns is counted once (views share their base's storage) until
    it is freed; storages that existed before the block are not counted. Autocast casts, the
    backward pass and checkpointing's recomputation all go through the dispatcher, so they are
    counted too. On CUDA :func:`peak_bytes` uses the allocator's own statistics instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self.current_bytes = 0
        self.peak_bytes = 0
        self._live: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.current_bytes -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                if storage in self._live:
                    continue
                nbytes = int(storage.nbytes())
                self._live[storage] = nbytes
                self.current_bytes += nbytes
                weakref.finalize(storage, self._freed, nbytes)
        self.peak_bytes = max(self.peak_bytes, self.current_bytes)
        return out


@dataclass(frozen=True)
class PeakMeasurement:
    """Peak bytes allocated while a function ran, and how long it took."""

    peak_bytes: int
    seconds: float
    how: str  # "cuda max_memory_allocated" or "dispatch meter"


def peak_bytes(fn: Callable[[], Any], device: torch.device) -> PeakMeasurement:
    """Run ``fn()`` once; its peak allocation above what was allocated before (CUDA: the
    caching allocator's ``max_memory_allocated``; elsewhere: :class:`PeakMemoryMeter`)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(device) - before
        return PeakMeasurement(int(peak), seconds, "cuda max_memory_allocated")
    meter = PeakMemoryMeter()
    t0 = time.perf_counter()
    with meter:
        fn()
    return PeakMeasurement(meter.peak_bytes, time.perf_counter() - t0, "dispatch meter")


__all__ = [
    "MEASURED_ACTIVATIONS",
    "ActivationFigures",
    "CheckpointingDecision",
    "PeakMeasurement",
    "PeakMemoryMeter",
    "StepMemoryEstimate",
    "estimate_step_memory",
    "parse_activation_checkpointing",
    "peak_bytes",
    "resolve_activation_checkpointing",
]
