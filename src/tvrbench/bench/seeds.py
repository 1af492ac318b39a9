"""Training variance (SPEC §4.1): per-seed result rows → one aggregated row per method × bucket.

Every method is trained once per seed. The runner writes one row per method × bucket × seed
(``seed`` = the integer training seed, intervals = that seed's query bootstrap) and, from them,
:func:`aggregate_seed_rows` makes one more row per method × bucket with ``seed = "mean"``:

* ``<metric>``: the mean over seeds; ``<metric>_std``: the sample standard deviation over seeds
  (``ddof = 1``; NaN with one seed, where training variance was not measured);
* ``<metric>_lo`` / ``<metric>_hi``: the 95 % two-level bootstrap interval of the seed-mean
  (:func:`tvrbench.metrics.two_level_bootstrap_ci`: resample seeds, then queries); with one seed
  this is that seed's query bootstrap interval;
* every other numeric column (GFLOPs, latencies, durations) averaged over seeds, constant
  columns copied; ``n_seeds`` added.

``<metric>`` runs over :data:`METRIC_COLUMNS` (``t2v_R@1`` … ``v2t_MnR``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from tvrbench.metrics import (
    DIRECTIONS,
    INTERVAL_COLUMNS,
    METRIC_COLUMNS,
    METRIC_NAMES,
    STD_COLUMNS,
    two_level_bootstrap_ci,
)

MEAN_SEED = "mean"
SEED_COLUMNS: tuple[str, ...] = ("seed", "n_seeds")
_RANK_KEYS = {"t2v": "ranks_t2v", "v2t": "ranks_v2t"}
_RECOMPUTED = {
    *METRIC_COLUMNS,
    *STD_COLUMNS,
    *INTERVAL_COLUMNS,
    "seed",
    "n_seeds",
}


def seeds_note(n_seeds: int) -> str:
    """One line for the report, the console and results.json about training variance.

    >>> seeds_note(1)
    'training variance was not measured (1 seed)'
    """
    if n_seeds <= 1:
        return "training variance was not measured (1 seed)"
    return (
        f"training variance measured over {n_seeds} seeds: seed means ± sample std, 95 % "
        "intervals from a two-level bootstrap (seeds, then queries)"
    )


def seed_key(seed: Any) -> Any:
    """A seed as an ``int`` when it is one (JSON turns dict keys into strings)."""
    if isinstance(seed, bool):
        return seed
    try:
        return int(seed)
    except (TypeError, ValueError):
        return seed


def normalise_ranks(
    ranks: Mapping[str, Mapping[Any, Any]] | None,
) -> dict[str, dict[Any, Mapping[str, Any]]]:
    """``{method: {seed: entry}}`` with integer seeds, from that or the one-seed layout.

    ``entry`` is ``{"ranks_t2v": [n], "ranks_v2t": [n], "bucket": [n] names, "index": [n]}``.
    The one-seed layout ``{method: entry}`` (a method file written before seeds existed) becomes
    ``{method: {0: entry}}``.
    """
    out: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for method, per_seed in (ranks or {}).items():
        if per_seed is None:
            continue
        if "ranks_t2v" in per_seed or "ranks_v2t" in per_seed:
            out[method] = {0: per_seed}
        else:
            out[method] = {seed_key(s): e for s, e in per_seed.items() if e is not None}
    return out


def _group_values(
    entry: Mapping[Any, Any], key: str, group: Any, group_key: str
) -> np.ndarray | None:
    """``entry[key]`` restricted to the queries of one group (see :func:`bucket_ranks`)."""
    if group_key not in entry:
        # Layout 2: one sub-entry per group value, e.g. {"30": {"ranks_t2v": [...]}, ...}.
        for candidate in (group, str(group)):
            sub = entry.get(candidate) if isinstance(candidate, (str, int)) else None
            if isinstance(sub, Mapping) and group_key not in sub and key in sub:
                return np.asarray(sub[key], dtype=np.int64)
    values = entry.get(key)
    if values is None:
        return None
    values = np.asarray(values, dtype=np.int64)
    if str(group) == "all":
        return values
    names = entry.get(group_key)
    if names is None:
        return None
    return values[np.asarray(names).astype(str) == str(group)]


def bucket_ranks(
    entry: Mapping[Any, Any], direction: str, bucket: Any, group_key: str = "bucket"
) -> np.ndarray | None:
    """``[n_bucket]`` ranks of one direction (``"t2v"``/``"v2t"``) for one group, or None.

    Two layouts of ``entry``: per-query lists ``{"ranks_t2v": [n], "ranks_v2t": [n],
    group_key: [n] group values}`` (``"all"`` = every query), or one sub-entry per group value
    ``{str(value): {"ranks_t2v": [...], "ranks_v2t": [...]}}``.
    """
    return _group_values(entry, _RANK_KEYS[direction], bucket, group_key)


def bucket_query_ids(
    entry: Mapping[Any, Any], bucket: Any, group_key: str = "bucket"
) -> np.ndarray | None:
    """``[n_bucket]`` query ids (``index``) of one group, or None when the entry has none."""
    return _group_values(entry, "index", bucket, group_key)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _combine(values: list[Any]) -> Any:
    """Constant → the value; numbers → their mean (NaN ignored); otherwise the first value."""
    present = [v for v in values if v is not None and not (_is_number(v) and math.isnan(v))]
    if not present:
        return values[0] if values else None
    if all(v == present[0] for v in present):
        return present[0]
    if all(_is_number(v) for v in present):
        return float(np.mean(present))
    return present[0]


def aggregate_seed_rows(
    rows: Sequence[Mapping[str, Any]],
    ranks: Mapping[str, Mapping[Any, Any]] | None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    group_key: str = "bucket",
) -> list[dict[str, Any]]:
    """One ``seed = "mean"`` row per method × bucket from the per-seed rows.

    Args:
        rows: per-seed result rows, each with ``method``, ``bucket``, ``seed`` (the integer
            training seed) and the :data:`METRIC_COLUMNS`; other columns are averaged or copied.
        ranks: ``{method: {seed: {"ranks_t2v", "ranks_v2t", "bucket", ...}}}``, per-query ranks
            of each seed over the full test set (see :func:`normalise_ranks`); a method or seed
            missing here gets NaN intervals (with one seed: that seed row's own interval).
        group_key: the column that splits a method's rows, ``"bucket"`` by default; e.g.
            ``"injected_length_s"`` for the controlled-length rows, whose rank entries then hold
            a per-query ``injected_length_s`` list or one sub-entry per length
            (:func:`bucket_ranks`).
        n_boot, seed, level: of the two-level bootstrap (``seed`` seeds the resampling, it is not
            a training seed); with one training seed, the same ``n_boot``/``seed`` as the per-seed
            rows' :func:`~tvrbench.metrics.bootstrap_ci` gives the same interval.

    Returns:
        Rows in the order methods and buckets first appear, each with ``seed = "mean"``,
        ``n_seeds``, the means, ``<metric>_std`` and ``<metric>_lo/_hi``.

    Raises:
        ValueError: a row without ``seed``, or two rows for the same method, bucket and seed.
    """
    groups: dict[tuple[str, str], dict[Any, Mapping[str, Any]]] = {}
    for row in rows:
        if "seed" not in row or row["seed"] is None or str(row["seed"]) == MEAN_SEED:
            raise ValueError(
                f"row {row.get('method')!r}/{row.get(group_key)!r} has no integer 'seed'; "
                "aggregate_seed_rows takes per-seed rows"
            )
        if group_key not in row:
            raise ValueError(f"row of method {row.get('method')!r} has no {group_key!r}")
        method_bucket = (str(row["method"]), str(row[group_key]))
        s = seed_key(row["seed"])
        group = groups.setdefault(method_bucket, {})
        if s in group:
            raise ValueError(
                f"two rows for method {method_bucket[0]!r}, {group_key} {method_bucket[1]!r}, "
                f"seed {s}"
            )
        group[s] = row
    all_ranks = normalise_ranks(ranks)
    out: list[dict[str, Any]] = []
    for (method, bucket), per_seed in groups.items():
        seeds = list(per_seed)
        seed_rows = [per_seed[s] for s in seeds]
        agg: dict[str, Any] = {}
        for column in dict.fromkeys(c for r in seed_rows for c in r):
            if column not in _RECOMPUTED:
                agg[column] = _combine([r.get(column) for r in seed_rows])
        agg["method"], agg[group_key] = method, seed_rows[0][group_key]
        agg["seed"], agg["n_seeds"] = MEAN_SEED, len(seeds)
        for column in METRIC_COLUMNS:
            values = np.array([float(r.get(column, math.nan)) for r in seed_rows], dtype=np.float64)
            agg[column] = float(values.mean())
            agg[f"{column}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        method_ranks = all_ranks.get(method, {})
        for direction in DIRECTIONS:
            per_seed_ranks = [
                bucket_ranks(method_ranks[s], direction, bucket, group_key)
                if s in method_ranks
                else None
                for s in seeds
            ]
            if all(r is not None and r.size for r in per_seed_ranks):
                ci = two_level_bootstrap_ci(
                    [r for r in per_seed_ranks if r is not None], n_boot, seed, level
                )
            else:
                ci = {}
            for metric in METRIC_NAMES:
                column = f"{direction}_{metric}"
                if metric in ci:
                    lo, hi = ci[metric]
                elif len(seed_rows) == 1:
                    lo = seed_rows[0].get(f"{column}_lo", math.nan)
                    hi = seed_rows[0].get(f"{column}_hi", math.nan)
                else:
                    lo = hi = math.nan
                agg[f"{column}_lo"], agg[f"{column}_hi"] = lo, hi
        out.append(agg)
    return out


# ------------------------------------------------------------------------- results DataFrames


def _seed_column(results: pd.DataFrame) -> pd.Series | None:
    return results["seed"].astype(str) if "seed" in results else None


def summary_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The headline rows: the ``seed == "mean"`` rows when there are any, else every row."""
    seeds = _seed_column(results)
    if seeds is None or not (seeds == MEAN_SEED).any():
        return results
    return results[seeds == MEAN_SEED]


def per_seed_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows of single training seeds (all rows of a table without a ``seed`` column)."""
    seeds = _seed_column(results)
    if seeds is None:
        return results
    return results[(seeds != MEAN_SEED) & results["seed"].notna()]


def count_seeds(results: pd.DataFrame) -> int:
    """Training seeds per method (the largest count; 1 for a table without seeds)."""
    rows = per_seed_rows(results)
    if "seed" not in rows or not len(rows):
        if "n_seeds" in results and results["n_seeds"].notna().any():
            return int(results["n_seeds"].max())
        return 1
    return int(rows.groupby(rows["method"].astype(str))["seed"].nunique().max())
