"""Retrieval rank metrics shared by every method (SPEC §4): ranks, summaries and one bootstrap.

Conventions
-----------
* A similarity matrix ``sim`` is ``[Nt, Nv]``: one row per text, one column per video; higher is
  more similar. ``text_to_video`` (``[Nt]``, integer) gives each text's video column; ``None``
  means the identity (one text per video, ``Nt == Nv``). Several texts may share a video.
* Ranks are 1-based and **ties count against the query**::

      rank = 1 + #(incorrect gallery items whose score >= the best correct item's score)

  so a constant scorer gets the worst rank (the gallery size), never the best.
  Text→video: each text is a query with one correct video. Video→text (:data:`V2T_CONVENTIONS`):
  ``"best-caption"`` (default) ranks each video's *best-placed* caption among all texts (the other
  captions of the same video are not competitors, every caption of another video is one);
  ``"reference"`` first reduces each video's captions to their max score, as CLIP4Clip and X-Pool
  do, so a rival video counts once however many captions it has.
* ``R@k`` is the percentage of queries with ``rank <= k``; ``MdR`` the median rank with NumPy's
  convention (:data:`MDR_CONVENTION`: mean of the two middle values for an even count); ``MnR``
  the mean rank.
* NaN or inf anywhere in ``sim`` raises :class:`NonFiniteScoresError` rather than being replaced by
  ``-inf`` (which would silently push a broken query to the bottom or to the top).
* Length buckets: a bucket's queries are ranked against the FULL gallery
  (:func:`retrieval_metrics` with ``text_subset``/``video_subset``), so a small bucket does not
  get an easier gallery.

Bootstrap (SPEC §4.1)
---------------------
One resampling scheme serves every interval. For ``S`` training seeds with ``n`` queries each,
resample ``b`` picks ``S`` seeds with replacement (``seed_idx[b]``, ``[S]``), then for each picked
slot ``n`` queries with replacement (``query_idx[b, slot]``, ``[n]``); the statistic of the
resample is the mean over the ``S`` slots of the metric of that slot's resampled ranks. With one
seed no seed index is drawn, so this is exactly the ordinary query bootstrap
(:func:`bootstrap_ci`). :func:`bootstrap_indices` returns the indices used, so anyone can rebuild
an interval by hand. The paired version (:func:`paired_two_level_bootstrap`) feeds the SAME
indices to two methods (seeds paired by seed value, queries by query id).

How this differs from the reference implementations
---------------------------------------------------
* CLIP4Clip sorts each row and looks up the correct score with ``np.where(sx - d == 0)``: on a tie
  the same query yields several positions, so one query is counted more than once and the rank
  list no longer has one entry per query. Its multi-sentence path takes MdR with
  ``torch.median`` (the lower middle value); ours is NumPy's.
* X-Pool ranks with a double ``argsort``; tied scores come out in whatever order the (unstable)
  sort leaves them, so a tie may count for or against the query.
* torchmetrics' ``RetrievalRecall``/``RetrievalMRR`` (≥ 1.8) treat a positive whose score is
  ``<= 0`` as missed; cosine similarities can be negative, so we do not use them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "BOOTSTRAP_KEYS",
    "DIRECTIONS",
    "INTERVAL_COLUMNS",
    "METRICS",
    "METRIC_COLUMNS",
    "METRIC_NAMES",
    "STD_COLUMNS",
    "Metric",
    "metric_named",
    "MDR_CONVENTION",
    "RECALL_KS",
    "TIE_CONVENTION",
    "V2T_CONVENTIONS",
    "NonFiniteScoresError",
    "PairedDifference",
    "bootstrap_ci",
    "bootstrap_indices",
    "paired_two_level_bootstrap",
    "retrieval_metrics",
    "summarize_ranks",
    "text_to_video_ranks",
    "two_level_bootstrap_ci",
    "video_to_text_ranks",
]

RECALL_KS: tuple[int, ...] = (1, 5, 10, 50)
MDR_CONVENTION = "numpy median (mean of the two middle ranks)"
TIE_CONVENTION = "ties count against the query (rank = 1 + #wrong items scored >= the correct one)"
#: ``video_to_text_ranks(..., v2t=name)``: name → what it means (written into every output).
V2T_CONVENTIONS: dict[str, str] = {
    "best-caption": (
        "each video is placed by its best-ranked caption among all texts; every caption of "
        "another video is a rival"
    ),
    "reference": (
        "each video's captions are first reduced to their max score (CLIP4Clip, X-Pool), "
        "so a rival video counts once however many captions it has"
    ),
}
# Elements of a [rows, cols] comparison processed at once (bounds the temporary bool masks).
_CHUNK_ELEMENTS = 1 << 24
# Elements of a [n_boot, n_seeds, n_queries] block of resampled ranks evaluated at once.
_BOOT_ELEMENTS = 1 << 22

RankLike = Tensor | np.ndarray | Sequence[int]


# -------------------------------------------------------------------------- the metric registry


@dataclass(frozen=True)
class Metric:
    """One rank metric: every table, interval and report column is derived from :data:`METRICS`.

    Attributes:
        name: the key in summaries and the column suffix (``t2v_<name>``, ``v2t_<name>``).
        higher_is_better: the direction of "better" (recalls up, ranks down).
        unit: ``"%"`` (a percentage of queries) or ``"rank"``.
        compute: ``ranks [..., n]`` long, 1-based → ``[...]`` float64, the metric over the last
            dimension (batched, so the bootstrap evaluates every resample at once).
        digits: decimals when the report prints it.
        in_report: shown in the report's main table (t2v).
    """

    name: str
    higher_is_better: bool
    unit: str
    compute: Callable[[Tensor], Tensor]
    digits: int = 1
    in_report: bool = True

    def __call__(self, ranks: Tensor) -> float:
        """The metric of ``[n]`` ranks as a float (NaN for no rank)."""
        if ranks.numel() == 0:
            return math.nan
        return float(self.compute(ranks))


def recall_at(k: int) -> Callable[[Tensor], Tensor]:
    """R@k in percent: ``100 · #(rank <= k) / n`` over the last dimension."""

    def compute(ranks: Tensor) -> Tensor:
        hits = (ranks <= k).sum(dim=-1)  # (...,)
        return 100.0 * hits.double() / ranks.shape[-1]

    return compute


