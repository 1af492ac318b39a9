"""What a benchmark result was measured on: device (CPU model; GPU name, driver and CUDA version),
dtype, threads, library versions, git commit, and the machine's dense matmul rate (the physical
ceiling the scorers are compared with)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from tvrbench.precision import precision_flags

# /proc/cpuinfo keys naming the processor: x86 ("model name"), then some ARM/POWER kernels.
_CPUINFO_KEYS = ("model name", "hardware", "processor", "cpu", "model")


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model string, e.g. ``"AMD EPYC 7B13"``, not the architecture (``"x86_64"``).

    Read from ``cpuinfo`` (``model name``; on ARM/POWER kernels without it ``Hardware``, then a
    ``Processor``/``cpu``/``model`` line that is not a bare number), falling back to ``lscpu``'s
    ``Model name``, then ``platform.processor()`` and last ``platform.machine()``.
    """
    fields: dict[str, str] = {}
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if sep and value and key not in fields and not value.isdigit():
            fields[key] = value
    for key in _CPUINFO_KEYS:
        if fields.get(key):
            return fields[key]
    return _lscpu_model() or platform.processor() or platform.machine() or "cpu"


def _lscpu_model() -> str | None:
    """``Model name`` from ``lscpu`` (names ARM cores whose /proc/cpuinfo does not)."""
    exe = shutil.which("lscpu")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "model name" and value.strip() and value.strip() != "-":
            return value.strip()
    return None


def gpu_driver_version(index: int = 0) -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` when it is installed, else None."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    version = out.stdout.strip().splitlines()[0].strip() if out.stdout.strip() else ""
    return version if out.returncode == 0 and version else None


def gpu_info(device: torch.device) -> dict[str, Any]:
    """``gpu_name``, ``gpu_memory_gib``, ``gpu_capability``, ``gpu_driver`` and ``cuda`` (the
    CUDA version torch was built with) of a CUDA device."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {
        "gpu_name": props.name,
        "gpu_memory_gib": round(props.total_memory / 2**30, 1),
        "gpu_capability": f"{props.major}.{props.minor}",
        "gpu_driver": gpu_driver_version(index),
        "cuda": torch.version.cuda,
    }


def device_name(device: torch.device) -> str:
    """GPU name on CUDA, the CPU model string (:func:`cpu_model`) otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


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


#: Side of the square matmul probe: an H100 needs thousands of rows per side to reach its
#: rate (at 1024² it runs at a fraction of it, inflating ``fraction_of_matmul``); a CPU is
#: saturated at 1024² already, and 8192² would take tens of seconds there.
MATMUL_PROBE_SIZE = {"cuda": 8192, "cpu": 1024}


def matmul_probe_size(device: torch.device) -> int:
    """The probe side used on ``device`` (8192 on CUDA, 1024 elsewhere)."""
    return MATMUL_PROBE_SIZE.get(device.type, 1024)


@torch.no_grad()
def matmul_gflops_per_s(
    device: torch.device,
    size: int | None = None,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Dense matmul rate in GFLOP/s (1 FLOP = 1 multiply-add, as fvcore counts): the median
    over ``repeats`` timed ``size × size`` products after one warm-up (``size`` default:
    :func:`matmul_probe_size`)."""
    from tvrbench.bench.latency import time_callable

    size = size or matmul_probe_size(device)
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
    """A JSON-able description of where and how the benchmark ran.

    ``device_name`` is the GPU name on CUDA, the CPU model otherwise; ``cpu_model`` always; on
    CUDA also ``gpu_name``, ``gpu_memory_gib``, ``gpu_capability``, ``gpu_driver`` (None when
    ``nvidia-smi`` is missing) and ``cuda`` (``torch.version.cuda``; None on CPU).
    """
    env: dict[str, Any] = {
        "device": str(device),
        "device_name": device_name(device),
        "cpu_model": cpu_model(),
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
        **(gpu_info(device) if device.type == "cuda" else {}),
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    env.update(precision_flags())  # float32 matmul precision, TF32 switches
    if measure_matmul:
        env["matmul_gflops_per_s"] = matmul_gflops_per_s(device, dtype=dtype)
        env["matmul_probe_size"] = matmul_probe_size(device)
    if config is not None:
        env["config"] = config
    return env


def proc_status_kb(key: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``, ``VmHWM``, …); None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark ``VmHWM`` to its current RSS (Linux ≥ 4.0); False
    where that is not possible (the mark then covers the whole process so far)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
