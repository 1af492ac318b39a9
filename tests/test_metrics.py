"""Rank metrics (SPEC §4) against a plain per-query NumPy reference and hand-made cases."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch

import tvrbench.metrics as M
from tvrbench.metrics import (
    BOOTSTRAP_KEYS,
    MDR_CONVENTION,
    V2T_CONVENTIONS,
    NonFiniteScoresError,
    bootstrap_ci,
    bootstrap_indices,
    paired_two_level_bootstrap,
    retrieval_metrics,
    summarize_ranks,
    text_to_video_ranks,
    two_level_bootstrap_ci,
    video_to_text_ranks,
)

KEYS = ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "MRR", "n_queries"]

# ----------------------------------------------------------------------- independent reference


def ref_t2v(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
    n_text, n_video = sim.shape
    ranks = []
    for i in range(n_text):
        correct = sim[i, t2v[i]]
        wrong_at_least = sum(1 for j in range(n_video) if j != t2v[i] and sim[i, j] >= correct)
        ranks.append(1 + wrong_at_least)
    return np.array(ranks)


def ref_v2t(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
    n_text, n_video = sim.shape
    ranks = []
    for j in range(n_video):
        best = max(sim[i, j] for i in range(n_text) if t2v[i] == j)
        wrong_at_least = sum(1 for i in range(n_text) if t2v[i] != j and sim[i, j] >= best)
        ranks.append(1 + wrong_at_least)
    return np.array(ranks)


def ref_summary(ranks: np.ndarray) -> dict:
    out = {f"R@{k}": 100.0 * float(np.mean(ranks <= k)) for k in (1, 5, 10, 50)}
    out.update(MdR=float(np.median(ranks)), MnR=float(np.mean(ranks)))
    out.update(MRR=100.0 * float(np.mean(1.0 / ranks)), n_queries=len(ranks))
    return out


def assert_summary_equal(got: dict, expected: dict) -> None:
    assert list(got) == KEYS
    for key in KEYS:
        assert got[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-12), key
    assert isinstance(got["n_queries"], int)


def random_case(seed: int, n_video: int, captions: int, decimals: int | None):
    """Random scores, ``captions`` texts per video on average (every video has at least one)."""
    rng = np.random.default_rng(seed)
    n_text = n_video * captions
    t2v = np.concatenate([np.arange(n_video), rng.integers(0, n_video, n_text - n_video)])
    rng.shuffle(t2v)
    sim = rng.normal(size=(n_text, n_video))
    sim[np.arange(n_text), t2v] += 1.5  # make some queries succeed
    if decimals is not None:
        sim = sim.round(decimals)  # many ties
    return sim, t2v


# --------------------------------------------------------------------------- against reference


@pytest.mark.parametrize(
    ("seed", "n_video", "captions", "decimals"),
    [(0, 60, 1, None), (1, 60, 1, 1), (2, 40, 3, None), (3, 40, 3, 1), (4, 70, 2, 0)],
)
def test_ranks_and_summary_match_numpy_reference(seed, n_video, captions, decimals):
    sim, t2v = random_case(seed, n_video, captions, decimals)
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    expected_t2v, expected_v2t = ref_t2v(sim, t2v), ref_v2t(sim, t2v)
    if decimals is not None:
        # The case really has ties at the correct item (otherwise the test would not test them).
        assert (sim == sim[np.arange(len(t2v)), t2v][:, None]).sum() > len(t2v)
    np.testing.assert_array_equal(text_to_video_ranks(sim_t, t2v_t).numpy(), expected_t2v)
    np.testing.assert_array_equal(video_to_text_ranks(sim_t, t2v_t).numpy(), expected_v2t)
    out = retrieval_metrics(sim_t, t2v_t)
    assert set(out) == {"t2v", "v2t"}
    assert_summary_equal(out["t2v"], ref_summary(expected_t2v))
    assert_summary_equal(out["v2t"], ref_summary(expected_v2t))


def test_float32_and_integer_scores_match_reference():
    sim, t2v = random_case(5, 30, 2, 1)
    expected = ref_t2v(sim.astype(np.float32), t2v)
    got = text_to_video_ranks(torch.from_numpy(sim.astype(np.float32)), torch.from_numpy(t2v))
    np.testing.assert_array_equal(got.numpy(), expected)
    sim_int = (sim * 10).round().astype(np.int64)
    np.testing.assert_array_equal(
        video_to_text_ranks(torch.from_numpy(sim_int), torch.from_numpy(t2v)).numpy(),
        ref_v2t(sim_int, t2v),
    )


def test_chunked_loops_give_the_same_ranks(monkeypatch):
    sim, t2v = random_case(6, 25, 3, 1)
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 7)  # fewer than one row: one row per chunk
    np.testing.assert_array_equal(text_to_video_ranks(sim_t, t2v_t).numpy(), ref_t2v(sim, t2v))
    np.testing.assert_array_equal(video_to_text_ranks(sim_t, t2v_t).numpy(), ref_v2t(sim, t2v))
    monkeypatch.setattr(M, "_CHUNK_ELEMENTS", 26 * 3)  # chunks of 3 rows, last one short
    np.testing.assert_array_equal(text_to_video_ranks(sim_t, t2v_t).numpy(), ref_t2v(sim, t2v))
    np.testing.assert_array_equal(video_to_text_ranks(sim_t, t2v_t).numpy(), ref_v2t(sim, t2v))


# ------------------------------------------------------------------------------ hand-made cases


def test_tie_with_two_wrong_videos_gives_rank_three():
    sim = torch.tensor(
        [
            [0.5, 0.5, 0.5, 0.1],  # correct (col 0) tied with two wrong videos
            [0.0, 0.9, 0.2, 0.3],
            [0.7, 0.1, 0.6, 0.7],  # correct (col 2) below two: rank 3
            [0.2, 0.2, 0.2, 0.2],
        ]
    )
    assert text_to_video_ranks(sim).tolist() == [3, 1, 3, 4]


def test_constant_scorer_gets_the_worst_rank():
    n_video = 7
    sim = torch.full((n_video, n_video), 0.25)
    assert text_to_video_ranks(sim).tolist() == [n_video] * n_video
    assert video_to_text_ranks(sim).tolist() == [n_video] * n_video
    # Several captions: a video's worst rank is 1 + number of incorrect texts.
    t2v = torch.tensor([0, 0, 1, 2, 2, 2])
    sim = torch.zeros(6, 3)
    assert text_to_video_ranks(sim, t2v).tolist() == [3] * 6
    assert video_to_text_ranks(sim, t2v).tolist() == [1 + 4, 1 + 5, 1 + 3]


def test_v2t_uses_best_placed_caption():
    t2v = torch.tensor([0, 1, 0, 1])
    sim = torch.tensor(
        [
            [0.1, 0.0],  # caption of video 0, scored low for it
            [0.9, 0.4],  # caption of video 1 (incorrect for video 0)
            [0.8, 0.0],  # caption of video 0: best-placed one, beaten only by text 1
            [0.0, 0.3],  # caption of video 1
        ]
    )
    # Video 0: best caption 0.8, incorrect texts >= 0.8: text 1 -> rank 2.
    # Video 1: best caption 0.4, incorrect texts >= 0.4: none -> rank 1 (text 3's 0.3 is ignored).
    assert video_to_text_ranks(sim, t2v).tolist() == [2, 1]
    assert text_to_video_ranks(sim, t2v).tolist() == [1, 2, 1, 1]


def test_one_video_gallery_gives_rank_one():
    sim = torch.tensor([[0.3], [-2.0], [5.0]])
    t2v = torch.zeros(3, dtype=torch.long)
    assert text_to_video_ranks(sim, t2v).tolist() == [1, 1, 1]
    assert video_to_text_ranks(sim, t2v).tolist() == [1]
    out = retrieval_metrics(sim, t2v)
    assert out["t2v"]["R@1"] == 100.0 and out["v2t"]["MdR"] == 1.0


def test_negative_scores_are_ranked_like_any_other():
    # Cosine scores can be negative; a negative positive is not "missed".
    sim = torch.tensor([[-0.2, -0.5], [-0.9, -0.1]])
    assert text_to_video_ranks(sim).tolist() == [1, 1]


def test_bucket_is_ranked_against_the_full_gallery():
    sim = torch.eye(4) * 0.5
    sim[0, 3] = 0.9  # text 0 prefers video 3, which is outside its bucket
    sim[2, 1] = 0.8  # video 1 is also scored high by text 2 (outside the video bucket)
    bucket = torch.tensor([True, True, False, False])
    full = retrieval_metrics(sim, text_subset=bucket, video_subset=bucket)
    within = retrieval_metrics(sim[bucket][:, bucket])
    t2v_ref = ref_t2v(sim.numpy(), np.arange(4))[bucket.numpy()]
    v2t_ref = ref_v2t(sim.numpy(), np.arange(4))[bucket.numpy()]
    assert t2v_ref.tolist() == [2, 1] and v2t_ref.tolist() == [1, 2]
    assert_summary_equal(full["t2v"], ref_summary(t2v_ref))
    assert_summary_equal(full["v2t"], ref_summary(v2t_ref))
    assert within["t2v"]["R@1"] == 100.0 and full["t2v"]["R@1"] == 50.0
    assert within["v2t"]["MnR"] == 1.0 and full["v2t"]["MnR"] == 1.5


def test_subset_with_several_captions_and_map():
    sim, t2v = random_case(7, 30, 3, 1)
    rng = np.random.default_rng(7)
    text_mask, video_mask = rng.random(len(t2v)) < 0.3, rng.random(30) < 0.5
    out = retrieval_metrics(
        torch.from_numpy(sim),
        torch.from_numpy(t2v),
        text_subset=torch.from_numpy(text_mask),
        video_subset=torch.from_numpy(video_mask),
    )
    assert_summary_equal(out["t2v"], ref_summary(ref_t2v(sim, t2v)[text_mask]))
    assert_summary_equal(out["v2t"], ref_summary(ref_v2t(sim, t2v)[video_mask]))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 9, 10, 101, 1000])
def test_median_rank_follows_numpy_for_odd_and_even_counts(n):
    ranks = np.random.default_rng(n).integers(1, 200, n)
    got = summarize_ranks(torch.from_numpy(ranks))
    assert got["MdR"] == float(np.median(ranks))
    assert "numpy" in MDR_CONVENTION and "two middle" in MDR_CONVENTION


def test_mean_reciprocal_rank_hand_computed():
    # 1/1 + 1/2 + 1/4 + 1/5 = 1.95 over 4 queries = 0.4875 -> 48.75 %
    got = summarize_ranks(torch.tensor([1, 2, 4, 5]))
    assert got["MRR"] == pytest.approx(48.75, abs=1e-12)
    assert got["MnR"] == 3.0
    # every query first: 100 %; one query at rank 10: 10 %
    assert summarize_ranks(torch.tensor([1, 1, 1]))["MRR"] == 100.0
    assert summarize_ranks(torch.tensor([10]))["MRR"] == pytest.approx(10.0, abs=1e-12)


def test_summary_of_no_queries_is_nan_with_zero_count():
    out = summarize_ranks(torch.zeros(0, dtype=torch.long))
    assert out["n_queries"] == 0
    assert all(np.isnan(out[k]) for k in KEYS[:-1])


# ------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_raise(bad):
    sim = torch.rand(5, 5)
    sim[3, 1] = bad
    sim[4, 4] = bad
    for fn in (text_to_video_ranks, video_to_text_ranks, retrieval_metrics):
        with pytest.raises(NonFiniteScoresError, match=r"2 non-finite.*\[3, 1\]"):
            fn(sim)
    assert issubclass(NonFiniteScoresError, ValueError)
    with pytest.raises(NonFiniteScoresError):
        video_to_text_ranks(sim, v2t="reference")


def test_shape_and_map_errors_are_clear():
    sim = torch.rand(4, 3)
    with pytest.raises(ValueError, match="2-D"):
        text_to_video_ranks(torch.rand(4))
    with pytest.raises(ValueError, match="not square"):
        text_to_video_ranks(sim)
    with pytest.raises(ValueError, match=r"shape \[4\]"):
        text_to_video_ranks(sim, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="outside"):
        text_to_video_ranks(sim, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="outside"):
        video_to_text_ranks(sim, torch.tensor([0, 1, -1, 2]))
    with pytest.raises(ValueError, match="integers"):
        text_to_video_ranks(sim, torch.tensor([0.0, 1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="no text"):
        video_to_text_ranks(sim, torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="text_subset"):
        retrieval_metrics(sim, torch.tensor([0, 1, 2, 0]), text_subset=torch.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="video_subset"):
        retrieval_metrics(sim, torch.tensor([0, 1, 2, 0]), video_subset=torch.ones(3))
    with pytest.raises(ValueError, match="1-based"):
        summarize_ranks(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="unknown v2t"):
        video_to_text_ranks(sim, torch.tensor([0, 1, 2, 0]), v2t="max")
    with pytest.raises(ValueError, match="no text"):
        video_to_text_ranks(sim, torch.tensor([0, 0, 1, 1]), v2t="reference")


# ------------------------------------------------------------------ v2t reference convention


def ref_v2t_reference(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
    """Max over each video's captions first (CLIP4Clip / X-Pool), then rank with ties against."""
    n_video = sim.shape[1]
    reduced = np.stack([sim[t2v == k].max(axis=0) for k in range(n_video)])  # (Nv caps, Nv)
    ranks = []
    for j in range(n_video):
        own = reduced[j, j]
        ranks.append(1 + sum(1 for k in range(n_video) if k != j and reduced[k, j] >= own))
    return np.array(ranks)


