"""Length buckets: coverage, balance, names."""

from __future__ import annotations

import numpy as np
import pytest

from tvrbench.data.buckets import (
    annotated_seconds,
    assign_buckets,
    bucket_names,
    bucket_table,
    bucket_unit,
    bucket_values,
    described_fractions,
    quantile_edges,
)


def _reference_bucket(v: float, edges: list[float]) -> int:
    return sum(v >= e for e in edges)


def test_assign_matches_reference_and_covers_extremes():
    edges = [18.0, 31.0, 54.0]
    values = [0.0, 17.99, 18.0, 30.9, 31.0, 54.0, 1e6]
    ids = assign_buckets(values, edges)
    assert ids.tolist() == [_reference_bucket(v, edges) for v in values] == [0, 0, 1, 1, 2, 3, 3]


@pytest.mark.parametrize("n, k", [(100, 4), (101, 4), (7, 3), (10, 1), (5, 5)])
def test_quantile_buckets_balanced_on_distinct_values(n, k):
    values = np.random.default_rng(n).permutation(np.linspace(1.0, 120.0, n))
    ids = assign_buckets(values, quantile_edges(values, k))
    counts = np.bincount(ids, minlength=k)
    assert counts.sum() == n and len(counts) == k  # every video in exactly one bucket
    assert counts.max() - counts.min() <= 1


def test_ties_and_few_values_drop_edges():
    assert quantile_edges([5.0] * 10, 4) == []
    assert quantile_edges([], 4) == []
    edges = quantile_edges([1, 1, 1, 2, 2, 2, 3, 3, 3], 3)
    assert edges == [1.5, 2.5]


def test_names():
    assert bucket_names([18, 31, 54]) == ["0-18s", "18-31s", "31-54s", "54s+"]
    assert bucket_names([20, 40], unit="w") == ["0-20w", "20-40w", "40w+"]
    assert bucket_names([]) == ["0s+"]
    assert bucket_names([2.5]) == ["0-2.5s", "2.5s+"]
    with pytest.raises(ValueError, match="strictly increasing"):
        bucket_names([3, 3])


def test_values_and_table():
    durations, words = [10.0, 40.0, 70.0], [5, 25, 45]
    np.testing.assert_allclose(bucket_values("sampled_span", durations, words, 31.0), [10, 31, 31])
    np.testing.assert_allclose(bucket_values("duration", durations, words, 31.0), durations)
    np.testing.assert_allclose(bucket_values("words", durations, words), words)
    with pytest.raises(ValueError):
        bucket_values("frames", durations, words)
    rows = bucket_table(durations, [31.0], "s", durations, [10, 31, 31])
    assert [r["videos"] for r in rows] == [1, 2]
    assert rows[1]["mean_duration_s"] == pytest.approx(55.0) and rows[1]["upper"] is None


def test_quantile_edges_with_tied_durations_fill_every_bucket():
    # Durations in whole 5-s moments tie massively; an edge must still land between each
    # group of ties (a regression: cuts inside a tie used to be dropped, leaving one bucket).
    values = np.random.default_rng(0).choice(np.arange(5, 95, 5), 3200)
    edges = quantile_edges(values, 4)
    assert len(edges) == 3
    counts = np.bincount(assign_buckets(values, edges), minlength=4)
    assert counts.sum() == 3200
    assert counts.min() > 0.6 * 3200 / 4 and counts.max() < 1.4 * 3200 / 4
    for e in edges:
        assert not np.any(values == e)  # ties are never split across buckets


def test_described_fraction_hand_computed():
    # Sentence 1: annotators [0, 0] and [0, 1] -> [0, 10) s; sentence 2: [3, 3] -> [15, 20) s;
    # sentence 3: [1, 2] and [2, 2] -> [5, 15) s. Union [0, 20) = 20 s; video of 32 s.
    times = [[(0, 0), (0, 1)], [(3, 3)], [(1, 2), (2, 2)]]
    assert annotated_seconds(times, 32.0) == 20.0
    # Disjoint moments: [0, 5) + [20, 30) = 15 s, the last chunk cut at the 27-s end -> 12 s.
    assert annotated_seconds([[(0, 0)], [(4, 5)]], 40.0) == 15.0
    assert annotated_seconds([[(0, 0)], [(4, 5)]], 27.0) == 12.0
    assert annotated_seconds([[(2, 1)]], 40.0) == 10.0  # a reversed pair counts as [1, 2]
    assert annotated_seconds([], 40.0) == 0.0
    np.testing.assert_allclose(
        described_fractions([20.0, 12.0, 10.0, 3.0], [32.0, 27.0, 8.0, 0.0]),
        [0.625, 12 / 27, 1.0, 0.0],  # capped at 1; a zero duration gives 0
    )
    values = bucket_values("described_fraction", [32.0, 27.0], [5, 6], annotated_s=[20.0, 12.0])
    np.testing.assert_allclose(values, [0.625, 12 / 27])
    with pytest.raises(ValueError, match="annotated_s"):
        bucket_values("described_fraction", [32.0], [5])
    assert bucket_unit("described_fraction") == ""
    assert bucket_names([0.25, 5 / 12], unit="") == ["0-0.25", "0.25-0.417", "0.417+"]
