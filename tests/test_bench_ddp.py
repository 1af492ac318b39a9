"""The benchmark with its training under Lightning DDP (2 CPU processes, gloo): data preparation,
testing, measurement and writing happen once; every test video is counted once; the outputs
have the same files and columns as a one-process run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tvrbench.bench.runner import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "bench" / "tiny.yaml"


def _run(tmp: Path, name: str, devices: int) -> Path:
    extra = tmp / f"{name}.yaml"
    trainer = "{max_epochs: 1, enable_progress_bar: false"
    trainer += ", devices: 2, strategy: ddp}" if devices > 1 else "}"
    extra.write_text(f"trainer_overrides: {trainer}\n")
    argv = ["--config", str(TINY), "--config", str(extra)]
    argv += ["--cache_dir", str(tmp / "cache"), "--out_dir", str(tmp / name)]
    assert main(argv) == 0
    runs = [p for p in (tmp / name).iterdir() if p.is_dir()]
    assert len(runs) == 1  # one output folder, not one per rank
    return runs[0]


def _files(run: Path) -> set[str]:
    skip = ("checkpoints", "logs", "configs")
    return {
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.is_file() and not str(p.relative_to(run)).startswith(skip)
    }


@pytest.mark.slow  # 25 s; the fast suite keeps 2-process gloo DDP in test_ddp.py and the
# launcher's DDP child in test_bench_launch.py (slow too): `make test-all` runs this one
def test_two_process_bench_matches_one_process_layout(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    single = _run(tmp_path, "single", devices=1)
    double = _run(tmp_path, "ddp", devices=2)
    assert _files(double) == _files(single)
    one, two = pd.read_csv(single / "results.csv"), pd.read_csv(double / "results.csv")
    assert list(two.columns) == list(one.columns)
    n_test = int(one.loc[one["bucket"] == "all", "n_queries"].iloc[0])
    assert (two.loc[two["bucket"] == "all", "n_queries"] == n_test).all()
    for method in ("meanp", "xpool"):
        record = json.loads((double / "methods" / method / "seed0.json").read_text())
        index = record["ranks"]["index"]
        assert len(index) == len(set(index)) == n_test  # every test video exactly once
        assert record["recipe"]["devices"] == 2 and record["recipe"]["strategy"] == "ddp"
        fit_config = double / "configs" / f"{method}-seed0-fit.yaml"
        assert fit_config.is_file()  # trained by `tvrbench fit` under DDP
        assert (double / "checkpoints" / method / "seed0" / "last.ckpt").is_file()
