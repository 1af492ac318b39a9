"""Findings: the sentences of the report computed from the numbers (rendered by
:mod:`tvrbench.bench.report`, which only formats).

Per length bucket and overall (text→video R@1, and t2v mean rank): the winner and whether its
lead over the runner-up is a **finding**. With per-query ranks (the runner always has them) the
test is the **two-level paired bootstrap** of the difference
(:func:`tvrbench.metrics.paired_two_level_bootstrap`: the same resampled training seeds and,
inside each, the same resampled queries for both methods); a finding when its 95 % interval
excludes 0. Each line also says in how many seeds the order held ("3/3 seeds"). Without ranks it
falls back to **non-overlapping 95 % intervals** (conservative). With one seed every verdict says
that training variance was not measured (SPEC §4.1). Also: accuracy per GFLOP (R@1 divided by the
GFLOPs of one (text, video) pair end to end), how the ranking changes from the shortest to the
longest bucket, the same findings per post-processing (:func:`postproc_findings`), and the
controlled-length findings (:func:`stress_findings`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from tvrbench.bench.postproc import label
from tvrbench.bench.report import METRIC, NOT_MEASURED, RanksBySeed, bucket_order
from tvrbench.bench.report import format_value as _fmt
from tvrbench.bench.seeds import (
    bucket_query_ids,
    bucket_ranks,
    count_seeds,
    normalise_ranks,
    per_seed_rows,
    seed_key,
    summary_rows,
)
from tvrbench.metrics import PairedDifference, paired_two_level_bootstrap


def _ordinal(i: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


def _paired(
    ranks: dict[str, dict[Any, Mapping[str, Any]]],
    a: str,
    b: str,
    bucket: str,
    key: str,
    n_boot: int,
    seed: int,
) -> PairedDifference | None:
    """Two-level paired bootstrap of ``key`` (``R@1``, ``MnR``, …) on t2v, ``a − b``, in one
    bucket; None when either method's per-query ranks are missing or do not pair up."""
    if a not in ranks or b not in ranks:
        return None
    per_a: dict[Any, np.ndarray] = {}
    per_b: dict[Any, np.ndarray] = {}
    ids_a: dict[Any, np.ndarray] = {}
    ids_b: dict[Any, np.ndarray] = {}
    for s in set(ranks[a]) & set(ranks[b]):
        ra = bucket_ranks(ranks[a][s], "t2v", bucket)
        rb = bucket_ranks(ranks[b][s], "t2v", bucket)
        if ra is None or rb is None or not ra.size or ra.shape != rb.shape:
            continue
        per_a[s], per_b[s] = ra, rb
        ia, ib = bucket_query_ids(ranks[a][s], bucket), bucket_query_ids(ranks[b][s], bucket)
        if ia is not None and ib is not None:
            ids_a[s], ids_b[s] = ia, ib
    if not per_a:
        return None
    with_ids = len(ids_a) == len(per_a)
    try:
        return paired_two_level_bootstrap(
            per_a,
            per_b,
            metric=key,
            n_boot=n_boot,
            seed=seed,
            query_ids_a=ids_a if with_ids else None,
            query_ids_b=ids_b if with_ids else None,
        )
    except ValueError:  # e.g. the two methods ranked different query ids
        return None


def _order_phrase(d: PairedDifference, a: str, b: str) -> str:
    if d.diff == 0:
        return f"tied in {d.seeds_held}/{d.n_seeds} seeds"
    first, second = (a, b) if d.diff > 0 else (b, a)
    return f"{first} ahead of {second} in {d.seeds_held}/{d.n_seeds} seeds"


