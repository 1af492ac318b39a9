"""Per-seed rows → aggregated rows (SPEC §4.1): means, sample std, two-level intervals."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch

import tvrbench.bench.seeds as S
from tvrbench.bench.seeds import (
    METRIC_COLUMNS,
    STD_COLUMNS,
    aggregate_seed_rows,
    count_seeds,
    normalise_ranks,
    per_seed_rows,
    seeds_note,
    summary_rows,
)
from tvrbench.metrics import bootstrap_ci, summarize_ranks, two_level_bootstrap_ci

BUCKETS = np.array(["short"] * 6 + ["long"] * 4)


def seed_ranks(rng: np.random.Generator) -> dict:
    """One seed's ranks entry as the runner stores it (10 queries, two buckets)."""
    return {
        "index": list(range(10)),
        "ranks_t2v": rng.integers(1, 8, 10).tolist(),
        "ranks_v2t": rng.integers(1, 8, 10).tolist(),
        "bucket": BUCKETS.tolist(),
    }


def rows_from_ranks(method: str, seed: int, entry: dict, n_boot: int, boot_seed: int) -> list:
    """Per-seed rows built the way the runner builds them (summaries + query bootstrap)."""
    rows = []
    for bucket in ["short", "long", "all"]:
        sel = np.ones(10, bool) if bucket == "all" else BUCKETS == bucket
        row = {"method": method, "bucket": bucket, "seed": seed, "n_queries": int(sel.sum())}
        for d in ("t2v", "v2t"):
            ranks = torch.tensor(entry[f"ranks_{d}"])[torch.from_numpy(sel)]
            summary = summarize_ranks(ranks)
            for key, (lo, hi) in bootstrap_ci(ranks, n_boot=n_boot, seed=boot_seed).items():
                row[f"{d}_{key}"] = summary[key]
                row[f"{d}_{key}_lo"], row[f"{d}_{key}_hi"] = lo, hi
        row.update(gflops_video=2.0, latency_query_ms=1.0 + seed, data="synthetic")
        rows.append(row)
    return rows


def test_mean_and_std_against_hand_computation():
    r1 = [10.0, 20.0, 40.0]
    rows = []
    for seed, value in zip([0, 1, 2], r1):
        row = {"method": "a", "bucket": "all", "seed": seed, "n_queries": 50}
        row.update({c: 1.0 for c in METRIC_COLUMNS})
        row["t2v_R@1"] = value
        row["v2t_MnR"] = 3.0 * seed
        row.update(gflops_text=0.5, latency_query_ms=[1.0, 2.0, 6.0][seed], protocol="finetune")
        rows.append(row)
    (agg,) = aggregate_seed_rows(rows, ranks=None, n_boot=50, seed=0)
    assert agg["seed"] == "mean" and agg["n_seeds"] == 3
    assert agg["method"] == "a" and agg["bucket"] == "all"
    assert agg["t2v_R@1"] == pytest.approx(70.0 / 3)
    # deviations -40/3, -10/3, 50/3: sum of squares 4200/9, over (3 - 1)
    assert agg["t2v_R@1_std"] == pytest.approx(math.sqrt(2100.0 / 9.0))
    assert agg["v2t_MnR"] == pytest.approx(3.0) and agg["v2t_MnR_std"] == pytest.approx(3.0)
    assert agg["t2v_R@5"] == 1.0 and agg["t2v_R@5_std"] == 0.0
    assert agg["latency_query_ms"] == pytest.approx(3.0)  # cost columns averaged
    assert agg["gflops_text"] == 0.5 and agg["protocol"] == "finetune"
    assert agg["n_queries"] == 50 and isinstance(agg["n_queries"], int)
    assert math.isnan(agg["t2v_R@1_lo"]) and math.isnan(agg["t2v_R@1_hi"])  # no ranks given
    assert set(STD_COLUMNS) <= set(agg)


def test_intervals_are_the_two_level_bootstrap_of_each_bucket():
    rng = np.random.default_rng(0)
    ranks = {"a": {s: seed_ranks(rng) for s in (0, 1, 2)}, "b": {0: seed_ranks(rng)}}
    rows = [r for s in (0, 1, 2) for r in rows_from_ranks("a", s, ranks["a"][s], 40, 5)]
    rows += rows_from_ranks("b", 0, ranks["b"][0], 40, 5)
    agg = aggregate_seed_rows(rows, ranks, n_boot=40, seed=5)
    assert [(r["method"], r["bucket"]) for r in agg] == [
        ("a", "short"),
        ("a", "long"),
        ("a", "all"),
        ("b", "short"),
        ("b", "long"),
        ("b", "all"),
    ]
    for row in agg:
        for d in ("t2v", "v2t"):
            per_seed = []
            for entry in ranks[row["method"]].values():
                r = np.asarray(entry[f"ranks_{d}"])
                per_seed.append(r if row["bucket"] == "all" else r[BUCKETS == row["bucket"]])
            expected = two_level_bootstrap_ci(per_seed, n_boot=40, seed=5)
            for key, (lo, hi) in expected.items():
                assert (row[f"{d}_{key}_lo"], row[f"{d}_{key}_hi"]) == (lo, hi)
            values = [summarize_ranks(torch.from_numpy(r))["R@1"] for r in per_seed]
            assert row[f"{d}_R@1"] == pytest.approx(np.mean(values))
    # One seed: the aggregated interval is that seed's own query-bootstrap interval, std NaN.
    b_all = next(r for r in agg if r["method"] == "b" and r["bucket"] == "all")
    b_seed = next(r for r in rows if r["method"] == "b" and r["bucket"] == "all")
    for column in METRIC_COLUMNS:
        assert b_all[column] == b_seed[column]
        assert (b_all[f"{column}_lo"], b_all[f"{column}_hi"]) == (
            b_seed[f"{column}_lo"],
            b_seed[f"{column}_hi"],
        )
        assert math.isnan(b_all[f"{column}_std"])
    a_all = next(r for r in agg if r["method"] == "a" and r["bucket"] == "all")
    assert a_all["latency_query_ms"] == pytest.approx(2.0)  # mean of 1, 2, 3