def median_rank(ranks: Tensor) -> Tensor:
    """MdR with NumPy's convention (:data:`MDR_CONVENTION`), over the last dimension."""
    n = ranks.shape[-1]
    ordered = ranks.sort(dim=-1).values  # (..., n)
    return ordered[..., [(n - 1) // 2, n // 2]].double().mean(dim=-1)


def mean_rank(ranks: Tensor) -> Tensor:
    """MnR, the mean rank over the last dimension."""
    return ranks.double().mean(dim=-1)


def mean_reciprocal_rank(ranks: Tensor) -> Tensor:
    """MRR in percent, ``100 · mean(1 / rank)`` over the last dimension."""
    return 100.0 * ranks.double().reciprocal().mean(dim=-1)


def _recall(k: int) -> Metric:
    return Metric(f"R@{k}", True, "%", recall_at(k), in_report=k != 50)


#: Every rank metric, in column order.
METRICS: tuple[Metric, ...] = (
    *(_recall(k) for k in RECALL_KS),
    Metric("MdR", False, "rank", median_rank),
    Metric("MnR", False, "rank", mean_rank),
    Metric("MRR", True, "%", mean_reciprocal_rank),
)
METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in METRICS)
#: Statistics of every bootstrap interval, in this order (the registry's names).
BOOTSTRAP_KEYS: tuple[str, ...] = METRIC_NAMES
#: Query directions; a result column is ``<direction>_<metric>``.
DIRECTIONS: tuple[str, ...] = ("t2v", "v2t")
METRIC_COLUMNS: tuple[str, ...] = tuple(f"{d}_{m.name}" for d in DIRECTIONS for m in METRICS)
INTERVAL_COLUMNS: tuple[str, ...] = tuple(f"{c}_{b}" for c in METRIC_COLUMNS for b in ("lo", "hi"))
STD_COLUMNS: tuple[str, ...] = tuple(f"{c}_std" for c in METRIC_COLUMNS)


def metric_named(name: str) -> Metric:
    """The registry's metric ``name``; any other ``R@<k>`` is built on the fly.

    >>> metric_named("MnR").higher_is_better, metric_named("R@20").unit
    (False, '%')
    """
    for metric in METRICS:
        if metric.name == name:
            return metric
    if name.startswith("R@") and name[2:].isdigit():
        return _recall(int(name[2:]))
    raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_NAMES)} or R@<k>")


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


