"""Latency of encoding and retrieval (SPEC §5).

Timing: :func:`time_call` times one call on a device (the benchmark scripts time with it too):
after a synchronisation, bracketed on CUDA by ``torch.cuda.Event``s recorded on the measured
device, on CPU by ``time.perf_counter``. :func:`time_callable` makes warm-up calls, then
``repeats`` timed calls, and reports the median and 90th percentile in milliseconds, with the
batch size (always 1 query or 1 video here); :func:`time_runs` repeats a call adaptively (fewer
runs past a time cap, more while short calls have not run long enough).

Retrieval cost versus gallery size: a gallery of G cached video states is made from the real test
gallery's states by repeating them and adding a little noise (so no two are identical), then one
encoded query is scored against all of it with the method's chunked scorer. Galleries too large
for ``max_gallery_mb`` are scored by reusing one materialised chunk ``ceil(G / chunk)`` times —
the same work the chunked scorer does — and marked ``materialized = False``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

State = dict[str, Tensor]
T = TypeVar("T")


#: Most runs :func:`time_runs` makes to fill ``min_timed_s``.
MAX_RUNS = 100


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """Seconds of one call of ``fn()`` on ``device`` and its output, started after a
    synchronisation: CUDA events on the device's stream (ended by a synchronisation), or
    ``time.perf_counter`` on the CPU."""
    synchronize(device)
    if device.type == "cuda":
        # Events record on the *current* device's stream: make it the measured device
        # (``cuda:1`` would otherwise be timed on ``cuda:0``'s stream).
        with torch.cuda.device(device):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(device)
        return float(start.elapsed_time(end)) / 1e3, out
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def time_callable(
    fn: Callable[[], Any], device: torch.device, repeats: int = 20, warmup: int = 3
) -> dict[str, Any]:
    """Time ``fn()``; returns ``{"median_ms", "p90_ms", "samples_ms", "repeats", "warmup"}``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(max(0, warmup)):
        fn()
    samples_ms = [time_call(fn, device)[0] * 1e3 for _ in range(repeats)]
    arr = np.asarray(samples_ms)
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "samples_ms": samples_ms,
        "repeats": repeats,
        "warmup": warmup,
    }


def time_runs(
    fn: Callable[[], T],
    device: torch.device,
    repeats: int,
    cap_s: float,
    min_timed_s: float = 1.0,
    max_runs: int = MAX_RUNS,
) -> tuple[list[float], T]:
    """Seconds of ``repeats`` runs of ``fn()`` (:func:`time_call`) and the last output: fewer
    runs once their sum passes ``cap_s`` (at least one), more, up to ``max_runs``, while their
    sum is under ``min_timed_s`` (short calls repeat for a stable median). The caller warms up
    first."""
    times: list[float] = []
    while len(times) < max(1, repeats) or (sum(times) < min_timed_s and len(times) < max_runs):
        seconds, out = time_call(fn, device)
        times.append(seconds)
        if sum(times) > cap_s:
            break
    return times, out


@torch.no_grad()
def query_latency(
    module, input_ids: Tensor, attention_mask: Tensor, gallery: State, repeats: int, warmup: int
) -> dict[str, Any]:
    """Encode one text ``[1, L]`` and score it against the whole cached ``gallery``."""
    device = input_ids.device

    def run() -> Tensor:
        text = module.encode_text(input_ids, attention_mask)
        return module.similarity(text, gallery)  # (1, G)

    return time_callable(run, device, repeats=repeats, warmup=warmup)


@torch.no_grad()
def video_latency(
    module, frames: Tensor, frame_mask: Tensor, repeats: int, warmup: int
) -> dict[str, Any]:
    """Encode one video ``frames [1, N, 3, H, W]`` into its cached state."""
    return time_callable(
        lambda: module.encode_video(frames, frame_mask), frames.device, repeats, warmup
    )


def state_bytes(state: Mapping[str, Tensor]) -> int:
    """Bytes per item of a state (all tensors, leading dim = items)."""
    return sum(v[0].numel() * v.element_size() for v in state.values())


def synthetic_gallery(real: Mapping[str, Tensor], size: int, seed: int = 0) -> State:
    """``size`` video states made by repeating the real ones and perturbing floating tensors
    by 1 % Gaussian noise (masks and integer tensors are repeated as they are)."""
    n_real = next(iter(real.values())).shape[0]
    generator = torch.Generator().manual_seed(seed)
    idx = torch.randint(n_real, (size,), generator=generator)
    out: State = {}
    for key, value in real.items():
        rep = value[idx.to(value.device)]  # (size, ...)
        if rep.is_floating_point():
            noise = torch.randn(rep.shape, generator=generator).to(rep.device, rep.dtype)
            rep = rep + 0.01 * rep.abs().mean() * noise
        out[key] = rep
    return out


@torch.no_grad()
def gallery_cost(
    module,
    text: State,
    real_gallery: State,
    sizes: list[int],
    repeats: int = 3,
    warmup: int = 1,
    max_gallery_mb: float = 1024.0,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Time per query (one cached text state ``[1, ...]``) versus gallery size.

    Returns one dict per size: ``gallery_size, ms_per_query, p90_ms, materialized, chunk``.
    """
    device = next(iter(text.values())).device
    per_item = max(1, state_bytes(real_gallery))
    max_items = max(1, int(max_gallery_mb * 1024**2) // per_item)
    rows = []
    for size in sizes:
        chunk = min(size, max_items)
        gallery = synthetic_gallery(real_gallery, chunk, seed=seed)
        passes = math.ceil(size / chunk)
        last = size - chunk * (passes - 1)
        last_gallery = {k: v[:last] for k, v in gallery.items()}

        def run(gallery: State = gallery, passes: int = passes, last_gallery=last_gallery) -> None:
            for p in range(passes):
                module.similarity(text, last_gallery if p == passes - 1 else gallery)

        timing = time_callable(run, device, repeats=repeats, warmup=warmup)
        rows.append(
            {
                "gallery_size": size,
                "ms_per_query": timing["median_ms"],
                "p90_ms": timing["p90_ms"],
                "materialized": passes == 1,
                "chunk": chunk,
            }
        )
        del gallery, last_gallery
    return rows
