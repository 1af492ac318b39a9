"""PNG plots of a benchmark run (matplotlib, Agg backend; nothing is shown)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tvrbench.bench.report import SYNTHETIC_BANNER, bucket_order


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _per_bucket(results: pd.DataFrame) -> pd.DataFrame:
    order = bucket_order(results)
    rows = results[results["bucket"].astype(str).isin(order)].copy()
    rows["bucket_pos"] = rows["bucket"].astype(str).map({b: i for i, b in enumerate(order)})
    return rows.sort_values(["method", "bucket_pos"])


def _save(fig, path: Path) -> None:
    import os

    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
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


def plot_all(
    results: pd.DataFrame, gallery: pd.DataFrame | None, out_dir: Path, synthetic: bool
) -> list[str]:
    """Write the four plots into ``out_dir``; returns their file names."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    rows = _per_bucket(results)
    written = []
    # One colour per method in every plot, in the order the methods ran.
    colour = {m: f"C{i}" for i, m in enumerate(dict.fromkeys(results["method"]))}

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(method)
        ax.plot(g["bucket_pos"], g["t2v_R@1"], marker="o", label=method, color=c)
        if {"t2v_R@1_lo", "t2v_R@1_hi"} <= set(g):
            ax.fill_between(g["bucket_pos"], g["t2v_R@1_lo"], g["t2v_R@1_hi"], alpha=0.2, color=c)
    if "chance_R@1" in rows and len(rows):
        ax.axhline(float(rows["chance_R@1"].iloc[0]), ls=":", c="grey", label="chance")
    ax.set_ylabel("text→video R@1 (%) with 95 % CI")
    _finish(
        ax,
        fig,
        results,
        "Accuracy versus video length",
        synthetic,
        out_dir / "accuracy_vs_length.png",
    )
    written.append("accuracy_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(method)
        ax.plot(g["bucket_pos"], g["gflops_video"], marker="o", label=f"{method} video", color=c)
        ax.plot(
            g["bucket_pos"], g["gflops_pair"], marker="x", ls="--", label=f"{method} pair", color=c
        )
    ax.set_yscale("log")
    ax.set_ylabel("GFLOPs (multiply-adds)")
    _finish(
        ax, fig, results, "Encoding and scoring cost", synthetic, out_dir / "gflops_vs_length.png"
    )
    written.append("gflops_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, g in rows.groupby("method", sort=False):
        c = colour.get(method)
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
        results,
        "Latency (encode one video / one query)",
        synthetic,
        out_dir / "latency_vs_length.png",
    )
    written.append("latency_vs_length.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    if gallery is not None and len(gallery):
        for method, g in gallery.sort_values("gallery_size").groupby("method", sort=False):
            c = colour.get(method)
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
