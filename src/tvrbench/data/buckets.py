"""Length buckets (pure functions).

A bucket table is given by its inner edges ``e_1 < ... < e_{K-1}``: bucket 0 holds values
``< e_1``, bucket i holds ``e_i <= v < e_{i+1}``, the last bucket holds ``v >= e_{K-1}``. Every
value — the extremes included — falls in exactly one bucket. Names read ``"0-18s"``,
``"18-31s"``, ``"31-54s"``, ``"54s+"`` (``"w"`` for word counts, no unit for fractions:
``"0-0.25"``, ``"0.25+"``).

Keys (``bucket_by``): ``"duration"`` — the video's decoded duration in seconds; ``"sampled_span"``
— the part of it that frames are sampled from (``min(duration, clip_seconds)``); ``"words"`` —
the paragraph's word count; ``"described_fraction"`` — annotated seconds / decoded duration
(:func:`described_fractions`), the share of the video that its paragraph talks about. On DiDeMo
the moments cover only the first 30 s, so a longer video is also a less described one: this key
separates the two effects that ``"duration"`` mixes (SPEC §6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BUCKET_KEYS = ("duration", "sampled_span", "words", "described_fraction")
MOMENT_CHUNK_S = 5.0  # DiDeMo's moment unit: chunk k covers [5k, 5k + 5) seconds

Times = Sequence[Sequence[float]]  # one sentence's annotators' (start, end) chunk pairs


def bucket_unit(bucket_by: str) -> str:
    """``"w"`` for word counts, ``"s"`` for seconds, ``""`` for the described fraction."""
    if bucket_by not in BUCKET_KEYS:
        raise ValueError(f"unknown bucket_by {bucket_by!r}; expected one of {BUCKET_KEYS}")
    return {"words": "w", "described_fraction": ""}.get(bucket_by, "s")


def annotated_seconds(
    times: Sequence[Times], duration_s: float, chunk_s: float = MOMENT_CHUNK_S
) -> float:
    """Seconds of a video covered by the union of its sentences' moments.

    Args:
        times: per sentence, the annotators' ``(start, end)`` chunk pairs (inclusive chunk
            indices, DiDeMo's 0..5); every annotator of every sentence counts.
        duration_s: the video's decoded duration; the union is cut to ``[0, duration_s]`` (the
            last 5-s chunk may run past the end of the file).
        chunk_s: seconds per chunk.

    >>> annotated_seconds([[(0, 0), (0, 1)], [(3, 3)]], duration_s=18.0)
    13.0
    """
    spans = sorted(
        (min(a, b) * chunk_s, (max(a, b) + 1) * chunk_s) for sentence in times for a, b in sentence
    )
    total, end = 0.0, 0.0
    for lo, hi in spans:
        lo, hi = max(lo, end, 0.0), min(hi, duration_s)
        if hi > lo:
            total += hi - lo
        end = max(end, hi)
    return total


def described_fractions(annotated_s: Sequence[float], durations_s: Sequence[float]) -> np.ndarray:
    """Annotated seconds / decoded duration ``[V]``, capped at 1 (0 for a zero duration)."""
    a = np.asarray(annotated_s, dtype=np.float64)
    d = np.asarray(durations_s, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(d > 0, a / np.where(d > 0, d, 1.0), 0.0)
    return np.clip(frac, 0.0, 1.0)


def bucket_values(
    bucket_by: str,
    durations_s: Sequence[float],
    num_words: Sequence[int],
    clip_seconds: float | None = None,
    annotated_s: Sequence[float] | None = None,
) -> np.ndarray:
    """The per-video key ``[V]`` for ``bucket_by`` (``annotated_s``, the seconds covered by each
    video's moments (:func:`annotated_seconds`), is needed for ``"described_fraction"``)."""
    bucket_unit(bucket_by)
    if bucket_by == "words":
        return np.asarray(num_words, dtype=np.float64)
    if bucket_by == "described_fraction":
        if annotated_s is None:
            raise ValueError("bucket_by='described_fraction' needs annotated_s (seconds per video)")
        return described_fractions(annotated_s, durations_s)
    values = np.asarray(durations_s, dtype=np.float64)
    if bucket_by == "sampled_span" and clip_seconds is not None:
        values = np.minimum(values, clip_seconds)
    return values


def quantile_edges(values: Sequence[float] | np.ndarray, num_buckets: int) -> list[float]:
    """Inner edges splitting ``values`` into ``num_buckets`` groups of (nearly) equal count.

    With distinct values the sorted values are cut into consecutive groups whose sizes differ by
    at most one. Values that tie (durations in whole seconds, say) are never split across two
    buckets: each cut moves to the nearest boundary between distinct values, so the groups are
    as equal as the ties allow. Each edge is the midpoint between the values either side of its
    cut. Fewer distinct values than buckets give fewer buckets.
    """
    if num_buckets < 1:
        raise ValueError(f"num_buckets must be >= 1, got {num_buckets}")
    v = np.sort(np.asarray(values, dtype=np.float64))
    edges: list[float] = []
    if len(v) == 0:
        return edges
    boundaries = np.flatnonzero(v[1:] > v[:-1]) + 1  # cut positions between distinct values
    sizes = [len(g) for g in np.array_split(np.arange(len(v)), num_buckets)]
    cut, last = 0, 0
    for size in sizes[:-1]:
        cut += size
        free = boundaries[boundaries > last]
        if len(free) == 0:
            break
        p = int(free[np.argmin(np.abs(free - cut))])
        edges.append(float((v[p - 1] + v[p]) / 2))
        last = p
    return edges


def check_edges(edges: Sequence[float]) -> list[float]:
    """Validated inner edges (finite, strictly increasing)."""
    out = [float(e) for e in edges]
    if not all(np.isfinite(out)) or any(b <= a for a, b in zip(out, out[1:])):
        raise ValueError(f"bucket edges must be finite and strictly increasing, got {out}")
    return out


def assign_buckets(values: Sequence[float] | np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bucket id ``[V]`` (int64) of each value: the number of edges ``<= value``."""
    e = np.asarray(check_edges(edges), dtype=np.float64)
    return np.searchsorted(e, np.asarray(values, dtype=np.float64), side="right").astype(np.int64)


def _fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}".rstrip("0").rstrip(".")


def bucket_names(edges: Sequence[float], unit: str = "s") -> list[str]:
    """Readable names, e.g. ``[18, 31, 54]`` → ``["0-18s", "18-31s", "31-54s", "54s+"]``;
    fractions (``unit=""``) keep 3 decimals: ``[0.25, 0.417]`` → ``["0-0.25", "0.25-0.417",
    "0.417+"]``."""
    e = check_edges(edges)
    digits = 3 if unit == "" else 1
    bounds = [0.0, *e]
    names = [f"{_fmt(lo, digits)}-{_fmt(hi, digits)}{unit}" for lo, hi in zip(bounds, e)]
    names.append(f"{_fmt(bounds[-1], digits)}{unit}+")
    return names


def bucket_table(
    values: Sequence[float] | np.ndarray,
    edges: Sequence[float],
    unit: str = "s",
    durations_s: Sequence[float] | None = None,
    num_frames: Sequence[int] | None = None,
) -> list[dict]:
    """Per bucket: ``name``, ``lower``, ``upper`` (None for the open end), ``videos``,
    ``mean_duration_s`` and ``mean_frames`` (None when not given or the bucket is empty)."""
    ids = assign_buckets(values, edges)
    e = check_edges(edges)
    rows = []
    for b, name in enumerate(bucket_names(e, unit)):
        sel = ids == b
        row: dict = {
            "name": name,
            "lower": 0.0 if b == 0 else e[b - 1],
            "upper": e[b] if b < len(e) else None,
            "videos": int(sel.sum()),
            "mean_duration_s": None,
            "mean_frames": None,
        }
        if durations_s is not None and sel.any():
            row["mean_duration_s"] = float(np.asarray(durations_s, dtype=np.float64)[sel].mean())
        if num_frames is not None and sel.any():
            row["mean_frames"] = float(np.asarray(num_frames, dtype=np.float64)[sel].mean())
        rows.append(row)
    return rows