def test_json_string_seeds_and_one_seed_layout_are_accepted():
    rng = np.random.default_rng(1)
    entry0, entry1 = seed_ranks(rng), seed_ranks(rng)
    rows = rows_from_ranks("a", 0, entry0, 30, 0) + rows_from_ranks("a", 1, entry1, 30, 0)
    as_ints = aggregate_seed_rows(rows, {"a": {0: entry0, 1: entry1}}, n_boot=30)
    as_json = aggregate_seed_rows(rows, {"a": {"0": entry0, "1": entry1}}, n_boot=30)
    assert as_ints == as_json
    assert normalise_ranks({"a": entry0}) == {"a": {0: entry0}}
    assert normalise_ranks(None) == {}
    # A one-seed run without ranks keeps its rows' own intervals.
    (row,) = [r for r in aggregate_seed_rows(rows[:3], None) if r["bucket"] == "all"]
    assert row["t2v_R@1_lo"] == rows[2]["t2v_R@1_lo"]


def test_bad_rows_are_rejected():
    row = {"method": "a", "bucket": "all", **{c: 1.0 for c in METRIC_COLUMNS}}
    with pytest.raises(ValueError, match="no integer 'seed'"):
        aggregate_seed_rows([row], None)
    with pytest.raises(ValueError, match="no integer 'seed'"):
        aggregate_seed_rows([{**row, "seed": "mean"}], None)
    with pytest.raises(ValueError, match="two rows"):
        aggregate_seed_rows([{**row, "seed": 0}, {**row, "seed": 0}], None)


def test_seeds_note():
    assert seeds_note(1) == "training variance was not measured (1 seed)"
    assert "3 seeds" in seeds_note(3) and "two-level" in seeds_note(3)
    assert doctest.testmod(S).failed == 0


def test_results_frame_helpers_survive_a_csv_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    ranks = {"a": {s: seed_ranks(rng) for s in (3, 4)}}
    rows = [r for s in (3, 4) for r in rows_from_ranks("a", s, ranks["a"][s], 20, 0)]
    table = rows + aggregate_seed_rows(rows, ranks, n_boot=20)
    pd.DataFrame(table).to_csv(tmp_path / "results.csv", index=False)
    df = pd.read_csv(tmp_path / "results.csv")
    assert len(summary_rows(df)) == 3 and (summary_rows(df)["seed"] == "mean").all()
    assert len(per_seed_rows(df)) == 6
    assert count_seeds(df) == 2
    legacy = df.drop(columns=["seed", "n_seeds"])
    assert len(summary_rows(legacy)) == len(legacy) and count_seeds(legacy) == 1


def test_other_group_key_with_both_rank_layouts():
    """Controlled-length rows group by ``injected_length_s``; ranks as per-query lists or as one
    sub-entry per length give the same intervals."""
    rng = np.random.default_rng(3)
    lengths = np.array([0] * 5 + [30] * 5)
    per_query, per_length, rows = {}, {}, []
    for s in (0, 1):
        t2v, v2t = rng.integers(1, 9, 10), rng.integers(1, 9, 10)
        per_query[s] = {
            "ranks_t2v": t2v.tolist(),
            "ranks_v2t": v2t.tolist(),
            "injected_length_s": lengths.tolist(),
        }
        per_length[s] = {
            str(t): {"ranks_t2v": t2v[lengths == t].tolist(), "ranks_v2t": v2t[lengths == t]}
            for t in (0, 30)
        }
        for t in (0, 30):
            row = {"method": "a", "injected_length_s": t, "seed": s, "n_queries": 5}
            row.update({c: float(s + t) for c in METRIC_COLUMNS})
            rows.append(row)
    agg = aggregate_seed_rows(rows, {"a": per_query}, n_boot=30, group_key="injected_length_s")
    assert [(r["injected_length_s"], r["seed"]) for r in agg] == [(0, "mean"), (30, "mean")]
    assert "bucket" not in agg[0] and agg[1]["t2v_R@1"] == 30.5
    expected = two_level_bootstrap_ci(
        [np.asarray(per_query[s]["ranks_t2v"])[lengths == 30] for s in (0, 1)], n_boot=30
    )
    assert (agg[1]["t2v_MnR_lo"], agg[1]["t2v_MnR_hi"]) == expected["MnR"]
    other = aggregate_seed_rows(rows, {"a": per_length}, n_boot=30, group_key="injected_length_s")
    assert other == agg
    no_length = {k: v for k, v in rows[0].items() if k != "injected_length_s"}
    with pytest.raises(ValueError, match="has no 'injected_length_s'"):
        aggregate_seed_rows([no_length], None, group_key="injected_length_s")