def video_to_text_ranks(
    sim: Tensor, text_to_video: Tensor | None = None, v2t: str = "best-caption"
) -> Tensor:
    """Rank of each video among all texts (ties count against the video).

    Args:
        sim: ``[Nt, Nv]`` similarity scores.
        text_to_video: ``[Nt]`` integer video column of each text; ``None`` = identity.
        v2t: a key of :data:`V2T_CONVENTIONS`. ``"best-caption"``: ``1 + #(incorrect texts scored
            >= the best correct text)``. ``"reference"``: each video's captions are reduced to
            their max score first (``[Nv, Nv]``), then ``1 + #(other videos whose reduced score
            >= the video's own)``. The two agree with one caption per video.

    Returns:
        ``[Nv]`` long, 1-based.

    Raises:
        ValueError: a video has no caption, or an unknown ``v2t``.

    >>> sim = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.95, 0.3]])
    >>> video_to_text_ranks(sim, torch.tensor([0, 1, 1]))  # video 1: best caption is text 1
    tensor([2, 1])
    >>> sim = torch.tensor([[0.1, 0.9, 0.0], [0.5, 0.8, 0.0], [0.6, 0.7, 0.0], [0.0, 0.0, 0.9]])
    >>> t2v = torch.tensor([0, 1, 1, 2])  # video 0: two rival captions, but one rival video
    >>> video_to_text_ranks(sim, t2v), video_to_text_ranks(sim, t2v, v2t="reference")
    (tensor([3, 2, 1]), tensor([2, 2, 1]))
    """
    if v2t not in V2T_CONVENTIONS:
        raise ValueError(f"unknown v2t convention {v2t!r}; expected one of {list(V2T_CONVENTIONS)}")
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
    best_dtype = sim.dtype if sim.is_floating_point() else torch.float64
    if v2t == "reference":
        # reduced[k, j] = max score of video k's captions for video query j.
        reduced = torch.full((n_video, n_video), -math.inf, dtype=best_dtype, device=sim.device)
        index = target[:, None].expand(n_text, n_video)  # (Nt, Nv)
        reduced = reduced.scatter_reduce(0, index, sim.to(best_dtype), reduce="amax")  # (Nv, Nv)
        # As a text→video problem: query j (row of reduced.T), its own video j is "correct".
        return text_to_video_ranks(reduced.T)
    correct = sim.gather(1, target[:, None]).squeeze(1)  # (Nt,)
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


def summarize_ranks(ranks: Tensor) -> dict[str, float | int]:
    """Every registry metric (:data:`METRICS`) and the query count of a set of 1-based ranks.

    An empty set gives NaN for every metric and ``n_queries = 0``.

    >>> out = summarize_ranks(torch.tensor([1, 2, 7, 60]))
    >>> out["R@1"], out["R@10"], out["R@50"], out["MdR"], out["MnR"], round(out["MRR"], 2)
    (25.0, 75.0, 75.0, 4.5, 17.5, 41.49)
    """
    ranks = _check_ranks(ranks)
    out: dict[str, float | int] = {m.name: m(ranks) for m in METRICS}
    out["n_queries"] = int(ranks.numel())
    return out


