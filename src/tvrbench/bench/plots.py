"""PNG plots of a benchmark run (matplotlib, Agg backend; nothing is shown).

``results`` has a ``seed`` column: integer rows per training seed and ``seed = "mean"`` rows
(:func:`tvrbench.bench.seeds.aggregate_seed_rows`). Lines and bands are the seed means with their
two-level 95 % intervals; with several seeds each seed's value is drawn as a faint point. A table
without a ``seed`` column (one seed) is plotted as it is. Every plot gives a method the same
colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tvrbench.bench.report import SYNTHETIC_BANNER, bucket_order
from tvrbench.bench.seeds import count_seeds, per_seed_rows, summary_rows

if TYPE_CHECKING:
    from tvrbench.bench.qualitative import Sheet


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _per_bucket(results: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Rows of the length buckets (not "all") with ``bucket_pos``, the x position in ``order``."""
    order = bucket_order(results) if order is None else order
    rows = results[results["bucket"].astype(str).isin(order)].copy()
    rows["bucket_pos"] = rows["bucket"].astype(str).map({b: i for i, b in enumerate(order)})
    return rows.sort_values(["method", "bucket_pos"])


def _save(fig, path: Path, dpi: int = 120) -> None:
    import os

    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    os.replace(tmp, path)


def _finish(ax, fig, results: pd.DataFrame, title: str, synthetic: bool, path: Path) -> None:
    order = bucket_order(results)
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_xlabel("video length bucket")
    ax.set_title(title + (f"\n{SYNTHETIC_BANNER}" if synthetic else ""), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    _pyplot().close(fig)


def method_colours(results: pd.DataFrame, gallery: pd.DataFrame | None = None) -> dict[str, str]:
    """One matplotlib colour per method, in the order the methods ran (same in every plot)."""
    methods = list(results["method"].astype(str))
    if gallery is not None and len(gallery) and "method" in gallery:
        methods += list(gallery["method"].astype(str))
    return {m: f"C{i % 10}" for i, m in enumerate(dict.fromkeys(methods))}


def plot_all(
    results: pd.DataFrame, gallery: pd.DataFrame | None, out_dir: Path, synthetic: bool
) -> list[str]:
    """Write the four plots into ``out_dir``; returns their file names."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    n_seeds = count_seeds(results)
    headline = summary_rows(results)
    rows = _per_bucket(headline)
    seed_points = per_seed_rows(results) if n_seeds > 1 else headline.iloc[:0]
    seed_points = _per_bucket(seed_points, bucket_order(headline))
    written = []
    colour = method_colours(results, gallery)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(str(method))
        label = f"{method} (mean of {n_seeds} seeds)" if n_seeds > 1 else str(method)
        ax.plot(g["bucket_pos"], g["t2v_R@1"], marker="o", label=label, color=c)
        if {"t2v_R@1_lo", "t2v_R@1_hi"} <= set(g):
            ax.fill_between(
                g["bucket_pos"],
                g["t2v_R@1_lo"].astype(float),
                g["t2v_R@1_hi"].astype(float),
                alpha=0.2,
                color=c,
            )
    for method, g in seed_points.groupby("method", sort=False):
        ax.scatter(g["bucket_pos"], g["t2v_R@1"], s=12, alpha=0.35, color=colour.get(str(method)))
    if "chance_R@1" in rows and len(rows):
        ax.axhline(float(rows["chance_R@1"].iloc[0]), ls=":", c="grey", label="chance")
    band = "two-level 95 % CI, faint points = single seeds" if n_seeds > 1 else "95 % CI"
    ax.set_ylabel(f"text→video R@1 (%)\n{band}")
    _finish(
        ax,
        fig,
        headline,
        "Accuracy versus video length",
        synthetic,
        out_dir / "accuracy_vs_length.png",
    )
    written.append("accuracy_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(str(method))
        ax.plot(g["bucket_pos"], g["gflops_video"], marker="o", label=f"{method} video", color=c)
        ax.plot(
            g["bucket_pos"], g["gflops_pair"], marker="x", ls="--", label=f"{method} pair", color=c
        )
    ax.set_yscale("log")
    ax.set_ylabel("GFLOPs (multiply-adds)")
    _finish(
        ax, fig, headline, "Encoding and scoring cost", synthetic, out_dir / "gflops_vs_length.png"
    )
    written.append("gflops_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(str(method))
        ax.plot(
            g["bucket_pos"], g["latency_video_ms"], marker="o", label=f"{method} video", color=c
        )
        ax.plot(
            g["bucket_pos"],
            g["latency_query_ms"],
            marker="x",
            ls="--",
            label=f"{method} query",
            color=c,
        )
    ax.set_yscale("log")
    ax.set_ylabel("median latency (ms)")
    _finish(
        ax,
        fig,
        headline,
        "Latency (encode one video / one query)",
        synthetic,
        out_dir / "latency_vs_length.png",
    )
    written.append("latency_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if gallery is not None and len(gallery):
        for method, g in gallery.sort_values("gallery_size").groupby("method", sort=False):
            c = colour.get(str(method))
            ax.plot(g["gallery_size"], g["ms_per_query"], marker="o", label=method, color=c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    ax.set_xlabel("gallery size (cached videos)")
    ax.set_ylabel("time per query (ms)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title(
        "Retrieval cost versus gallery size" + (f"\n{SYNTHETIC_BANNER}" if synthetic else ""),
        fontsize=10,
    )
    _save(fig, out_dir / "cost_vs_gallery.png")
    plt.close(fig)
    written.append("cost_vs_gallery.png")
    return written


STRESS_PLOT = "stress_vs_length.png"


def plot_stress(
    stress: pd.DataFrame,
    out_dir: Path,
    synthetic: bool,
    colours: dict[str, str] | None = None,
) -> str:
    """Accuracy versus injected length (SPEC §6), one line per method; returns the file name.

    Left panel text→video R@1, right panel text→video MnR, each with its interval band.
    ``stress``: rows per method × ``injected_length_s`` (× ``seed``, with ``seed = "mean"`` rows
    as in results.csv) holding the metric and, when known, its ``_lo/_hi`` bounds. Lengths are
    evenly spaced on the x axis (0 = the unchanged gallery). ``colours``: e.g.
    :func:`method_colours` of the results table, so a method keeps its colour across plots.
    """
    plt = _pyplot()
    colour = colours or method_colours(stress)
    headline = summary_rows(stress)
    n_seeds = count_seeds(stress)
    lengths = sorted({float(v) for v in headline["injected_length_s"]})
    pos = {v: i for i, v in enumerate(lengths)}
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    band = "two-level 95 % CI, faint points = single seeds" if n_seeds > 1 else "95 % CI"
    panels = [
        ("t2v_R@1", f"text→video R@1 (%)\n{band}"),
        ("t2v_MnR", "text→video MnR (lower is better)"),
    ]
    for ax, (metric, ylabel) in zip(axes, panels):
        for method, g in headline.groupby("method", sort=False):
            g = g.assign(x=g["injected_length_s"].astype(float).map(pos)).sort_values("x")
            c = colour.get(str(method))
            label = f"{method} (mean of {n_seeds} seeds)" if n_seeds > 1 else str(method)
            ax.plot(g["x"], g[metric].astype(float), marker="o", label=label, color=c)
            if {f"{metric}_lo", f"{metric}_hi"} <= set(g):
                lo, hi = g[f"{metric}_lo"].astype(float), g[f"{metric}_hi"].astype(float)
                ax.fill_between(g["x"], lo, hi, alpha=0.2, color=c)
        if n_seeds > 1:
            points = per_seed_rows(stress)
            for method, g in points.groupby("method", sort=False):
                x = g["injected_length_s"].astype(float).map(pos)
                ax.scatter(x, g[metric].astype(float), s=12, alpha=0.35, color=colour.get(method))
        labels = ["0 (unchanged)" if v == 0 else f"{v:g}" for v in lengths]
        ax.set_xticks(range(len(lengths)), labels)
        ax.set_xlabel("injected length T (s): distractors around each test video")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    title = "Retrieval versus injected video length (controlled-length protocol)"
    fig.suptitle(title + (f"\n{SYNTHETIC_BANNER}" if synthetic else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, Path(out_dir) / STRESS_PLOT)
    plt.close(fig)
    return STRESS_PLOT


def _short_name(name: str, chars: int) -> str:
    """``name`` in at most ``chars`` characters, its middle elided (names differ at both ends)."""
    if len(name) <= chars:
        return name
    tail = chars // 3
    return name[: chars - tail - 1] + "…" + name[-tail:]


def plot_qualitative(
    sheet: Sheet,
    strips: Mapping[int, np.ndarray | None],
    path: Path,
    synthetic: bool,
    top_k: int,
) -> str:
    """The qualitative retrieval sheet (:mod:`tvrbench.bench.qualitative`) as one PNG.

    Per query: a header row (its correct video's strip, the bucket and the wrapped, truncated
    paragraph), then one row per method: its name and the rank of the correct video, then its
    top videos as thumbnail strips, the correct one outlined in green. ``strips``: uint8
    ``[h, w, 3]`` per dataset index (None: unreadable, drawn blank); ``top_k``: the videos listed
    per method (the sheet's ``TOP_K``). Returns the file name.
    """
    import textwrap

    plt = _pyplot()
    heights: list[float] = []
    for panel in sheet.panels:
        heights += [1.15] + [1.0] * len(panel.rows)
    height_in = 0.8 * sum(heights) + 0.9
    fig = plt.figure(figsize=(12.5, height_in))
    grid = fig.add_gridspec(
        len(heights),
        1 + top_k,
        height_ratios=heights,
        width_ratios=[1.25] + [1.0] * top_k,
        hspace=0.55,
        wspace=0.08,
        top=1.0 - 0.7 / height_in,  # the title's room, whatever the number of rows
        bottom=0.2 / height_in,
    )

    def thumb(ax, index: int, label: str, correct: bool) -> None:
        strip = strips.get(index)
        if strip is not None:
            ax.imshow(strip, interpolation="nearest")
        else:
            ax.text(0.5, 0.5, "unreadable", ha="center", va="center", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel(label, fontsize=6.5, labelpad=2)
        for spine in ax.spines.values():
            spine.set_edgecolor("limegreen" if correct else "0.75")
            spine.set_linewidth(4.0 if correct else 0.6)

    r = 0
    for n, panel in enumerate(sheet.panels, 1):
        thumb(
            fig.add_subplot(grid[r, 0]),
            panel.index,
            f"correct: {_short_name(panel.video, 24)}",
            True,
        )
        ax = fig.add_subplot(grid[r, 1:])
        ax.axis("off")
        text = textwrap.shorten(" ".join(panel.paragraph.split()), 330, placeholder=" …")
        wrapped = "\n".join(textwrap.wrap(text, 125)) or "(paragraph unavailable)"
        ax.text(
            0.0,
            1.0,
            f"Query {n} — bucket {panel.bucket}",
            fontsize=9,
            weight="bold",
            va="top",
            transform=ax.transAxes,
        )
        ax.text(0.0, 0.72, wrapped, fontsize=7.5, va="top", transform=ax.transAxes)
        r += 1
        for row in panel.rows:
            ax = fig.add_subplot(grid[r, 0])
            ax.axis("off")
            under = f"rank {row.rank}" if row.rank is not None else row.note
            ax.text(
                0.02,
                0.62,
                row.method,
                fontsize=9,
                weight="bold",
                va="center",
                transform=ax.transAxes,
            )
            ax.text(
                0.02,
                0.25,
                under,
                fontsize=8,
                va="center",
                transform=ax.transAxes,
                color="green" if row.rank is not None and row.rank <= top_k else "black",
            )
            for j in range(top_k):
                ax = fig.add_subplot(grid[r, 1 + j])
                if j < len(row.thumbs):
                    t = row.thumbs[j]
                    thumb(ax, t.video_index, f"{j + 1}. {_short_name(t.video, 20)}", t.correct)
                else:
                    ax.axis("off")
            r += 1
    seeds = sorted(set(sheet.seeds.values()))
    title = (
        f"Text→video top-{top_k} per method (plain similarity; first seed of each method: "
        f"{', '.join(map(str, seeds))}); correct video outlined in green"
    )
    fig.suptitle(title + (f"\n{SYNTHETIC_BANNER}" if synthetic else ""), fontsize=10, y=0.995)
    _save(fig, Path(path), dpi=90)
    plt.close(fig)
    return Path(path).name
