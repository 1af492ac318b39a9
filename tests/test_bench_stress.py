"""The controlled-length protocol inside a benchmark run (SPEC §6): stress.csv, the plot, the
report section, resume, ``tvrbench stress --run`` and the findings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import STRESS_LENGTHS, stress_argv

from tvrbench.bench.findings import stress_findings
from tvrbench.bench.outputs import METRIC_COLUMNS, STRESS_COLUMNS
from tvrbench.bench.runner import main
from tvrbench.stress_cli import main as stress_main


def _stress(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "stress.csv")


def test_stress_csv_columns_and_ranges(tiny_stress_run):
    _, run = tiny_stress_run
    df = _stress(run)
    assert list(df.columns)[: len(STRESS_COLUMNS)] == STRESS_COLUMNS
    assert set(df["postproc"]) == {"none", "dsl", "qbnorm"}  # one row per post-processing
    per_seed = df[(df["seed"].astype(str) != "mean") & (df["postproc"] == "none")]
    assert sorted(per_seed["method"].unique()) == ["meanp", "xpool"]
    for _method, g in per_seed.groupby("method"):
        assert sorted(g["injected_length_s"].astype(float)) == STRESS_LENGTHS
        g = g.sort_values("injected_length_s")
        frac = g["mean_relevant_fraction"].to_numpy()
        assert frac[0] == 1.0 and np.all((frac > 0) & (frac <= 1))
        assert np.all(np.diff(frac) <= 1e-12)  # longer videos: a smaller described share
        assert np.all(g["mean_duration_s"].diff().dropna() >= 0)
        assert np.all(g["mean_relevant_frames"] <= g["mean_frames"] + 1e-9)
        assert np.all(g["mean_frames"] <= 6)
        for c in ("t2v_R@1", "t2v_R@5", "v2t_R@1"):
            assert g[c].between(0, 100).all()
            assert (g[f"{c}_lo"] <= g[c] + 1e-9).all() and (g[c] <= g[f"{c}_hi"] + 1e-9).all()
        assert (g["t2v_MnR"] >= 1).all() and (g["gflops_video"] > 0).all()
        assert g["lengthened_videos"].iloc[0] == 0 and g["lengthened_videos"].iloc[-1] > 0
    assert (df["distractor_split"] == "val").all() and (df["placement"] == "random").all()


def test_zero_length_equals_the_run_test_rows(tiny_stress_run):
    _, run = tiny_stress_run
    results = pd.read_csv(run / "results.csv")
    stress = _stress(run)
    # Per post-processing too: the same gallery, the same similarity, the same bank.
    for method, pp in [(m, p) for m in ("meanp", "xpool") for p in ("none", "dsl", "qbnorm")]:
        test_row = results[
            (results["method"] == method)
            & (results["bucket"] == "all")
            & (results["seed"].astype(str) == "0")
            & (results["postproc"] == pp)
        ].iloc[0]
        zero = stress[
            (stress["method"] == method)
            & (stress["injected_length_s"] == 0)
            & (stress["seed"].astype(str) == "0")
            & (stress["postproc"] == pp)
        ].iloc[0]
        for c in METRIC_COLUMNS:
            assert zero[c] == pytest.approx(test_row[c], abs=1e-9), (method, pp, c)


def test_plot_report_and_json(tiny_stress_run):
    _, run = tiny_stress_run
    assert (run / "stress_vs_length.png").stat().st_size > 1000
    report = (run / "report.md").read_text()
    assert "## Controlled length" in report and "stress_vs_length.png" in report
    assert "per added minute" in report
    assert "## Run cost on this machine" in report
    assert "Evaluated on the whole test split; distractors from the val split" in report
    record = json.loads((run / "methods" / "meanp" / "seed0.json").read_text())
    assert record["wall_seconds"] >= record["train_seconds"] > 0
    assert record["peak_rss_mb"] is None or record["peak_rss_mb"] > 50
    info = json.loads((run / "results.json").read_text())
    assert info["stress_findings"] and len(info["stress"]) == len(_stress(run))
    assert info["config"]["injected_lengths_s"] == STRESS_LENGTHS


def test_resume_rewrites_stress_without_retraining(tiny_stress_run):
    tmp, run = tiny_stress_run
    record_path = run / "methods" / "xpool" / "seed0.json"
    record = json.loads(record_path.read_text())
    # Drop one length from a record and the combined file: a rerun evaluates only that length.
    record["stress"] = [r for r in record["stress"] if r["injected_length_s"] != 60.0]
    record["stress_ranks"].pop("60.0")
    record_path.write_text(json.dumps(record))
    before = _stress(run)
    (run / "stress.csv").unlink()
    ckpt = run / "checkpoints" / "xpool" / "seed0" / "last.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    assert main(stress_argv(tmp)) == 0
    assert ckpt.stat().st_mtime_ns == mtime  # not retrained
    after = _stress(run)
    assert len(after) == len(before)
    key = ["method", "seed", "injected_length_s", "postproc"]
    merged = before.merge(after, on=key, suffixes=("_a", "_b"))
    for c in ("t2v_R@1", "t2v_MnR", "v2t_R@1", "mean_relevant_fraction"):
        np.testing.assert_allclose(merged[f"{c}_a"], merged[f"{c}_b"])


def test_stress_command_adds_lengths(tiny_stress_run):
    _, run = tiny_stress_run
    env_before = json.loads((run / "results.json").read_text())["environment"]
    assert stress_main(["--run", str(run), "--injected_lengths_s", "[0, 30]"]) == 0
    env_after = json.loads((run / "results.json").read_text())["environment"]
    assert env_after["time_utc"] == env_before["time_utc"]  # the run's own environment kept
    assert "stress_added_on" in env_after
    df = _stress(run)
    per_seed = df[df["seed"].astype(str) != "mean"]
    for _, g in per_seed.groupby(["method", "postproc"]):
        assert sorted(g["injected_length_s"].astype(float)) == [0.0, 20.0, 30.0, 60.0]
    # another distractor split than the run's would mix settings in one table
    assert stress_main(["--run", str(run), "--distractor_split", "train"]) == 2
    assert stress_main(["--run", str(run.parent / "nope")]) == 2


def _rows(method: str, values: list[float], lengths=(0.0, 60.0, 120.0), mnr=None) -> list[dict]:
    return [
        {
            "method": method,
            "seed": 0,
            "injected_length_s": t,
            "t2v_R@1": v,
            "t2v_R@1_lo": v - 1,
            "t2v_R@1_hi": v + 1,
            "t2v_MnR": (mnr or {}).get(t, 10.0),
            "chance_R@1": 1.0,
        }
        for t, v in zip(lengths, values)
    ]


def test_findings_hand_computed():
    # A: 30 → 20 → 10 (−10 per minute); B: 25 → 22 → 19 (−3 per minute): B degrades least; the
    # order A > B at 0 s becomes B > A at 60 s.
    # MnR: A 10 → 40 (+15 per minute), B 10 → 16 (+3 per minute).
    df = pd.DataFrame(
        _rows("A", [30, 20, 10], mnr={0.0: 10, 60.0: 25, 120.0: 40})
        + _rows("B", [25, 22, 19], mnr={0.0: 10, 60.0: 13, 120.0: 16})
    )
    lines = stress_findings(df)
    text = "\n".join(lines)
    assert lines[0].startswith("Degrades least as length grows: B (-3.00")
    assert "most: A (-10.00" in lines[0]
    assert (
        lines[1] == "Mean rank grows least: B (+3.00 t2v_MnR per added minute); most: A (+15.00)."
    )
    assert "A: t2v_R@1 30.0 at T = 0 s → 10.0 at T = 120 s (-20.0 points, keeps 33 % of it;" in text
    assert "t2v_MnR 10.0 → 40.0" in text
    assert "disjoint" in text
    assert "at T = 60 s the order becomes B > A" in text


def test_findings_unchanged_ranking_and_overlap():
    df = pd.DataFrame(_rows("A", [30, 29.5, 29]) + _rows("B", [20, 19, 18]))
    text = "\n".join(stress_findings(df))
    assert "is the same at every injected length" in text
    assert (
        "A: t2v_R@1 30.0 at T = 0 s → 29.0 at T = 120 s (-1.0 points, keeps 97 % of it; "
        "95 % intervals overlap)" in text
    )
    assert stress_findings(pd.DataFrame(_rows("A", [30], lengths=(0.0,)))) == []
    rows = _rows("A", [30, 5, 1.5]) + _rows("B", [9, 8, 7])
    floor = "\n".join(stress_findings(pd.DataFrame(rows)))
    assert "1.5 at T = 120 s (within twice chance, 1)" in floor
