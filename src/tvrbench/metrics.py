"""Retrieval rank metrics shared by every method (SPEC §4): functional core + torchmetrics classes.

Conventions
-----------
* A similarity matrix ``sim`` is ``[Nt, Nv]``: one row per text, one column per video; higher is
  more similar. ``text_to_video`` (``[Nt]``, integer) gives each text's video column; ``None``
  means the identity (one text per video, ``Nt == Nv``). Several texts may share a video.
* Ranks are 1-based and **ties count against the query**::

      rank = 1 + #(incorrect gallery items whose score >= the best correct item's score)

  so a constant scorer gets the worst rank (the gallery size), never the best.
  Text→video: each text is a query with one correct video. Video→text: each video is a query and
  its *best-placed* caption counts (the other captions of the same video are not competitors).
* ``R@k`` is the percentage of queries with ``rank <= k``; ``MdR`` the median rank with NumPy's
  convention (mean of the two middle values for an even count); ``MnR`` the mean rank.
* NaN or inf anywhere in ``sim`` raises :class:`NonFiniteScoresError` rather than being replaced by
  ``-inf`` (which would silently push a broken query to the bottom or to the top).
* Length buckets: a bucket's queries are ranked against the FULL gallery
  (:func:`retrieval_metrics` with ``text_subset``/``video_subset``), so a small bucket does not
  get an easier gallery.

How this differs from the reference implementations
---------------------------------------------------
* CLIP4Clip sorts each row and looks up the correct score with ``np.where(sx - d == 0)``: on a tie
  the same query yields several positions, so one query is counted more than once and the rank
  list no longer has one entry per query.
* X-Pool ranks with a double ``argsort``; tied scores come out in whatever order the (unstable)
  sort leaves them, so a tie may count for or against the query.
* torchmetrics' ``RetrievalRecall``/``RetrievalMRR`` (≥ 1.8) treat a positive whose score is
  ``<= 0`` as missed; cosine similarities can be negative, so we do not use them. Our torchmetrics
  classes are fed with ranks (or similarity rows/columns) and keep SUM-reducible states (hit counts,
  rank sum, query count, rank histogram), which gives exact metrics — the median included — after
  the sum across DDP ranks.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "RECALL_KS",
    "NonFiniteScoresError",
    "RetrievalRankMetrics",
    "TextToVideoRankMetrics",
    "VideoToTextRankMetrics",
    "bootstrap_ci",
    "retrieval_metrics",
    "summarize_ranks",
    "text_to_video_ranks",
    "video_to_text_ranks",
]

RECALL_KS: tuple[int, ...] = (1, 5, 10, 50)
# Elements of a [rows, cols] comparison processed at once (bounds the temporary bool masks).
_CHUNK_ELEMENTS = 1 << 24
# Elements of a [n_boot, n_queries] resample drawn at once by bootstrap_ci.
_BOOT_ELEMENTS = 1 << 22


class NonFiniteScoresError(ValueError):
    """A similarity matrix holds NaN or inf."""


# ------------------------------------------------------------------------------------ validation


def _check_sim(sim: Tensor, name: str = "similarity matrix") -> None:
    if not isinstance(sim, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(sim).__name__}")
    if sim.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n_text, n_video], got shape {tuple(sim.shape)}")
    if sim.dtype == torch.bool or sim.is_complex():
        raise ValueError(f"{name} must hold real numbers, got dtype {sim.dtype}")
    if sim.is_floating_point():
        finite = torch.isfinite(sim)  # (Nt, Nv)
        if not bool(finite.all()):
            bad = (~finite).nonzero()  # (n_bad, 2)
            row, col = (int(v) for v in bad[0])
            raise NonFiniteScoresError(
                f"{name} {tuple(sim.shape)} has {bad.shape[0]} non-finite entries (NaN or inf); "
                f"first at [{row}, {col}] = {float(sim[row, col])}"
            )


def _check_text_to_video(text_to_video: Tensor | None, n_text: int, n_video: int) -> Tensor:
    """Validated ``[Nt]`` long tensor of video columns (identity when ``None``)."""
    if text_to_video is None:
        if n_text != n_video:
            raise ValueError(
                f"similarity matrix is {n_text}x{n_video} (not square) but no text_to_video map "
                "was given; the identity map needs one text per video"
            )
        return torch.arange(n_text)
    if not isinstance(text_to_video, Tensor):
        raise TypeError(f"text_to_video must be a torch.Tensor, got {type(text_to_video).__name__}")
    if text_to_video.ndim != 1 or text_to_video.shape[0] != n_text:
        raise ValueError(
            f"text_to_video must have shape [{n_text}] (one video column per text), "
            f"got {tuple(text_to_video.shape)}"
        )
    if (
        text_to_video.is_floating_point()
        or text_to_video.is_complex()
        or (text_to_video.dtype == torch.bool)
    ):
        raise ValueError(f"text_to_video must hold integers, got dtype {text_to_video.dtype}")
    if n_text:
        lo, hi = int(text_to_video.min()), int(text_to_video.max())
        if lo < 0 or hi >= n_video:
            bad = int(((text_to_video < 0) | (text_to_video >= n_video)).sum())
            raise ValueError(
                f"text_to_video has {bad} entries outside [0, {n_video}) (min {lo}, max {hi})"
            )
    return text_to_video.long()


def _check_mask(mask: Tensor, length: int, name: str) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor mask")
    if mask.shape != (length,):
        raise ValueError(f"{name} must have shape [{length}], got {tuple(mask.shape)}")
    return mask


def _check_ranks(ranks: Tensor) -> Tensor:
    if not isinstance(ranks, Tensor):
        raise TypeError(f"ranks must be a torch.Tensor, got {type(ranks).__name__}")
    if ranks.ndim != 1:
        raise ValueError(f"ranks must be 1-D [n_queries], got shape {tuple(ranks.shape)}")
    if ranks.is_floating_point() or ranks.is_complex() or ranks.dtype == torch.bool:
        raise ValueError(f"ranks must be integers, got dtype {ranks.dtype}")
    if ranks.numel() and int(ranks.min()) < 1:
        raise ValueError(f"ranks are 1-based; got a rank of {int(ranks.min())}")
    return ranks.long()


# ------------------------------------------------------------------------------------ rank maths


def text_to_video_ranks(sim: Tensor, text_to_video: Tensor | None = None) -> Tensor:
    """Rank of each text's correct video among all videos (ties count against the text).

    Args:
        sim: ``[Nt, Nv]`` similarity scores.
        text_to_video: ``[Nt]`` integer video column of each text; ``None`` = identity.

    Returns:
        ``[Nt]`` long, 1-based: ``1 + #(other videos scored >= the correct one)``.

    >>> sim = torch.tensor([[0.9, 0.1, 0.9], [0.2, 0.8, 0.3], [0.5, 0.5, 0.5]])
    >>> text_to_video_ranks(sim)  # row 0 ties with one wrong video, row 2 with two
    tensor([2, 1, 3])
    >>> text_to_video_ranks(sim, torch.tensor([2, 0, 1]))
    tensor([2, 3, 3])
    """
    _check_sim(sim)
    n_text, n_video = sim.shape
    target = _check_text_to_video(text_to_video, n_text, n_video).to(sim.device)
    ranks = torch.empty(n_text, dtype=torch.long, device=sim.device)
    step = max(1, _CHUNK_ELEMENTS // max(n_video, 1))
    for start in range(0, n_text, step):
        rows = sim[start : start + step]  # (b, Nv)
        correct = rows.gather(1, target[start : start + step, None])  # (b, 1)
        # The correct video is itself counted by ">=", which supplies the "1 +".
        ranks[start : start + step] = (rows >= correct).sum(dim=1)
    return ranks


def video_to_text_ranks(sim: Tensor, text_to_video: Tensor | None = None) -> Tensor:
    """Rank of each video's best-placed caption among all texts (ties count against the video).

    Args:
        sim: ``[Nt, Nv]`` similarity scores.
        text_to_video: ``[Nt]`` integer video column of each text; ``None`` = identity.

    Returns:
        ``[Nv]`` long, 1-based: ``1 + #(incorrect texts scored >= the best correct text)``.

    Raises:
        ValueError: a video has no caption.

    >>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.95, 0.3]])
    >>> video_to_text_ranks(sim, torch.tensor([0, 1, 1]))  # video 1: best caption is text 1
    tensor([2, 1])
    """
    _check_sim(sim)
    n_text, n_video = sim.shape
    target = _check_text_to_video(text_to_video, n_text, n_video).to(sim.device)
    n_captions = torch.bincount(target, minlength=n_video)  # (Nv,)
    if n_video and bool((n_captions == 0).any()):
        missing = (n_captions == 0).nonzero().flatten()
        raise ValueError(
            f"{missing.numel()} of {n_video} videos have no text (first: column "
            f"{int(missing[0])}); video-to-text ranks need at least one caption per video"
        )
    correct = sim.gather(1, target[:, None]).squeeze(1)  # (Nt,)
    best_dtype = sim.dtype if sim.is_floating_point() else torch.float64
    best = torch.full((n_video,), -math.inf, dtype=best_dtype, device=sim.device)
    best = best.scatter_reduce(0, target, correct.to(best_dtype), reduce="amax")  # (Nv,)
    # Count every text scoring >= the best correct one, then take the correct ones back out.
    at_least_best = torch.zeros(n_video, dtype=torch.long, device=sim.device)
    step = max(1, _CHUNK_ELEMENTS // max(n_video, 1))
    for start in range(0, n_text, step):
        rows = sim[start : start + step]  # (b, Nv)
        at_least_best += (rows >= best[None, :]).sum(dim=0)
    correct_at_best = torch.zeros(n_video, dtype=torch.long, device=sim.device)
    correct_at_best.scatter_add_(0, target, (correct >= best[target]).long())
    return 1 + at_least_best - correct_at_best


def _best_positive_ranks(scores: Tensor, positive: Tensor) -> Tensor:
    """Ranks ``[Q]`` of each query's best positive: ``scores [Q, G]``, ``positive [Q, G]`` bool."""
    if not bool(positive.any(dim=1).all()):
        first = int((~positive.any(dim=1)).nonzero()[0])
        raise ValueError(f"query {first} has no correct gallery item")
    if not scores.is_floating_point():
        scores = scores.double()
    neg_inf = torch.tensor(-math.inf, dtype=scores.dtype, device=scores.device)
    best = torch.where(positive, scores, neg_inf).amax(dim=1, keepdim=True)  # (Q, 1)
    return 1 + ((scores >= best) & ~positive).sum(dim=1)


