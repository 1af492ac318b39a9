"""The tiny benchmark with 2 seeds: per-seed and aggregated rows, and resume of one deleted
(method, seed)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from tvrbench.bench.outputs import METRIC_COLUMNS
from tvrbench.bench.runner import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "bench" / "tiny.yaml"


def test_two_seeds_and_resume_of_one_pair(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = ["--config", str(TINY), "--seeds", "2"]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    (run,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    for method in ("meanp", "xpool"):
        for seed in (0, 1):
            assert (run / "methods" / method / f"seed{seed}.json").is_file()
    df = pd.read_csv(run / "results.csv")
    assert set(df["seed"].astype(str)) == {"0", "1", "mean"}
    per_seed = df[df["seed"].astype(str) != "mean"]
    means = df[df["seed"].astype(str) == "mean"]
    assert len(means) * 2 == len(per_seed)
    assert (means["n_seeds"] == 2).all()
    for _, row in means.iterrows():
        same = (per_seed["method"] == row["method"]) & (per_seed["bucket"] == row["bucket"])
        g = per_seed[same & (per_seed["postproc"] == row["postproc"])]
        assert len(g) == 2
        for c in METRIC_COLUMNS:
            assert abs(row[c] - g[c].astype(float).mean()) < 1e-9
            assert abs(row[f"{c}_std"] - g[c].astype(float).std(ddof=1)) < 1e-9
    info = json.loads((run / "results.json").read_text())
    assert info["seeds"] == [0, 1] and "2 seeds" in info["training_variance"]
    assert "seeds" in (run / "report.md").read_text()

    # Resume: delete one (method, seed); only that pair trains again.
    gone = run / "methods" / "xpool" / "seed1.json"
    gone.unlink()
    kept = run / "methods" / "meanp" / "seed1.json"
    before = kept.stat().st_mtime_ns
    assert main(argv) == 0
    assert gone.is_file() and kept.stat().st_mtime_ns == before
    again = pd.read_csv(run / "results.csv")
    assert len(again) == len(df)