def retrieval_metrics(
    sim: Tensor,
    text_to_video: Tensor | None = None,
    text_subset: Tensor | None = None,
    video_subset: Tensor | None = None,
    v2t: str = "best-caption",
) -> dict[str, dict[str, float | int]]:
    """Text→video and video→text metrics, optionally for a subset of queries (a length bucket).

    The subsets choose which queries are reported; every query is still ranked against the FULL
    gallery (all videos for t2v, all texts for v2t).

    Args:
        sim: ``[Nt, Nv]`` similarity scores.
        text_to_video: ``[Nt]`` integer video column of each text; ``None`` = identity.
        text_subset: ``[Nt]`` bool, the text queries reported under ``"t2v"``.
        video_subset: ``[Nv]`` bool, the video queries reported under ``"v2t"``.
        v2t: video→text convention, a key of :data:`V2T_CONVENTIONS`.

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
    v2t_ranks = video_to_text_ranks(sim, text_to_video, v2t)  # (Nv,)
    if text_subset is not None:
        t2v_ranks = t2v_ranks[_check_mask(text_subset, n_text, "text_subset").to(sim.device)]
    if video_subset is not None:
        v2t_ranks = v2t_ranks[_check_mask(video_subset, n_video, "video_subset").to(sim.device)]
    return {"t2v": summarize_ranks(t2v_ranks), "v2t": summarize_ranks(v2t_ranks)}


# ------------------------------------------------------------------------------------ bootstrap


def _as_ranks(ranks: RankLike, name: str = "ranks") -> Tensor:
    """``[n]`` long tensor from a tensor, array or list of 1-based ranks (validated)."""
    if not isinstance(ranks, Tensor):
        array = np.asarray(ranks)
        if array.dtype.kind not in "iu" and not (array.dtype.kind == "f" and array.size == 0):
            raise ValueError(f"{name} must hold integers, got dtype {array.dtype}")
        ranks = torch.from_numpy(array.astype(np.int64))
    try:
        return _check_ranks(ranks)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None


def _check_bootstrap_args(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    for key in keys:
        metric_named(key)
    if not keys:
        raise ValueError("no metric requested")
    return tuple(keys)


def _iter_bootstrap_indices(
    n_seeds: int, n_queries: int, n_boot: int, seed: int
) -> Iterator[tuple[int, Tensor, Tensor]]:
    """Yield ``(start, seed_idx [b, S], query_idx [b, S, n])`` blocks covering ``n_boot``.

    The contract behind every interval: one CPU ``torch.Generator`` seeded with ``seed``; first
    the seed indices of all resamples, ``randint(S, (n_boot, S))``, drawn only when ``S > 1`` (with
    one seed they are all 0 and nothing is drawn); then the query indices, ``randint(n, (b, S,
    n))`` block after block. Consecutive blocks continue the same stream, so the result does not
    depend on the block size.
    """
    generator = torch.Generator().manual_seed(seed)
    if n_seeds == 1:
        seed_idx = torch.zeros((n_boot, 1), dtype=torch.long)
    else:
        seed_idx = torch.randint(n_seeds, (n_boot, n_seeds), generator=generator)  # (B, S)
    step = max(1, _BOOT_ELEMENTS // (n_seeds * n_queries))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        query_idx = torch.randint(n_queries, (b, n_seeds, n_queries), generator=generator)
        yield start, seed_idx[start : start + b], query_idx  # (b, S), (b, S, n)


def bootstrap_indices(
    n_seeds: int, n_queries: int, n_boot: int, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """The resampling indices every bootstrap of this module uses (CPU, long).

    Returns:
        ``seed_idx [n_boot, n_seeds]`` (which seed fills each slot of a resample) and
        ``query_idx [n_boot, n_seeds, n_queries]`` (which queries of that seed are drawn).
        Resample ``b``'s statistic is ``mean_s metric(ranks[seed_idx[b, s]][query_idx[b, s]])``.

    >>> seed_idx, query_idx = bootstrap_indices(n_seeds=1, n_queries=4, n_boot=3, seed=0)
    >>> seed_idx.tolist(), tuple(query_idx.shape)
    ([[0], [0], [0]], (3, 1, 4))
    """
    if n_seeds < 1 or n_queries < 1:
        raise ValueError(f"need at least one seed and one query, got {n_seeds}, {n_queries}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    blocks = list(_iter_bootstrap_indices(n_seeds, n_queries, n_boot, seed))
    return torch.cat([s for _, s, _ in blocks]), torch.cat([q for _, _, q in blocks])


def _rank_statistics(sample: Tensor, keys: Sequence[str]) -> Tensor:
    """Registry metrics of resampled ranks: ``sample [..., n]`` long → ``[len(keys), ...]``
    float64 (each :attr:`Metric.compute` over the last dimension)."""
    return torch.stack([metric_named(key).compute(sample) for key in keys])


def _stack_seeds(ranks_per_seed: Sequence[RankLike], what: str = "ranks") -> Tensor:
    """``[S, n]`` long ranks of ``S`` seeds over the same number of queries."""
    if len(ranks_per_seed) == 0:
        raise ValueError(f"{what}: need the ranks of at least one seed")
    tensors = [_as_ranks(r, f"{what} of seed #{i}") for i, r in enumerate(ranks_per_seed)]
    sizes = {int(t.numel()) for t in tensors}
    if len(sizes) != 1:
        raise ValueError(
            f"{what}: every seed must rank the same queries; got query counts {sorted(sizes)}"
        )
    if 0 in sizes:
        raise ValueError(f"{what}: the bootstrap needs at least one rank")
    device = tensors[0].device
    return torch.stack([t.to(device) for t in tensors])  # (S, n)


def _bootstrap_distribution(
    stacks: Sequence[Tensor], keys: Sequence[str], n_boot: int, seed: int
) -> Tensor:
    """Two-level bootstrap distribution of the seed-mean of each metric.

    Args:
        stacks: one or more ``[S, n]`` rank tensors resampled with the SAME indices (paired).

    Returns:
        ``[len(stacks), len(keys), n_boot]`` float64: per resample, the mean over its ``S`` slots
        of the metric of each slot's resampled queries.
    """
    n_seeds, n_queries = stacks[0].shape
    device = stacks[0].device
    out = torch.empty(len(stacks), len(keys), n_boot, dtype=torch.float64, device=device)
    for start, seed_idx, query_idx in _iter_bootstrap_indices(n_seeds, n_queries, n_boot, seed):
        seed_idx, query_idx = seed_idx.to(device), query_idx.to(device)  # (b, S), (b, S, n)
        b = seed_idx.shape[0]
        for i, stack in enumerate(stacks):
            sample = stack[seed_idx[:, :, None], query_idx]  # (b, S, n)
            out[i, :, start : start + b] = _rank_statistics(sample, keys).mean(dim=-1)  # (K, b)
    return out


def _percentile_interval(distribution: Tensor, level: float) -> Tensor:
    """``[2, K]`` lower/upper percentile bounds of ``distribution [K, n_boot]`` (linear)."""
    alpha = (1.0 - level) / 2.0
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64, device=distribution.device)
    return torch.quantile(distribution, q, dim=1)  # (2, K)


def _seed_values(ranks: Mapping[Any, RankLike] | Sequence[RankLike]) -> list[RankLike]:
    if isinstance(ranks, Mapping):
        return [ranks[k] for k in sorted(ranks, key=_seed_sort_key)]
    return list(ranks)


def _seed_sort_key(seed: Any) -> tuple[int, Any]:
    try:
        return (0, int(seed))
    except (TypeError, ValueError):
        return (1, str(seed))


def two_level_bootstrap_ci(
    ranks_per_seed: Mapping[Any, RankLike] | Sequence[RankLike],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    keys: Sequence[str] = BOOTSTRAP_KEYS,
) -> dict[str, tuple[float, float]]:
    """Percentile interval of the seed-mean of each metric: resample seeds, then queries.

    Args:
        ranks_per_seed: per training seed, ``[n]`` 1-based ranks of the same ``n`` queries (a
            sequence, or a mapping seed → ranks taken in sorted seed order).
        n_boot: resamples; ``seed``: seed of the resampling (see :func:`bootstrap_indices`).
        level: coverage of the interval; ``keys``: metrics (``R@<k>``, ``MdR``, ``MnR``).

    Returns:
        ``{metric: (lo, hi)}``. With one seed this is exactly :func:`bootstrap_ci`.

    >>> a, b = torch.tensor([1, 1, 2, 9]), torch.tensor([1, 3, 4, 9])
    >>> two_level_bootstrap_ci([a], n_boot=50, seed=1) == bootstrap_ci(a, n_boot=50, seed=1)
    True
    >>> lo, hi = two_level_bootstrap_ci([a, b], n_boot=200)["R@1"]
    >>> 0.0 <= lo <= 37.5 <= hi <= 100.0
    True
    """
    _check_bootstrap_args(n_boot, level)
    keys = _check_keys(keys)
    stack = _stack_seeds(_seed_values(ranks_per_seed))  # (S, n)
    bounds = _percentile_interval(_bootstrap_distribution([stack], keys, n_boot, seed)[0], level)
    return {key: (float(bounds[0, i]), float(bounds[1, i])) for i, key in enumerate(keys)}


def bootstrap_ci(
    ranks: Tensor, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over queries for every registry metric.

    Queries are resampled with replacement ``n_boot`` times (indices drawn on the CPU with a
    generator seeded by ``seed``, so the result is the same on every device); each statistic's
    interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles (linear interpolation)
    of its bootstrap distribution. This is :func:`two_level_bootstrap_ci` with one seed.

    >>> ci = bootstrap_ci(torch.tensor([1, 1, 2, 3, 8, 20]), n_boot=200, seed=0)
    >>> sorted(ci)
    ['MRR', 'MdR', 'MnR', 'R@1', 'R@10', 'R@5', 'R@50']
    >>> lo, hi = ci["MnR"]
    >>> lo <= 35 / 6 <= hi
    True
    """
    ranks = _check_ranks(ranks)
    if ranks.numel() == 0:
        raise ValueError("bootstrap_ci needs at least one rank")
    return two_level_bootstrap_ci([ranks], n_boot=n_boot, seed=seed, level=level)