def _recall_key(k: int) -> str:
    return f"R@{k}"


def summarize_ranks(ranks: Tensor) -> dict[str, float | int]:
    """R@1/5/10/50 (percent), MdR, MnR and the query count of a set of 1-based ranks.

    An empty set gives NaN for every metric and ``n_queries = 0``.

    >>> summarize_ranks(torch.tensor([1, 2, 7, 60]))
    {'R@1': 25.0, 'R@5': 50.0, 'R@10': 75.0, 'R@50': 75.0, 'MdR': 4.5, 'MnR': 17.5, 'n_queries': 4}
    """
    ranks = _check_ranks(ranks)
    n = int(ranks.numel())
    out: dict[str, float | int] = {}
    if n == 0:
        out.update({_recall_key(k): math.nan for k in RECALL_KS})
        out.update({"MdR": math.nan, "MnR": math.nan, "n_queries": 0})
        return out
    for k in RECALL_KS:
        out[_recall_key(k)] = 100.0 * int((ranks <= k).sum()) / n
    ordered = ranks.sort().values
    out["MdR"] = (int(ordered[(n - 1) // 2]) + int(ordered[n // 2])) / 2.0
    out["MnR"] = float(ranks.double().mean())
    out["n_queries"] = n
    return out


def retrieval_metrics(
    sim: Tensor,
    text_to_video: Tensor | None = None,
    text_subset: Tensor | None = None,
    video_subset: Tensor | None = None,
) -> dict[str, dict[str, float | int]]:
    """Text→video and video→text metrics, optionally for a subset of queries (a length bucket).

    The subsets choose which queries are reported; every query is still ranked against the FULL
    gallery (all videos for t2v, all texts for v2t).

    Args:
        sim: ``[Nt, Nv]`` similarity scores.
        text_to_video: ``[Nt]`` integer video column of each text; ``None`` = identity.
        text_subset: ``[Nt]`` bool, the text queries reported under ``"t2v"``.
        video_subset: ``[Nv]`` bool, the video queries reported under ``"v2t"``.

    Returns:
        ``{"t2v": summarize_ranks(...), "v2t": summarize_ranks(...)}``.

    >>> sim = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.3], [0.5, 0.9, 0.4]])
    >>> out = retrieval_metrics(sim, text_subset=torch.tensor([False, False, True]))
    >>> out["t2v"]["MnR"], out["t2v"]["n_queries"], out["v2t"]["n_queries"]
    (3.0, 1, 3)
    """
    _check_sim(sim)
    n_text, n_video = sim.shape
    t2v_ranks = text_to_video_ranks(sim, text_to_video)  # (Nt,)
    v2t_ranks = video_to_text_ranks(sim, text_to_video)  # (Nv,)
    if text_subset is not None:
        t2v_ranks = t2v_ranks[_check_mask(text_subset, n_text, "text_subset").to(sim.device)]
    if video_subset is not None:
        v2t_ranks = v2t_ranks[_check_mask(video_subset, n_video, "video_subset").to(sim.device)]
    return {"t2v": summarize_ranks(t2v_ranks), "v2t": summarize_ranks(v2t_ranks)}


def bootstrap_ci(
    ranks: Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over queries for R@1/5/10/50, MdR and MnR.

    Queries are resampled with replacement ``n_boot`` times (indices drawn on the CPU with a
    generator seeded by ``seed``, so the result is the same on every device); each statistic's
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation)
    of its bootstrap distribution.

    >>> ci = bootstrap_ci(torch.tensor([1, 1, 2, 3, 8, 20]), n_boot=200, seed=0)
    >>> sorted(ci)
    ['MdR', 'MnR', 'R@1', 'R@10', 'R@5', 'R@50']
    >>> lo, hi = ci["MnR"]
    >>> lo <= 35 / 6 <= hi
    True
    """
    ranks = _check_ranks(ranks)
    n = int(ranks.numel())
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one rank")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    generator = torch.Generator().manual_seed(seed)
    keys = [_recall_key(k) for k in RECALL_KS] + ["MdR", "MnR"]
    stats = torch.empty(len(keys), n_boot, dtype=torch.float64, device=ranks.device)
    ks = torch.tensor(RECALL_KS, device=ranks.device)
    step = max(1, _BOOT_ELEMENTS // n)
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        idx = torch.randint(n, (b, n), generator=generator).to(ranks.device)  # (b, n)
        sample = ranks[idx].sort(dim=1).values  # (b, n)
        hits = (sample[:, :, None] <= ks).sum(dim=1)  # (b, n_k)
        stats[: len(RECALL_KS), start : start + b] = (100.0 * hits.double() / n).T
        middle = sample[:, [(n - 1) // 2, n // 2]].double()  # (b, 2)
        stats[len(RECALL_KS), start : start + b] = middle.mean(dim=1)
        stats[len(RECALL_KS) + 1, start : start + b] = sample.double().mean(dim=1)
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=ranks.device)
    bounds = torch.quantile(stats, q, dim=1)  # (2, n_stats)
    return {key: (float(bounds[0, i]), float(bounds[1, i])) for i, key in enumerate(keys)}


# ------------------------------------------------------------------------------ torchmetrics


class _RankStatsMetric(Metric):
    """Shared states of the rank metrics; every state is a sum, so DDP sync is exact."""

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    hits: Tensor
    rank_sum: Tensor
    n_queries: Tensor
    rank_hist: Tensor

    def __init__(self, max_rank: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if max_rank < 1:
            raise ValueError(f"max_rank must be >= 1 (the gallery size), got {max_rank}")
        self.max_rank = int(max_rank)
        long = torch.long
        self.add_state("hits", torch.zeros(len(RECALL_KS), dtype=long), dist_reduce_fx="sum")
        self.add_state("rank_sum", torch.zeros((), dtype=long), dist_reduce_fx="sum")
        self.add_state("n_queries", torch.zeros((), dtype=long), dist_reduce_fx="sum")
        # rank_hist[r - 1] = number of queries with rank r: gives the exact median after a sum.
        self.add_state("rank_hist", torch.zeros(self.max_rank, dtype=long), dist_reduce_fx="sum")

    def _add_ranks(self, ranks: Tensor) -> None:
        ranks = _check_ranks(ranks)
        if ranks.numel() and int(ranks.max()) > self.max_rank:
            raise ValueError(
                f"rank {int(ranks.max())} exceeds max_rank={self.max_rank}; set max_rank to the "
                "gallery size"
            )
        ks = torch.tensor(RECALL_KS, device=ranks.device)
        self.hits += (ranks[:, None] <= ks).sum(dim=0)  # (n_k,)
        self.rank_sum += ranks.sum()
        self.n_queries += ranks.numel()
        self.rank_hist += torch.bincount(ranks - 1, minlength=self.max_rank)

    def compute(self) -> dict[str, float | int]:
        """Same dict as :func:`summarize_ranks` on every rank seen (across processes)."""
        n = int(self.n_queries)
        out: dict[str, float | int] = {}
        if n == 0:
            out.update({_recall_key(k): math.nan for k in RECALL_KS})
            out.update({"MdR": math.nan, "MnR": math.nan, "n_queries": 0})
            return out
        for i, k in enumerate(RECALL_KS):
            out[_recall_key(k)] = 100.0 * int(self.hits[i]) / n
        cumulative = self.rank_hist.cumsum(0)  # (max_rank,)
        # The j-th smallest rank (1-based j) is the first r whose cumulative count reaches j.
        positions = torch.tensor([(n + 1) // 2, n // 2 + 1], device=cumulative.device)
        middle = torch.searchsorted(cumulative, positions) + 1  # (2,) ranks
        out["MdR"] = float(middle.double().mean())
        out["MnR"] = int(self.rank_sum) / n
        out["n_queries"] = n
        return out


class RetrievalRankMetrics(_RankStatsMetric):
    """R@1/5/10/50, MdR, MnR accumulated from 1-based ranks (any direction).

    Args:
        max_rank: the largest possible rank, i.e. the gallery size.

    >>> metric = RetrievalRankMetrics(max_rank=100)
    >>> metric.update(torch.tensor([1, 2, 7]))
    >>> metric.update(torch.tensor([60]))
    >>> metric.compute()
    {'R@1': 25.0, 'R@5': 50.0, 'R@10': 75.0, 'R@50': 75.0, 'MdR': 4.5, 'MnR': 17.5, 'n_queries': 4}
    """

    def update(self, ranks: Tensor) -> None:
        """Add ``[Q]`` long ranks."""
        self._add_ranks(ranks)


class TextToVideoRankMetrics(_RankStatsMetric):
    """Text→video metrics fed with rows of the similarity matrix (text queries × FULL gallery).

    Each process may hold a different shard of text queries; all shards rank against every video.

    Args:
        num_videos: gallery size ``Nv`` (the row width and the largest possible rank).

    >>> metric = TextToVideoRankMetrics(num_videos=3)
    >>> metric.update(torch.tensor([[0.9, 0.1, 0.9]]), torch.tensor([0]))
    >>> metric.update(torch.tensor([[0.2, 0.8, 0.3], [0.5, 0.5, 0.5]]), torch.tensor([1, 2]))
    >>> metric.compute()["MnR"]
    2.0
    """

    def __init__(self, num_videos: int, **kwargs) -> None:
        super().__init__(max_rank=num_videos, **kwargs)

    def update(self, sim: Tensor, video_index: Tensor) -> None:
        """Add text queries.

        Args:
            sim: ``[b, Nv]`` scores of ``b`` texts against every video.
            video_index: ``[b]`` correct video column of each text.
        """
        _check_sim(sim, "similarity rows")
        if sim.shape[1] != self.max_rank:
            raise ValueError(
                f"similarity rows have {sim.shape[1]} columns, expected num_videos={self.max_rank}"
            )
        self._add_ranks(text_to_video_ranks(sim, video_index))


class VideoToTextRankMetrics(_RankStatsMetric):
    """Video→text metrics fed with columns of the similarity matrix (video queries × ALL texts).

    Args:
        num_texts: number of texts ``Nt`` in the gallery (the largest possible rank).

    >>> metric = VideoToTextRankMetrics(num_texts=3)
    >>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.95, 0.3]])  # [Nt, Nv]
    >>> text_to_video = torch.tensor([0, 1, 1])
    >>> metric.update(sim[:, :1], text_to_video, torch.tensor([0]))
    >>> metric.update(sim[:, 1:], text_to_video, torch.tensor([1]))
    >>> metric.compute()["MnR"]
    1.5
    """

    def __init__(self, num_texts: int, **kwargs) -> None:
        super().__init__(max_rank=num_texts, **kwargs)

    def update(self, sim: Tensor, text_to_video: Tensor, video_index: Tensor) -> None:
        """Add video queries.

        Args:
            sim: ``[Nt, b]`` scores of every text against ``b`` videos (columns of the full matrix).
            text_to_video: ``[Nt]`` video index of every text (global indices).
            video_index: ``[b]`` global index of each of the ``b`` videos.
        """
        _check_sim(sim, "similarity columns")
        n_text = sim.shape[0]
        if n_text != self.max_rank:
            raise ValueError(f"similarity columns have {n_text} rows, expected {self.max_rank}")
        if video_index.shape != (sim.shape[1],):
            raise ValueError(
                f"video_index must have shape [{sim.shape[1]}], got {tuple(video_index.shape)}"
            )
        if text_to_video.shape != (n_text,):
            raise ValueError(
                f"text_to_video must have shape [{n_text}], got {tuple(text_to_video.shape)}"
            )
        device = sim.device
        positive = video_index.to(device)[:, None] == text_to_video.to(device)[None, :]  # (b, Nt)
        self._add_ranks(_best_positive_ranks(sim.T, positive))
