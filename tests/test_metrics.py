"""Rank metrics (SPEC §4) against a plain per-query NumPy reference and hand-made cases."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from torchmetrics.utilities.data import dim_zero_sum

import tvrbench.metrics as M
from tvrbench.metrics import (
    NonFiniteScoresError,
    RetrievalRankMetrics,
    TextToVideoRankMetrics,
    VideoToTextRankMetrics,
    bootstrap_ci,
    retrieval_metrics,
    summarize_ranks,
    text_to_video_ranks,
    video_to_text_ranks,
)

KEYS = ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "n_queries"]

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
    out.update(MdR=float(np.median(ranks)), MnR=float(np.mean(ranks)), n_queries=len(ranks))
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
    metric = RetrievalRankMetrics(max_rank=200)
    metric.update(torch.from_numpy(ranks))
    assert metric.compute()["MdR"] == float(np.median(ranks))


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_summary_of_no_queries_is_nan_with_zero_count():
    out = summarize_ranks(torch.zeros(0, dtype=torch.long))
    assert out["n_queries"] == 0
    assert all(np.isnan(out[k]) for k in KEYS[:-1])
    assert RetrievalRankMetrics(max_rank=3).compute()["n_queries"] == 0


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
        TextToVideoRankMetrics(num_videos=5).update(sim, torch.arange(5))


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
    with pytest.raises(ValueError, match="max_rank"):
        RetrievalRankMetrics(max_rank=5).update(torch.tensor([6]))


# ------------------------------------------------------------------------------- torchmetrics


def test_metric_classes_equal_functional_results():
    sim, t2v = random_case(8, 50, 3, 1)
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    n_text, n_video = sim.shape
    expected = retrieval_metrics(sim_t, t2v_t)

    ranks = RetrievalRankMetrics(max_rank=n_video)
    t2v_metric = TextToVideoRankMetrics(num_videos=n_video)
    for rows in torch.arange(n_text).split(17):
        ranks.update(text_to_video_ranks(sim_t[rows], t2v_t[rows]))
        t2v_metric.update(sim_t[rows], t2v_t[rows])
    assert_summary_equal(ranks.compute(), expected["t2v"])
    assert_summary_equal(t2v_metric.compute(), expected["t2v"])

    v2t_metric = VideoToTextRankMetrics(num_texts=n_text)
    for cols in torch.arange(n_video).split(11):
        v2t_metric.update(sim_t[:, cols], t2v_t, cols)
    assert_summary_equal(v2t_metric.compute(), expected["v2t"])


@pytest.mark.filterwarnings("ignore:The ``compute`` method:UserWarning")
def test_states_sum_across_simulated_ranks():
    sim, t2v = random_case(9, 40, 2, 1)
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    n_text, n_video = sim.shape
    expected = retrieval_metrics(sim_t, t2v_t)["t2v"]
    half = n_text // 2 + 1  # uneven halves

    rank0, rank1 = TextToVideoRankMetrics(n_video), TextToVideoRankMetrics(n_video)
    rank0.update(sim_t[:half], t2v_t[:half])
    rank1.update(sim_t[half:], t2v_t[half:])
    whole = TextToVideoRankMetrics(n_video)
    whole.update(sim_t, t2v_t)

    # Every state is declared SUM-reduced, and the sum of the shards' states is the whole's.
    for name in ("hits", "rank_sum", "n_queries", "rank_hist"):
        assert rank0._reductions[name] is dim_zero_sum
        merged = getattr(rank0, name) + getattr(rank1, name)
        torch.testing.assert_close(merged, getattr(whole, name))

    summed = TextToVideoRankMetrics(n_video)
    summed.merge_state({n: getattr(rank0, n) + getattr(rank1, n) for n in rank0._defaults})
    assert_summary_equal(summed.compute(), expected)

    rank0.merge_state(rank1)
    assert_summary_equal(rank0.compute(), expected)
    rank0.reset()
    assert rank0.compute()["n_queries"] == 0


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
    metric = VideoToTextRankMetrics(num_texts=sim_t.shape[0]).cuda()
    metric.update(sim_t.cuda(), t2v_t.cuda(), torch.arange(200, device="cuda"))
    assert_summary_equal(metric.compute(), cpu["v2t"])
