"""Length buckets: coverage, balance, names."""

from __future__ import annotations

import numpy as np
import pytest

from tvrbench.data.buckets import (
    assign_buckets,
    bucket_names,
    bucket_table,
    bucket_values,
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