def _held_from_rows(
    per_seed: pd.DataFrame | None, a: str, b: str, bucket: str, key: str, higher: bool
) -> str | None:
    """``"a ahead of b in k/S seeds"`` from per-seed rows (no ranks needed), or None."""
    if per_seed is None or "seed" not in per_seed or key not in per_seed or not len(per_seed):
        return None
    rows = per_seed[per_seed["bucket"].astype(str) == bucket]

    def by_seed(method: str) -> pd.Series:
        own = rows[rows["method"].astype(str) == method]
        return pd.Series(own[key].to_numpy(), index=[seed_key(s) for s in own["seed"]])

    va, vb = by_seed(a), by_seed(b)
    common = [s for s in va.index if s in vb.index]
    if not common:
        return None
    sign = 1.0 if higher else -1.0
    wins = sum(1 for s in common if sign * (float(va[s]) - float(vb[s])) > 0)
    return f"{a} ahead of {b} in {wins}/{len(common)} seeds"


def _variance_line(n_seeds: int) -> str:
    if n_seeds <= 1:
        return (
            "**training variance was not measured (1 seed)**: every interval below covers only "
            "which test queries were drawn; retraining with another seed can move R@1 by as much "
            "as the gaps between methods (SPEC §4.1)."
        )
    return (
        f"**training variance**: {n_seeds} seeds per method; numbers are seed means, intervals "
        "come from a two-level bootstrap (seeds, then queries), and a difference is a finding "
        "only when the two-level paired-bootstrap 95 % interval of the difference excludes 0."
    )


