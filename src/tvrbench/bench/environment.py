"""What a benchmark result was measured on: device, dtype, threads, library versions, git commit,
and the machine's dense matmul rate (the physical ceiling the scorers are compared with)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path
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


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def git_commit(repo_dir: str | Path | None = None) -> str | None:
    """The checkout's HEAD commit (with ``+dirty`` when tracked files changed), or None."""
    cwd = Path(repo_dir) if repo_dir else Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@torch.no_grad()
def matmul_gflops_per_s(
    device: torch.device, size: int = 1024, repeats: int = 5, dtype: torch.dtype = torch.float32
) -> float:
    """Dense matmul rate in GFLOP/s (1 FLOP = 1 multiply-add, as fvcore counts): the median
    over ``repeats`` timed ``size × size`` products after one warm-up."""
    from tvrbench.bench.latency import time_callable

    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    timing = time_callable(lambda: torch.mm(a, b), device, repeats=repeats, warmup=1)
    return size**3 / (timing["median_ms"] * 1e-3) / 1e9


def collect_environment(
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    config: dict[str, Any] | None = None,
    measure_matmul: bool = True,
) -> dict[str, Any]:
    """A JSON-able description of where and how the benchmark ran."""
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "transformers": _version("transformers"),
        "fvcore": _version("fvcore"),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if measure_matmul:
        env["matmul_gflops_per_s"] = matmul_gflops_per_s(device, dtype=dtype)
    if config is not None:
        env["config"] = config
    return env
