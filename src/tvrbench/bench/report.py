"""The benchmark report: tables and findings computed from the numbers.

Findings (all on text→video R@1):

* the winner of every length bucket and of "all", and whether its lead over the runner-up is
  significant. With per-query ranks available (the runner always has them) the test is a **paired
  bootstrap** of the R@1 difference over the bucket's queries (both methods answer the same
  queries): significant when the 95 % interval of the difference excludes 0. Without ranks it falls
  back to **non-overlapping 95 % intervals** (conservative). The report says which was used.
* accuracy per GFLOP: R@1 divided by the GFLOPs of one (text, video) pair end to end
  (text encoding + video encoding + pair scoring);
* how the ranking of the methods changes from the shortest to the longest bucket.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

SYNTHETIC_BANNER = "SYNTHETIC DATA — these are not DiDeMo numbers"
FAST_PROTOCOL_BANNER = (
    "FAST PROTOCOL — frozen backbone, head-only training on cached features; "
    "not comparable to fine-tuned numbers"
)
PROTOCOL_DESCRIPTIONS = {
    "finetune": "finetune (every method fine-tunes CLIP end to end)",
    "cached_features": (
        "cached_features (frozen backbone, head-only training on features cached once per "
        "split; GFLOPs and latencies measured on the full module)"
    ),
}
METRIC = "t2v_R@1"


def bucket_order(results: pd.DataFrame) -> list[str]:
    """Length buckets in the order they appear (shortest first), without ``"all"``."""
    return [b for b in dict.fromkeys(results["bucket"].astype(str)) if b != "all"]


def paired_bootstrap_r1(
    ranks_a: np.ndarray, ranks_b: np.ndarray, n_boot: int = 1000, seed: int = 0, level=0.95
) -> tuple[float, float, float]:
    """R@1 difference (a − b, percentage points) over the same queries and its percentile
    bootstrap interval, resampling queries jointly. Returns ``(diff, lo, hi)``."""
    hit_a = (np.asarray(ranks_a) <= 1).astype(np.float64)
    hit_b = (np.asarray(ranks_b) <= 1).astype(np.float64)
    if hit_a.shape != hit_b.shape or hit_a.size == 0:
        raise ValueError("paired bootstrap needs two non-empty rank arrays over the same queries")
    diff = 100.0 * (hit_a - hit_b)  # (n,)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, diff.size, size=(n_boot, diff.size))
    boots = diff[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boots, [alpha, 1.0 - alpha])
    return float(diff.mean()), float(lo), float(hi)


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        ax = abs(float(x))
        if ax != 0 and (ax < 10 ** (-digits) or ax >= 1e6):
            return f"{float(x):.3g}"
        return f"{float(x):.{digits}f}"
    return str(x)


def markdown_table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ordinal(i: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(i, f"{i}th")


def _mean_rank_findings(results: pd.DataFrame, buckets: list[str]) -> list[str]:
    """Lowest t2v mean rank per bucket, and whether its 95 % interval clears the runner-up's
    (R@1 only looks at the top of the ranking; MnR sees every query, so the two can disagree)."""
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
    return ["**lowest t2v mean rank** (MnR, lower is better): " + "; ".join(parts) + "."]


def findings(
    results: pd.DataFrame,
    ranks: Mapping[str, Mapping[str, Any]] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[str]:
    """Sentences computed from a results table (one row per method × bucket).

    Args:
        results: needs ``method, bucket, t2v_R@1, t2v_R@1_lo, t2v_R@1_hi`` and, for accuracy per
            GFLOP, ``gflops_text, gflops_video, gflops_pair``.
        ranks: optional per method ``{"ranks_t2v": [n], "bucket": [n] names}`` over the same
            queries in the same order; enables the paired bootstrap.
    """
    out: list[str] = []
    buckets = bucket_order(results)
    methods = list(dict.fromkeys(results["method"]))
    for bucket in [*buckets, "all"]:
        rows = results[results["bucket"].astype(str) == bucket].dropna(subset=[METRIC])
        if len(rows) == 0:
            continue
        rows = rows.sort_values(METRIC, ascending=False)
        best = rows.iloc[0]
        where = "overall" if bucket == "all" else f"bucket {bucket}"
        n_q = int(best["n_queries"]) if "n_queries" in best else None
        head = f"**{where}**" + (f" ({n_q} queries)" if n_q is not None else "")
        if len(rows) == 1:
            out.append(f"{head}: only {best['method']} was run ({_fmt(best[METRIC])} R@1).")
            continue
        second = rows.iloc[1]
        lead = float(best[METRIC] - second[METRIC])
        verdict = _significance(best, second, bucket, ranks, n_boot, seed)
        tie = " (tied)" if lead == 0 else ""
        verb = "ties for first on" if lead == 0 else "wins"
        out.append(
            f"{head}: {best['method']} {verb} t2v R@1 with {_fmt(best[METRIC])} "
            f"[{_fmt(best.get(METRIC + '_lo'))}, {_fmt(best.get(METRIC + '_hi'))}] vs runner-up "
            f"{second['method']} {_fmt(second[METRIC])} "
            f"[{_fmt(second.get(METRIC + '_lo'))}, {_fmt(second.get(METRIC + '_hi'))}]{tie}; "
            f"{verdict}"
        )
    out.extend(_mean_rank_findings(results, [*buckets, "all"]))
    # Accuracy per GFLOP, overall.
    cost_cols = ["gflops_text", "gflops_video", "gflops_pair"]
    overall = results[results["bucket"].astype(str) == "all"]
    if len(overall) and all(c in overall for c in cost_cols):
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
        r_first = _ranking(results, first)
        r_last = _ranking(results, last)
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


def _significance(best, second, bucket, ranks, n_boot: int, seed: int) -> str:
    a, b = str(best["method"]), str(second["method"])
    if ranks and a in ranks and b in ranks:
        ra, rb = _bucket_ranks(ranks[a], bucket), _bucket_ranks(ranks[b], bucket)
        if ra is not None and rb is not None and ra.size and ra.shape == rb.shape:
            diff, lo, hi = paired_bootstrap_r1(ra, rb, n_boot=n_boot, seed=seed)
            sig = lo > 0 or hi < 0
            return (
                f"the difference {diff:+.1f} points has paired-bootstrap 95 % interval "
                f"[{lo:+.1f}, {hi:+.1f}] → "
                + ("**significant**." if sig else "not significant (the interval contains 0).")
            )
    lo_a, hi_b = best.get(METRIC + "_lo"), second.get(METRIC + "_hi")
    if lo_a is None or hi_b is None or math.isnan(float(lo_a)) or math.isnan(float(hi_b)):
        return "no intervals available to judge significance."
    if float(lo_a) > float(hi_b):
        return "the 95 % intervals do not overlap → **significant**."
    return "the 95 % intervals overlap → the difference is not significant."


def _bucket_ranks(entry: Mapping[str, Any], bucket: str) -> np.ndarray | None:
    ranks = entry.get("ranks_t2v")
    if ranks is None:
        return None
    ranks = np.asarray(ranks)
    if bucket == "all":
        return ranks
    names = entry.get("bucket")
    if names is None:
        return None
    return ranks[np.asarray(names).astype(str) == bucket]


def render_report(
    results: pd.DataFrame,
    gallery: pd.DataFrame | None,
    info: Mapping[str, Any],
    finding_lines: Sequence[str],
    plots: Sequence[str] = (),
) -> str:
    """The Markdown report. ``info``: ``data``, ``environment``, ``config``, ``bad_videos``,
    ``run_dir``, ``notes``, ``protocol`` (default ``finetune``; ``cached_features`` puts
    :data:`FAST_PROTOCOL_BANNER` at the top and the bottom) and ``skipped`` (``{method:
    reason}``, one line each)."""
    synthetic = info.get("data") == "synthetic"
    protocol = str(info.get("protocol") or "finetune")
    fast = protocol == "cached_features"
    env = info.get("environment", {})
    cfg = info.get("config", {})
    lines: list[str] = []
    if synthetic:
        lines += [f"> **{SYNTHETIC_BANNER}**", ""]
    if fast:
        lines += [f"> **{FAST_PROTOCOL_BANNER}**", ""]
    lines += ["# tvrbench — text→video retrieval per video length", ""]
    lines += [
        f"- data: {info.get('data')} ({cfg.get('didemo_root') or 'built-in synthetic'}), "
        f"clip_seconds: {cfg.get('clip_seconds')}, backbone: {cfg.get('clip')}",
        f"- device: {env.get('device')} ({env.get('device_name')}), dtype {env.get('dtype')}, "
        f"{env.get('threads')} threads; dense matmul {_fmt(env.get('matmul_gflops_per_s'))} "
        "GFLOP/s (1 FLOP = 1 multiply-add)",
        f"- torch {env.get('torch')}, lightning {env.get('lightning')}, transformers "
        f"{env.get('transformers')}, commit {env.get('git_commit')}",
        "- checkpoints selected on the validation split (val/R@1); test used once.",
        f"- bad videos: {info.get('bad_videos', 0)} (bad_videos.csv)",
        f"- protocol: {PROTOCOL_DESCRIPTIONS.get(protocol, protocol)}",
    ]
    lines += [
        f"- **skipped: {method}** — {reason}"
        for method, reason in (info.get("skipped") or {}).items()
    ]
    lines += [
        "",
        "## Findings",
        "",
    ]
    lines += [f"- {s}" for s in finding_lines] or ["- (no results)"]
    lines += ["", "## Text→video and video→text per length bucket", ""]
    header = [
        "method",
        "bucket",
        "n",
        "dur s",
        "frames",
        "t2v R@1 [95 % CI]",
        "R@5",
        "R@10",
        "MdR",
        "MnR",
        "v2t R@1",
        "v2t MnR",
        "chance R@1",
    ]
    rows = []
    for _, r in results.iterrows():
        rows.append(
            [
                r["method"],
                r["bucket"],
                _fmt(r.get("n_queries")),
                _fmt(r.get("mean_duration_s")),
                _fmt(r.get("mean_frames")),
                f"{_fmt(r['t2v_R@1'])} [{_fmt(r.get('t2v_R@1_lo'))}, {_fmt(r.get('t2v_R@1_hi'))}]",
                _fmt(r.get("t2v_R@5")),
                _fmt(r.get("t2v_R@10")),
                _fmt(r.get("t2v_MdR")),
                _fmt(r.get("t2v_MnR")),
                _fmt(r.get("v2t_R@1")),
                _fmt(r.get("v2t_MnR")),
                _fmt(r.get("chance_R@1"), 2),
            ]
        )
    lines += [markdown_table(rows, header), "", "## Cost per length bucket", ""]
    header = [
        "method",
        "bucket",
        "GFLOPs text",
        "GFLOPs video",
        "GFLOPs pair",
        "query ms (p90)",
        "video ms (p90)",
    ]
    rows = [
        [
            r["method"],
            r["bucket"],
            _fmt(r.get("gflops_text"), 4),
            _fmt(r.get("gflops_video"), 4),
            _fmt(r.get("gflops_pair"), 6),
            f"{_fmt(r.get('latency_query_ms'), 2)} ({_fmt(r.get('latency_query_p90_ms'), 2)})",
            f"{_fmt(r.get('latency_video_ms'), 2)} ({_fmt(r.get('latency_video_p90_ms'), 2)})",
        ]
        for _, r in results.iterrows()
    ]
    lines += [markdown_table(rows, header), ""]
    if gallery is not None and len(gallery):
        lines += ["## Retrieval time per query versus gallery size", ""]
        pivot = gallery.pivot_table(index="method", columns="gallery_size", values="ms_per_query")
        header = ["method", *[f"{int(c):,} videos (ms)" for c in pivot.columns]]
        rows = [[m, *[_fmt(v, 2) for v in pivot.loc[m]]] for m in pivot.index]
        lines += [markdown_table(rows, header), ""]
        if "fraction_of_matmul" in gallery:
            big = gallery.sort_values("gallery_size").groupby("method").tail(1)
            parts = [
                f"{r.method} {100 * r.fraction_of_matmul:.1f} %"
                for r in big.itertuples()
                if not math.isnan(r.fraction_of_matmul)
            ]
            if parts:
                lines += [
                    "Achieved scoring rate at the largest gallery as a fraction of the dense "
                    f"matmul rate: {', '.join(parts)}.",
                    "",
                ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    for note in info.get("notes", []):
        lines += [f"- note: {note}"]
    if synthetic:
        lines += ["", f"> **{SYNTHETIC_BANNER}**"]
    if fast:
        lines += ["", f"> **{FAST_PROTOCOL_BANNER}**"]
    return "\n".join(lines) + "\n"