def _mean_rank_findings(
    results: pd.DataFrame,
    buckets: list[str],
    ranks: dict[str, dict[Any, Mapping[str, Any]]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_seeds: int = 1,
) -> list[str]:
    """Lowest t2v mean rank per bucket and whether its lead is a finding (the paired bootstrap
    with ranks, else whether the 95 % intervals clear each other). R@1 only looks at the top of
    the ranking; MnR sees every query, so the two can disagree."""
    key = "t2v_MnR"
    if key not in results:
        return []
    parts = []
    for bucket in buckets:
        rows = results[results["bucket"].astype(str) == bucket].dropna(subset=[key])
        if len(rows) < 2:
            continue
        rows = rows.sort_values(key)
        best, second = rows.iloc[0], rows.iloc[1]
        a, b = str(best["method"]), str(second["method"])
        paired = _paired(ranks or {}, a, b, bucket, "MnR", n_boot, seed)
        if paired is not None:
            verdict = (
                f"difference {paired.diff:+.1f} [{paired.lo:+.1f}, {paired.hi:+.1f}], "
                f"{paired.seeds_held}/{paired.n_seeds} seeds → "
                + ("**a finding**" if paired.excludes_zero else "not a finding")
            )
        else:
            lo_2, hi_1 = second.get(key + "_lo"), best.get(key + "_hi")
            if hi_1 is None or lo_2 is None or math.isnan(float(hi_1)) or math.isnan(float(lo_2)):
                verdict = "no intervals"
            elif float(hi_1) < float(lo_2):
                verdict = "95 % intervals do not overlap"
            else:
                verdict = "95 % intervals overlap"
        where = "overall" if bucket == "all" else bucket
        parts.append(
            f"{where}: {best['method']} {_fmt(best[key])} vs {second['method']} "
            f"{_fmt(second[key])} ({verdict})"
        )
    if not parts:
        return []
    method = "two-level paired bootstrap" if ranks else "interval overlap"
    tail = f" ({NOT_MEASURED})" if n_seeds <= 1 else ""
    return [
        f"**lowest t2v mean rank** (MnR, lower is better; {method}): "
        + "; ".join(parts)
        + f"{tail}."
    ]


def findings(
    results: pd.DataFrame,
    ranks: RanksBySeed | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    costs: bool = True,
) -> list[str]:
    """Sentences computed from a results table.

    Args:
        results: rows per method × bucket (× seed): needs ``method, bucket, t2v_R@1,
            t2v_R@1_lo, t2v_R@1_hi`` and, for accuracy per GFLOP, ``gflops_text, gflops_video,
            gflops_pair``. With a ``seed`` column the ``seed == "mean"`` rows are the headline and
            the integer-seed rows count the seeds.
        ranks: ``{method: {seed: {"ranks_t2v": [n], "bucket": [n] names, "index": [n]}}}``,
            per-query test ranks of every training seed (``index`` pairs the queries of two
            methods; without it they pair by position). The one-seed layout ``{method:
            {"ranks_t2v": ..., ...}}`` is accepted too. Enables the paired bootstrap.
        n_boot, seed: resamples and resampling seed of the paired bootstrap.
        costs: add the accuracy-per-GFLOP sentence.

    Returns:
        Markdown sentences; the first says whether training variance was measured.
    """
    headline = summary_rows(results)
    per_seed = per_seed_rows(results) if "seed" in results else None
    all_ranks = normalise_ranks(ranks)
    n_seeds = max([count_seeds(results), *(len(v) for v in all_ranks.values())])
    out: list[str] = [_variance_line(n_seeds)]
    buckets = bucket_order(headline)
    methods = list(dict.fromkeys(headline["method"]))
    for bucket in [*buckets, "all"]:
        rows = headline[headline["bucket"].astype(str) == bucket].dropna(subset=[METRIC])
        if len(rows) == 0:
            continue
        rows = rows.sort_values(METRIC, ascending=False, kind="stable")
        best = rows.iloc[0]
        where = "overall" if bucket == "all" else f"bucket {bucket}"
        n_q = int(best["n_queries"]) if "n_queries" in best else None
        head = f"**{where}**" + (f" ({n_q} queries)" if n_q is not None else "")
        if len(rows) == 1:
            out.append(f"{head}: only {best['method']} was run ({_fmt(best[METRIC])} R@1).")
            continue
        second = rows.iloc[1]
        lead = float(best[METRIC] - second[METRIC])
        verdict = _significance(best, second, bucket, all_ranks, per_seed, n_boot, seed)
        if n_seeds <= 1:
            verdict = verdict.removesuffix(".") + f" ({NOT_MEASURED})."
        tie = " (tied)" if lead == 0 else ""
        verb = "ties for first on" if lead == 0 else "wins"
        out.append(
            f"{head}: {best['method']} {verb} t2v R@1 with {_fmt(best[METRIC])} "
            f"[{_fmt(best.get(METRIC + '_lo'))}, {_fmt(best.get(METRIC + '_hi'))}] vs runner-up "
            f"{second['method']} {_fmt(second[METRIC])} "
            f"[{_fmt(second.get(METRIC + '_lo'))}, {_fmt(second.get(METRIC + '_hi'))}]{tie}; "
            f"{verdict}"
        )
    out.extend(_mean_rank_findings(headline, [*buckets, "all"], all_ranks, n_boot, seed, n_seeds))
    # Accuracy per GFLOP, overall.
    cost_cols = ["gflops_text", "gflops_video", "gflops_pair"]
    overall = headline[headline["bucket"].astype(str) == "all"]
    if costs and len(overall) and all(c in overall for c in cost_cols):
        cost = overall[cost_cols].sum(axis=1)
        per = (overall[METRIC] / cost).where(cost > 0)
        parts = [
            f"{m} {_fmt(float(v), 2)}" for m, v in zip(overall["method"], per) if not math.isnan(v)
        ]
        if parts:
            best_m = overall["method"].iloc[int(np.nanargmax(per.to_numpy()))]
            out.append(
                "**accuracy per GFLOP** (t2v R@1 points per GFLOP of one text encoding + one "
                f"video encoding + one pair score, overall): {', '.join(parts)}; "
                f"most efficient: {best_m}."
            )
    # Ranking change from the shortest to the longest bucket.
    if len(buckets) >= 2 and len(methods) >= 2:
        first, last = buckets[0], buckets[-1]
        r_first = _ranking(headline, first)
        r_last = _ranking(headline, last)
        if r_first and r_last:
            if r_first == r_last:
                out.append(
                    f"**ranking by length**: unchanged from the shortest bucket ({first}) to the "
                    f"longest ({last}): {' > '.join(r_first)}."
                )
            else:
                moves = []
                for m in r_last:
                    if m in r_first:
                        a, b = r_first.index(m) + 1, r_last.index(m) + 1
                        if a != b:
                            moves.append(f"{m} {_ordinal(a)} → {_ordinal(b)}")
                out.append(
                    f"**ranking by length**: shortest bucket ({first}) {' > '.join(r_first)}; "
                    f"longest bucket ({last}) {' > '.join(r_last)} ({'; '.join(moves)})."
                )
    return out


def _ranking(results: pd.DataFrame, bucket: str) -> list[str]:
    rows = results[results["bucket"].astype(str) == bucket].dropna(subset=[METRIC])
    return list(rows.sort_values(METRIC, ascending=False, kind="stable")["method"])


def _significance(
    best: pd.Series,
    second: pd.Series,
    bucket: str,
    ranks: dict[str, dict[Any, Mapping[str, Any]]],
    per_seed: pd.DataFrame | None,
    n_boot: int,
    seed: int,
) -> str:
    a, b = str(best["method"]), str(second["method"])
    paired = _paired(ranks, a, b, bucket, "R@1", n_boot, seed)
    if paired is not None:
        return (
            f"the difference {paired.diff:+.1f} points has two-level paired-bootstrap 95 % "
            f"interval [{paired.lo:+.1f}, {paired.hi:+.1f}] ({paired.n_seeds} seed"
            f"{'s' if paired.n_seeds != 1 else ''} × {paired.n_queries} queries), "
            f"{_order_phrase(paired, a, b)} → "
            + (
                "**a finding**."
                if paired.excludes_zero
                else "not a finding (the interval contains 0)."
            )
        )
    held = _held_from_rows(per_seed, a, b, bucket, METRIC, higher=True)
    held_text = f" ({held})" if held else ""
    lo_a, hi_b = best.get(METRIC + "_lo"), second.get(METRIC + "_hi")
    if lo_a is None or hi_b is None or math.isnan(float(lo_a)) or math.isnan(float(hi_b)):
        return f"no intervals available to judge significance{held_text}."
    if float(lo_a) > float(hi_b):
        return f"the 95 % intervals do not overlap{held_text} → **a finding**."
    return f"the 95 % intervals overlap{held_text} → not a finding."


def postproc_findings(
    results: pd.DataFrame,
    ranks: Mapping[str, RanksBySeed] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[str]:
    """The overall winner and lowest-mean-rank findings (:func:`findings`, same tests) of every
    post-processing other than ``none``, each prefixed ``[DSL]`` / ``[QB-Norm]`` (the per-bucket
    numbers are in the report's post-processing table). ``results`` has a ``postproc`` column;
    ``ranks``: ``{postproc: ranks}``."""
    if "postproc" not in results:
        return []
    out: list[str] = []
    for pp in dict.fromkeys(results["postproc"].astype(str)):
        if pp == "none":
            continue
        rows = results[results["postproc"].astype(str) == pp]
        lines = findings(rows, (ranks or {}).get(pp), n_boot=n_boot, seed=seed, costs=False)
        kept = [ln for ln in lines if ln.startswith(("**overall**", "**lowest t2v mean rank**"))]
        out += [f"[{label(pp)}] {line}" for line in kept]
    return out


def _slope_per_minute(lengths_s: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` against length, per added minute."""
    if len(lengths_s) < 2 or np.ptp(lengths_s) == 0:
        return math.nan
    return float(np.polyfit(lengths_s / 60.0, values, 1)[0])


def _best_and_worst(
    values: dict[str, float], higher_is_better: bool
) -> tuple[tuple[str, float], tuple[str, float]] | None:
    """``((best, value), (worst, value))`` among the finite values; None with fewer than two."""
    finite = {m: v for m, v in values.items() if math.isfinite(v)}
    if len(finite) < 2:
        return None
    order = sorted(finite, key=lambda m: finite[m], reverse=higher_is_better)
    return (order[0], finite[order[0]]), (order[-1], finite[order[-1]])


def stress_findings(stress: pd.DataFrame, metric: str = "t2v_R@1") -> list[str]:
    """Sentences computed from the controlled-length rows (seed means when there are several
    seeds): each method's change from the shortest to the longest injected length (with whether
    the two 95 % intervals are disjoint, and the share of its unchanged value it keeps), the
    least-squares change per added minute of ``metric`` and of the mean rank, which method
    degrades least by each, and the lengths at which the ranking of the methods changes.
    Values within twice chance (``chance_R@1``) are called out: there is nothing left to rank."""
    table = summary_rows(stress)
    if not len(table) or metric not in table:
        return []
    table = table.assign(T=table["injected_length_s"].astype(float))
    lengths = sorted(table["T"].unique())
    if len(lengths) < 2:
        return []
    lo_t, hi_t = lengths[0], lengths[-1]
    rank_metric = metric.split("_")[0] + "_MnR"
    chance = float(table["chance_R@1"].max()) if "chance_R@1" in table else math.nan
    lines: list[str] = []
    slopes: dict[str, float] = {}
    rank_slopes: dict[str, float] = {}
    for method, g in table.groupby("method", sort=False):
        g = g.sort_values("T")
        values = g[metric].astype(float).to_numpy()
        slopes[str(method)] = _slope_per_minute(g["T"].to_numpy(), values)
        if rank_metric in g:
            ranks = g[rank_metric].astype(float).to_numpy()
            rank_slopes[str(method)] = _slope_per_minute(g["T"].to_numpy(), ranks)
        first, last = g.iloc[0], g.iloc[-1]
        disjoint = (
            float(last.get(f"{metric}_hi", math.nan)) < float(first.get(f"{metric}_lo", math.nan))
        ) or (
            float(last.get(f"{metric}_lo", math.nan)) > float(first.get(f"{metric}_hi", math.nan))
        )
        verdict = "95 % intervals disjoint" if disjoint else "95 % intervals overlap"
        kept = (
            f", keeps {100 * last[metric] / first[metric]:.0f} % of it"
            if float(first[metric]) > 0
            else ""
        )
        floor = (
            f" (within twice chance, {chance:.2g})"
            if math.isfinite(chance) and float(last[metric]) <= 2 * chance
            else ""
        )
        rank_part = (
            f"; {rank_metric} {first[rank_metric]:.1f} → {last[rank_metric]:.1f}"
            if rank_metric in g
            else ""
        )
        lines.append(
            f"{method}: {metric} {first[metric]:.1f} at T = {first['T']:g} s → {last[metric]:.1f} "
            f"at T = {last['T']:g} s{floor} ({last[metric] - first[metric]:+.1f} points{kept}; "
            f"{verdict}); {slopes[str(method)]:+.2f} points per added minute (least squares over "
            f"{len(g)} lengths){rank_part}."
        )
    head: list[str] = []
    extremes = _best_and_worst(slopes, higher_is_better=True)
    if extremes:
        (best, b), (worst, w) = extremes
        head.append(
            f"Degrades least as length grows: {best} ({b:+.2f} {metric} points per added "
            f"minute); most: {worst} ({w:+.2f}), over T = {lo_t:g}–{hi_t:g} s (a method that "
            "starts lower has less to lose: see the share each keeps)."
        )
    extremes = _best_and_worst(rank_slopes, higher_is_better=False)
    if extremes:
        (best, b), (worst, w) = extremes
        head.append(
            f"Mean rank grows least: {best} ({b:+.2f} {rank_metric} per added minute); most: "
            f"{worst} ({w:+.2f})."
        )
    lines = head + lines
    previous: list[str] | None = None
    changes: list[str] = []
    for t in lengths:
        at = table[table["T"] == t].sort_values(metric, ascending=False)
        order = [str(m) for m in at["method"]]
        if previous is not None and order != previous:
            changes.append(f"at T = {t:g} s the order becomes {' > '.join(order)}")
        previous = order
    first_order = table[table["T"] == lo_t].sort_values(metric, ascending=False)["method"]
    if changes:
        lines.append(
            f"Ranking by {metric} at T = {lo_t:g} s: {' > '.join(map(str, first_order))}; "
            + "; ".join(changes)
            + " (point estimates; see the intervals)."
        )
    elif len(slopes) > 1:
        lines.append(
            f"The ranking by {metric} ({' > '.join(map(str, first_order))}) is the same at every "
            "injected length (point estimates)."
        )
    return lines
