"""benchmarks/gpu_check.py: the CPU form runs every step and passes (so the script cannot rot
before a GPU is at hand); a failing step is recorded, not fatal, and fails the exit status."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = [
    "environment",
    "tiny_bench",
    "train_memory",
    "scoring_precision",
    "timing",
    "matmul_rate",
    "flops",
    "loader",
    "decoders",
]


def test_cpu_form_runs_every_step(tmp_path: Path, monkeypatch, capsys) -> None:
    """Through the script's ``main`` in this process (a fresh interpreter would spend seconds
    importing torch, Lightning and transformers again)."""
    check = load_script(monkeypatch)
    monkeypatch.chdir(tmp_path)
    status = check.main(["--cpu", f"--out-dir={tmp_path}"])
    stdout = capsys.readouterr().out
    assert status == 0, stdout[-3000:]
    assert stdout.splitlines()[0].startswith("*** CPU FORM")
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    assert [s["name"] for s in report["steps"]] == STEPS
    assert report["passed"] and all(s["passed"] for s in report["steps"])
    assert (tmp_path / "gpu-check-cpu.md").read_text().startswith("# GPU check — CPU FORM")
    steps = {s["name"]: s["figures"] for s in report["steps"]}
    # Checkpointing lowers the per-video memory of every method's training step.
    rows = [r for r in steps["train_memory"]["rows"] if "per_video_mib" in r]
    by_method: dict[str, dict[bool, float]] = {}
    for r in rows:
        by_method.setdefault(r["method"], {})[r["checkpointing"]] = r["per_video_mib"]
    assert len(by_method) >= 6
    assert all(v[True] < v[False] for v in by_method.values())
    # The loader's batches are uint8 bytes: 2 videos x 4 frames x 32 x 32 x 3.
    assert all(r["bytes_per_batch"] == 2 * 4 * 32 * 32 * 3 for r in steps["loader"]["rows"])
    assert steps["tiny_bench"]["stress_lengths_found"] == {
        "meanp": [0.0, 30.0],
        "xpool": [0.0, 30.0],
    }


def load_script(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_failing_step_is_recorded_not_fatal(tmp_path: Path, monkeypatch) -> None:
    check = load_script(monkeypatch)

    def broken(ctx):
        raise RuntimeError("no such device")

    monkeypatch.setitem(check.STEPS, "timing", broken)
    status = check.main(["--cpu", f"--out-dir={tmp_path}", "--only=timing,environment"])
    assert status == 1
    report = json.loads((tmp_path / "gpu-check-cpu.json").read_text())
    timing, environment = report["steps"]
    assert not timing["passed"] and "RuntimeError: no such device" in timing["error"]
    assert environment["passed"] and environment["figures"]["torch"]
