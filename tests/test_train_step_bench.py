"""benchmarks/train_step.py at a tiny size: CSV columns, positive times and memory, bad input."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "train_step.py"
CONFIGS = ROOT / "configs" / "method"
# The documented columns, written out here rather than imported from the script.
EXPECTED_COLUMNS = [
    "device",
    "method",
    "batch_size",
    "frames_max",
    "mean_frames",
    "words",
    "params",
    "step_median_s",
    "step_p90_s",
    "steps_per_s",
    "peak_rss_mib",
    "baseline_rss_mib",
    "eval_1000_s",
    "threads",
    "torch",
]


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict[str, str]]]:
    """One run over a config folder of meanP, GLCCL, a variant of meanP and a config whose module
    cannot be built, without ``--methods``: the default discovery measures meanP and GLCCL,
    leaves the variant out and announces the skip."""
    tmp = tmp_path_factory.mktemp("train_step")
    config_dir = tmp / "configs"
    config_dir.mkdir()
    for name in ("glccl", "meanp", "meanp_published"):
        (config_dir / f"{name}.yaml").write_text((CONFIGS / f"{name}.yaml").read_text())
    (config_dir / "broken.yaml").write_text("model: {class_path: no_such_module.Module}\n")
    out = tmp / "train-step.csv"
    proc = run_script(
        "--batch-size=4",
        "--steps=2",
        f"--config-dir={config_dir}",
        "--eval-size=16",
        "--eval-batch-size=8",
        "--threads=1",
        f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "meanp" in proc.stdout and "glccl" in proc.stdout  # the printed table
    assert "skipped broken" in proc.stdout and "no_such_module" in proc.stdout
    assert "meanp_published" not in proc.stdout
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def test_csv_columns_and_rows(tiny_run: tuple[list[str], list[dict[str, str]]]) -> None:
    columns, rows = tiny_run
    assert columns == EXPECTED_COLUMNS
    assert [r["method"] for r in rows] == ["meanp", "glccl"]
    import torch

    for r in rows:
        assert r["device"] == "cpu"
        assert r["torch"] == torch.__version__
        assert (int(r["batch_size"]), int(r["frames_max"]), int(r["words"])) == (4, 18, 32)
        assert 1.0 <= float(r["mean_frames"]) <= 18.0
        assert int(r["threads"]) == 1


def test_times_and_memory_positive(tiny_run: tuple[list[str], list[dict[str, str]]]) -> None:
    _, rows = tiny_run
    for r in rows:
        median_s, p90_s = float(r["step_median_s"]), float(r["step_p90_s"])
        assert median_s > 0 and p90_s >= median_s
        # steps/s is the inverse median step time (CSV values carry 6 significant digits).
        assert float(r["steps_per_s"]) * median_s == pytest.approx(1.0, rel=1e-4)
        assert float(r["peak_rss_mib"]) > 0
        assert float(r["baseline_rss_mib"]) > 0
        assert float(r["eval_1000_s"]) > 0


def test_param_counts(tiny_run: tuple[list[str], list[dict[str, str]]]) -> None:
    """meanP adds nothing to CLIP: its count is the tiny CLIP's, counted here independently;
    GLCCL adds a temporal encoder and pooling matrices on top of the same CLIP."""
    from tvrbench.backbone import ClipBackbone

    _, rows = tiny_run
    params = {r["method"]: int(r["params"]) for r in rows}
    clip = ClipBackbone.from_pretrained("tiny")
    assert params["meanp"] == sum(p.numel() for p in clip.parameters())
    assert params["glccl"] > params["meanp"]


def test_unknown_method_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_script("--methods=meanp,nope", f"--out={tmp_path / 'x.csv'}")
    assert proc.returncode == 2
    assert "unknown method" in proc.stderr and "nope" in proc.stderr
    assert not (tmp_path / "x.csv").exists()


def load_bench():
    spec = importlib.util.spec_from_file_location("train_step_bench", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_frames_and_words_reach_a_method_with_tables() -> None:
    """``--frames``/``--words`` size the tables of a method that has them (GLCCL's head); a
    method without them (meanP) builds all the same; the config's init args come back (the
    child reads ``clip`` and ``lr`` there)."""
    bench = load_bench()
    args = argparse.Namespace(config_dir=str(ROOT / "configs" / "method"), words=12, frames=7)
    glccl, _ = bench.build_method("glccl", args)
    assert (glccl.head.max_words, glccl.head.max_frames) == (12, 7)
    meanp, init_args = bench.build_method("meanp", args)
    assert type(meanp.head).__name__ == "MeanPHead" and not hasattr(meanp.head, "max_frames")
    assert init_args["clip"] == "tiny" and init_args["lr"] == pytest.approx(1e-3)


def test_quick_sizes_and_output_path() -> None:
    """--quick shrinks the run and writes under outputs/, never over the committed results; an
    explicit size wins."""
    bench = load_bench()
    quick = bench.parse_args(["--quick", "--methods=meanp"])
    assert (quick.batch_size, quick.steps, quick.eval_size) == (4, 2, 16)
    assert bench.default_out(quick) == ROOT / "outputs" / "benchmarks" / "train-step-cpu-quick.csv"
    assert bench.parse_args(["--quick", "--steps=5", "--methods=meanp"]).steps == 5
    full = bench.parse_args(["--methods=meanp"])
    assert (full.batch_size, full.steps, full.eval_size) == (64, 20, 1000)
    assert bench.default_out(full) == ROOT / "benchmarks" / "results" / "train-step-cpu.csv"


def test_broken_config_named_explicitly_fails(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("model: {class_path: no_such_module.Module}\n")
    out = tmp_path / "x.csv"
    proc = run_script("--quick", "--methods=broken", f"--config-dir={tmp_path}", f"--out={out}")
    assert proc.returncode == 1
    assert "skipped broken" in proc.stdout and "no measurement for broken" in proc.stderr


def test_bad_config_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "meanp.yaml").write_text("trainer: {}\n")
    proc = run_script("--methods=meanp", f"--config-dir={tmp_path}", f"--out={tmp_path / 'x.csv'}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(tmp_path / "meanp.yaml") in lines[0]
    assert not (tmp_path / "x.csv").exists()
