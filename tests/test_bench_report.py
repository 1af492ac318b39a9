"""Report findings on constructed result tables."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tvrbench.bench.report import findings, paired_bootstrap_r1, render_report


def table(rows):
    cols = ["method", "bucket", "n_queries", "t2v_R@1", "t2v_R@1_lo", "t2v_R@1_hi"]
    df = pd.DataFrame(rows, columns=cols)
    df["gflops_text"], df["gflops_video"], df["gflops_pair"] = 1.0, 2.0, 1.0
    return df


def test_clear_winner_is_significant():
    df = table(
        [
            ("A", "short", 100, 60.0, 55.0, 65.0),
            ("B", "short", 100, 30.0, 25.0, 35.0),
            ("A", "long", 100, 50.0, 45.0, 55.0),
            ("B", "long", 100, 20.0, 15.0, 25.0),
            ("A", "all", 200, 55.0, 51.0, 59.0),
            ("B", "all", 200, 25.0, 21.0, 29.0),
        ]
    )
    lines = findings(df)
    overall = next(s for s in lines if s.startswith("**overall**"))
    assert "A wins" in overall and "do not overlap" in overall and "**significant**" in overall
    assert any("unchanged" in s for s in lines)
    assert any("most efficient: A" in s for s in lines)


def test_overlapping_intervals_not_significant():
    df = table(
        [
            ("A", "all", 50, 42.0, 30.0, 54.0),
            ("B", "all", 50, 40.0, 28.0, 52.0),
        ]
    )
    (line, *_) = findings(df)
    assert "A wins" in line and "not significant" in line


def test_ranking_change_is_reported():
    df = table(
        [
            ("A", "short", 10, 60.0, 50.0, 70.0),
            ("B", "short", 10, 40.0, 30.0, 50.0),
            ("A", "long", 10, 20.0, 10.0, 30.0),
            ("B", "long", 10, 45.0, 35.0, 55.0),
            ("A", "all", 20, 40.0, 30.0, 50.0),
            ("B", "all", 20, 42.0, 32.0, 52.0),
        ]
    )
    text = " ".join(findings(df))
    assert "A 1st → 2nd" in text and "B 2nd → 1st" in text


def test_paired_bootstrap_against_hand_computation():
    a = np.array([1] * 80 + [5] * 20)
    b = np.array([1] * 20 + [5] * 80)
    diff, lo, hi = paired_bootstrap_r1(a, b, n_boot=500, seed=0)
    assert diff == 60.0 and 0 < lo <= diff <= hi
    # Paired ranks drive the report's verdict when given.
    df = table([("A", "all", 100, 80.0, 70.0, 88.0), ("B", "all", 100, 20.0, 12.0, 30.0)])
    ranks = {"A": {"ranks_t2v": a, "bucket": ["x"] * 100}, "B": {"ranks_t2v": b}}
    (line, *_) = findings(df, ranks)
    assert "paired-bootstrap" in line and "**significant**" in line
    same = {"A": {"ranks_t2v": a}, "B": {"ranks_t2v": a}}
    (line, *_) = findings(df, same)
    assert "not significant" in line


def test_render_report_banner():
    df = table([("A", "all", 10, 50.0, 40.0, 60.0)])
    text = render_report(df, None, {"data": "synthetic"}, findings(df))
    assert text.splitlines()[0] == "> **SYNTHETIC DATA — these are not DiDeMo numbers**"
    assert "only A was run" in text


def test_mean_rank_finding_can_disagree_with_r_at_1():
    # a wins R@1 but b has the lower mean rank, with clearly separated intervals.
    table = pd.DataFrame(
        [
            {"method": "a", "bucket": "all", "n_queries": 100, "t2v_R@1": 20.0,
             "t2v_R@1_lo": 12.0, "t2v_R@1_hi": 28.0,
             "t2v_MnR": 120.0, "t2v_MnR_lo": 110.0, "t2v_MnR_hi": 130.0},
            {"method": "b", "bucket": "all", "n_queries": 100, "t2v_R@1": 15.0,
             "t2v_R@1_lo": 8.0, "t2v_R@1_hi": 22.0,
             "t2v_MnR": 60.0, "t2v_MnR_lo": 50.0, "t2v_MnR_hi": 70.0},
        ]
    )  # fmt: skip
    lines = findings(table)
    mnr = [line for line in lines if "mean rank" in line]
    assert len(mnr) == 1
    assert "overall: b 60.0 vs a 120.0 (95 % intervals do not overlap)" in mnr[0]
    table.loc[1, "t2v_MnR_hi"] = 115.0  # now the intervals overlap
    assert "(95 % intervals overlap)" in [x for x in findings(table) if "mean rank" in x][0]