@dataclass(frozen=True)
class PairedDifference:
    """A difference ``a − b`` of one metric between two methods, over seeds and queries.

    Attributes:
        metric: ``R@<k>``, ``MdR`` or ``MnR`` (percentage points for recalls, ranks otherwise).
        diff: mean over the paired seeds of each seed's full-test-set difference.
        lo, hi: two-level paired percentile bootstrap interval of ``diff`` at ``level``.
        seeds: the paired seed values (sorted); ``per_seed``: each seed's difference.
        seeds_held: seeds whose difference has the sign of ``diff`` (the order of the mean held;
            with ``diff == 0``, seeds with no difference).
        n_queries: queries per seed.
    """

    metric: str
    diff: float
    lo: float
    hi: float
    level: float
    seeds: tuple[Any, ...]
    per_seed: tuple[float, ...]
    seeds_held: int
    n_queries: int

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies strictly on one side of 0: the difference is a finding."""
        return self.lo > 0.0 or self.hi < 0.0


def _aligned(ranks: RankLike, ids: RankLike | None, what: str) -> tuple[Tensor, Tensor | None]:
    """Ranks sorted by query id (when ids are given), with the sorted ids."""
    tensor = _as_ranks(ranks, what)
    if ids is None:
        return tensor, None
    id_tensor = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if id_tensor.shape != tensor.shape:
        raise ValueError(
            f"{what}: {tuple(id_tensor.shape)} query ids for {tuple(tensor.shape)} ranks"
        )
    order = torch.argsort(id_tensor)
    return tensor[order.to(tensor.device)], id_tensor[order]


def paired_two_level_bootstrap(
    ranks_a: Mapping[Any, RankLike],
    ranks_b: Mapping[Any, RankLike],
    metric: str = "R@1",
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    query_ids_a: Mapping[Any, RankLike] | None = None,
    query_ids_b: Mapping[Any, RankLike] | None = None,
) -> PairedDifference:
    """Two-level paired bootstrap of ``metric(a) − metric(b)``, the test for a finding.

    Both methods get the SAME resampled seeds and, inside each slot, the SAME resampled queries
    (:func:`bootstrap_indices`); the statistic of a resample is the mean over its slots of the
    per-slot difference. Seeds pair by seed value (only seeds both methods ran are used);
    queries pair by position or, when ``query_ids_*`` are given, by query id.

    Args:
        ranks_a, ranks_b: training seed → ``[n]`` 1-based ranks of that seed's test queries.
        metric: ``R@<k>``, ``MdR`` or ``MnR``.
        query_ids_a, query_ids_b: seed → ``[n]`` query ids (e.g. the dataset index), optional.

    Returns:
        :class:`PairedDifference`; the difference is a finding when ``excludes_zero``.

    >>> a = {0: [1, 1, 1, 2], 1: [1, 1, 3, 2]}
    >>> b = {0: [2, 2, 1, 2], 1: [1, 4, 3, 2]}
    >>> d = paired_two_level_bootstrap(a, b, n_boot=100)
    >>> d.diff, d.seeds_held, d.n_seeds
    (37.5, 2, 2)
    """
    _check_bootstrap_args(n_boot, level)
    (metric,) = _check_keys([metric])
    if (query_ids_a is None) != (query_ids_b is None):
        raise ValueError("give query ids for both methods or for neither")
    common = sorted(set(ranks_a) & set(ranks_b), key=_seed_sort_key)
    if not common:
        raise ValueError(
            f"no seed in common: a ran {sorted(ranks_a, key=_seed_sort_key)}, "
            f"b ran {sorted(ranks_b, key=_seed_sort_key)}"
        )
    stack_a, stack_b = [], []
    for s in common:
        ids_a = None if query_ids_a is None else query_ids_a[s]
        ids_b = None if query_ids_b is None else query_ids_b[s]
        ra, sorted_a = _aligned(ranks_a[s], ids_a, f"ranks of a, seed {s}")
        rb, sorted_b = _aligned(ranks_b[s], ids_b, f"ranks of b, seed {s}")
        if ra.shape != rb.shape:
            raise ValueError(
                f"seed {s}: a has {ra.numel()} queries, b has {rb.numel()}; a paired "
                "bootstrap needs the same queries"
            )
        if sorted_a is not None and sorted_b is not None and not torch.equal(sorted_a, sorted_b):
            raise ValueError(f"seed {s}: a and b ranked different query ids")
        stack_a.append(ra)
        stack_b.append(rb)
    a, b = _stack_seeds(stack_a, "ranks of a"), _stack_seeds(stack_b, "ranks of b")  # (S, n)
    b = b.to(a.device)
    per_seed = (_rank_statistics(a, [metric]) - _rank_statistics(b, [metric]))[0]  # (S,)
    diff = float(per_seed.mean())
    dist = _bootstrap_distribution([a, b], [metric], n_boot, seed)  # (2, 1, B)
    bounds = _percentile_interval(dist[0] - dist[1], level)  # (2, 1)
    if diff > 0:
        held = int((per_seed > 0).sum())
    elif diff < 0:
        held = int((per_seed < 0).sum())
    else:
        held = int((per_seed == 0).sum())
    return PairedDifference(
        metric=metric,
        diff=diff,
        lo=float(bounds[0, 0]),
        hi=float(bounds[1, 0]),
        level=level,
        seeds=tuple(common),
        per_seed=tuple(float(v) for v in per_seed),
        seeds_held=held,
        n_queries=int(a.shape[1]),
    )