@pytest.mark.parametrize(
    ("seed", "n_video", "captions", "decimals"),
    [(20, 30, 3, None), (21, 25, 4, 1), (22, 40, 2, 0), (23, 17, 5, None)],
)
def test_v2t_reference_equals_numpy_max_over_captions(seed, n_video, captions, decimals):
    sim, t2v = random_case(seed, n_video, captions, decimals)
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    expected = ref_v2t_reference(sim, t2v)
    got = video_to_text_ranks(sim_t, t2v_t, v2t="reference")
    np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(
        video_to_text_ranks(sim_t.float(), t2v_t, v2t="reference").numpy(),
        ref_v2t_reference(sim.astype(np.float32), t2v),
    )
    out = retrieval_metrics(sim_t, t2v_t, v2t="reference")
    assert_summary_equal(out["v2t"], ref_summary(expected))
    assert_summary_equal(out["t2v"], ref_summary(ref_t2v(sim, t2v)))  # t2v is unaffected


def test_v2t_conventions_agree_with_one_caption_per_video_and_differ_with_several():
    sim, t2v = random_case(24, 30, 1, 1)
    sim_t = torch.from_numpy(sim)
    assert torch.equal(
        video_to_text_ranks(sim_t, torch.from_numpy(t2v)),
        video_to_text_ranks(sim_t, torch.from_numpy(t2v), v2t="reference"),
    )
    # Video 0's only caption scores 0.5; video 1 has three captions above it: best-caption counts
    # three rivals, the reference reduction counts one rival video.
    sim = torch.tensor([[0.5, 0.0], [0.6, 0.9], [0.7, 0.8], [0.8, 0.7]])
    t2v = torch.tensor([0, 1, 1, 1])
    assert video_to_text_ranks(sim, t2v).tolist() == [4, 1]
    assert video_to_text_ranks(sim, t2v, v2t="reference").tolist() == [2, 1]
    assert set(V2T_CONVENTIONS) == {"best-caption", "reference"}


# ----------------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_deterministic_and_contains_point_estimate():
    sim, t2v = random_case(10, 300, 1, None)
    ranks = text_to_video_ranks(torch.from_numpy(sim), torch.from_numpy(t2v))
    point = summarize_ranks(ranks)
    ci = bootstrap_ci(ranks, n_boot=500, seed=3)
    assert ci == bootstrap_ci(ranks, n_boot=500, seed=3)
    assert ci != bootstrap_ci(ranks, n_boot=500, seed=4)
    assert set(ci) == set(KEYS[:-1])
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key
    narrow = bootstrap_ci(ranks, n_boot=500, seed=3, level=0.5)
    assert narrow["MnR"][1] - narrow["MnR"][0] < ci["MnR"][1] - ci["MnR"][0]


def test_bootstrap_mean_interval_matches_normal_approximation():
    ranks = np.random.default_rng(11).integers(1, 100, 2000)
    lo, hi = bootstrap_ci(torch.from_numpy(ranks), n_boot=2000, seed=0)["MnR"]
    half_width = 1.96 * ranks.std(ddof=1) / np.sqrt(len(ranks))
    assert lo == pytest.approx(ranks.mean() - half_width, abs=0.15 * half_width)
    assert hi == pytest.approx(ranks.mean() + half_width, abs=0.15 * half_width)


def test_bootstrap_does_not_depend_on_batch_size(monkeypatch):
    ranks = torch.from_numpy(np.random.default_rng(12).integers(1, 50, 37))
    whole = bootstrap_ci(ranks, n_boot=64, seed=1)
    monkeypatch.setattr(M, "_BOOT_ELEMENTS", 37 * 5)  # batches of 5 resamples
    assert bootstrap_ci(ranks, n_boot=64, seed=1) == whole


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(torch.tensor([1, 2]), level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(torch.tensor([1, 2]), n_boot=0)


# -------------------------------------------------------------------- two-level bootstrap


def ref_stat(ranks: np.ndarray, key: str) -> float:
    if key == "MdR":
        return float(np.median(ranks))
    if key == "MnR":
        return float(np.mean(ranks))
    if key == "MRR":
        return 100.0 * float(np.mean(1.0 / ranks))
    return 100.0 * float(np.mean(ranks <= int(key[2:])))


def ref_two_level(per_seed, seed_idx, query_idx, key, level=0.95):
    """Plain nested loops over resamples and slots, on the module's resampling indices."""
    n_boot, n_slots = seed_idx.shape
    boots = []
    for b in range(n_boot):
        values = []
        for slot in range(n_slots):
            ranks = per_seed[seed_idx[b, slot]]
            values.append(ref_stat(ranks[query_idx[b, slot]], key))
        boots.append(np.mean(values))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.array(boots), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def ref_paired(per_a, per_b, seed_idx, query_idx, key, level=0.95):
    n_boot, n_slots = seed_idx.shape
    boots = []
    for b in range(n_boot):
        diffs = []
        for slot in range(n_slots):
            q = query_idx[b, slot]
            s = seed_idx[b, slot]
            diffs.append(ref_stat(per_a[s][q], key) - ref_stat(per_b[s][q], key))
        boots.append(np.mean(diffs))
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(np.array(boots), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@pytest.mark.parametrize(("n_seeds", "n_queries"), [(1, 9), (2, 10), (3, 7), (4, 1)])
def test_two_level_bootstrap_matches_nested_loop_reference(n_seeds, n_queries):
    rng = np.random.default_rng(40 + n_seeds)
    per_seed = [rng.integers(1, 30, n_queries) for _ in range(n_seeds)]
    n_boot, seed = 60, 7
    seed_idx, query_idx = (t.numpy() for t in bootstrap_indices(n_seeds, n_queries, n_boot, seed))
    assert seed_idx.shape == (n_boot, n_seeds) and query_idx.shape == (n_boot, n_seeds, n_queries)
    if n_seeds > 1:
        assert len(np.unique(seed_idx)) > 1  # seeds really are resampled
    got = two_level_bootstrap_ci(per_seed, n_boot=n_boot, seed=seed)
    assert list(got) == list(BOOTSTRAP_KEYS)
    for key in BOOTSTRAP_KEYS:
        expected = ref_two_level(per_seed, seed_idx, query_idx, key)
        assert got[key] == pytest.approx(expected, rel=1e-12, abs=1e-12), key
    # Same seed, same interval; a mapping seed -> ranks is read in sorted seed order.
    assert two_level_bootstrap_ci(per_seed, n_boot=n_boot, seed=seed) == got
    mapping = {10 * (n_seeds - i): r for i, r in enumerate(per_seed)}  # keys in reverse order
    assert two_level_bootstrap_ci(mapping, n_boot=n_boot, seed=seed) == (
        two_level_bootstrap_ci(per_seed[::-1], n_boot=n_boot, seed=seed)
    )


def test_two_level_bootstrap_does_not_depend_on_block_size(monkeypatch):
    rng = np.random.default_rng(41)
    per_seed = [torch.from_numpy(rng.integers(1, 50, 23)) for _ in range(3)]
    whole = two_level_bootstrap_ci(per_seed, n_boot=50, seed=2)
    indices = bootstrap_indices(3, 23, 50, seed=2)
    monkeypatch.setattr(M, "_BOOT_ELEMENTS", 3 * 23 * 4)  # blocks of 4 resamples
    assert two_level_bootstrap_ci(per_seed, n_boot=50, seed=2) == whole
    for before, after in zip(indices, bootstrap_indices(3, 23, 50, seed=2)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("n", [1, 2, 37, 300])
def test_two_level_with_one_seed_is_the_query_bootstrap(n):
    ranks = torch.from_numpy(np.random.default_rng(n).integers(1, 100, n))
    for seed in (0, 5):
        assert two_level_bootstrap_ci([ranks], n_boot=300, seed=seed) == bootstrap_ci(
            ranks, n_boot=300, seed=seed
        )
        assert two_level_bootstrap_ci({3: ranks.numpy()}, n_boot=300, seed=seed) == bootstrap_ci(
            ranks, n_boot=300, seed=seed
        )


def test_two_level_interval_widens_with_training_variance():
    rng = np.random.default_rng(42)
    good = rng.integers(1, 3, 200)
    bad = rng.integers(2, 8, 200)
    spread = two_level_bootstrap_ci([good, bad, good], n_boot=400, seed=0)["MnR"]
    query_only = two_level_bootstrap_ci([good], n_boot=400, seed=0)["MnR"]
    assert spread[1] - spread[0] > 3 * (query_only[1] - query_only[0])


def test_two_level_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one seed"):
        two_level_bootstrap_ci([])
    with pytest.raises(ValueError, match="same queries"):
        two_level_bootstrap_ci([[1, 2, 3], [1, 2]])
    with pytest.raises(ValueError, match="at least one rank"):
        two_level_bootstrap_ci([[], []])
    with pytest.raises(ValueError, match="1-based"):
        two_level_bootstrap_ci([[0, 1]])
    with pytest.raises(ValueError, match="integers"):
        two_level_bootstrap_ci([[1.5, 2.0]])
    with pytest.raises(ValueError, match="unknown metric"):
        two_level_bootstrap_ci([[1, 2]], keys=["MAP"])


@pytest.mark.parametrize("key", ["R@1", "R@5", "MdR", "MnR"])
def test_paired_bootstrap_matches_nested_loop_reference(key):
    rng = np.random.default_rng(43)
    seeds = [3, 1, 2]
    per_a = {s: rng.integers(1, 12, 11) for s in seeds}
    per_b = {s: rng.integers(1, 12, 11) for s in seeds}
    n_boot, seed = 80, 4
    got = paired_two_level_bootstrap(per_a, per_b, key, n_boot=n_boot, seed=seed)
    assert got.seeds == (1, 2, 3) and got.n_queries == 11 and got.n_seeds == 3
    seed_idx, query_idx = (t.numpy() for t in bootstrap_indices(3, 11, n_boot, seed))
    ordered_a = [per_a[s] for s in (1, 2, 3)]
    ordered_b = [per_b[s] for s in (1, 2, 3)]
    lo, hi = ref_paired(ordered_a, ordered_b, seed_idx, query_idx, key)
    assert got.lo == pytest.approx(lo, abs=1e-9) and got.hi == pytest.approx(hi, abs=1e-9)
    per_seed = [ref_stat(a, key) - ref_stat(b, key) for a, b in zip(ordered_a, ordered_b)]
    assert got.per_seed == pytest.approx(per_seed)
    assert got.diff == pytest.approx(np.mean(per_seed))
    sign = np.sign(got.diff)
    assert got.seeds_held == sum(1 for d in per_seed if np.sign(d) == sign)


def test_paired_bootstrap_pairs_queries_by_id_and_seeds_by_value():
    rng = np.random.default_rng(44)
    ids = np.arange(100, 130)
    per_a = {0: rng.integers(1, 5, 30), 1: rng.integers(1, 5, 30)}
    per_b = {0: rng.integers(1, 9, 30), 1: rng.integers(1, 9, 30), 7: rng.integers(1, 9, 30)}
    base = paired_two_level_bootstrap(per_a, per_b, "R@1", n_boot=100, seed=1)
    assert base.seeds == (0, 1)  # seed 7 has no partner
    # b's queries come in another order, but with their ids: the same pairs, the same answer.
    perm = rng.permutation(30)
    shuffled_b = {s: r[perm] for s, r in per_b.items()}
    by_id = paired_two_level_bootstrap(
        per_a,
        shuffled_b,
        "R@1",
        n_boot=100,
        seed=1,
        query_ids_a={s: ids for s in per_a},
        query_ids_b={s: ids[perm] for s in shuffled_b},
    )
    assert (by_id.diff, by_id.lo, by_id.hi) == pytest.approx((base.diff, base.lo, base.hi))
    with pytest.raises(ValueError, match="different query ids"):
        paired_two_level_bootstrap(
            per_a,
            per_b,
            query_ids_a={s: ids for s in per_a},
            query_ids_b={s: ids + 1 for s in per_b},
        )
    with pytest.raises(ValueError, match="no seed in common"):
        paired_two_level_bootstrap({0: [1, 2]}, {1: [1, 2]})
    with pytest.raises(ValueError, match="same queries"):
        paired_two_level_bootstrap({0: [1, 2]}, {0: [1, 2, 3]})


def test_order_that_reverses_in_another_seed_is_not_a_finding():
    # Seed 0: a clearly beats b over queries; seed 1: b clearly beats a.
    a = {0: np.array([1] * 80 + [5] * 20), 1: np.array([1] * 20 + [5] * 80)}
    b = {0: np.array([1] * 20 + [5] * 80), 1: np.array([1] * 70 + [5] * 30)}
    one_seed = paired_two_level_bootstrap({0: a[0]}, {0: b[0]}, "R@1", n_boot=500, seed=0)
    assert one_seed.excludes_zero and one_seed.lo > 0  # a finding with seed 0 alone
    both = paired_two_level_bootstrap(a, b, "R@1", n_boot=500, seed=0)
    assert both.diff == pytest.approx(5.0)  # (60 - 50) / 2
    assert not both.excludes_zero and both.lo < 0 < both.hi
    assert both.seeds_held == 1 and both.n_seeds == 2


# ----------------------------------------------------------------------------- docs and device


def test_docstring_examples_run():
    result = doctest.testmod(M, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10
    assert result.failed == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    sim, t2v = random_case(13, 200, 3, 1)
    sim_t, t2v_t = torch.from_numpy(sim).float(), torch.from_numpy(t2v)
    cpu = retrieval_metrics(sim_t, t2v_t)
    gpu = retrieval_metrics(sim_t.cuda(), t2v_t.cuda())
    assert cpu == gpu
    ranks = text_to_video_ranks(sim_t, t2v_t)
    assert bootstrap_ci(ranks, seed=2) == pytest.approx(bootstrap_ci(ranks.cuda(), seed=2))
    ref = video_to_text_ranks(sim_t, t2v_t, v2t="reference")
    assert torch.equal(video_to_text_ranks(sim_t.cuda(), t2v_t.cuda(), v2t="reference").cpu(), ref)
    per_seed = [ranks, ranks.flip(0)]
    cpu_ci = two_level_bootstrap_ci(per_seed, n_boot=200, seed=3)
    gpu_ci = two_level_bootstrap_ci([r.cuda() for r in per_seed], n_boot=200, seed=3)
    for key in cpu_ci:
        assert gpu_ci[key] == pytest.approx(cpu_ci[key]), key
