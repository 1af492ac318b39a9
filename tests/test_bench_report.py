"""Report findings, tables, plots and environment on constructed result tables."""

from __future__ import annotations

import platform

import numpy as np
import pandas as pd
import pytest
import torch

from tvrbench.bench import report
from tvrbench.bench.environment import collect_environment, cpu_model, device_name
from tvrbench.bench.findings import findings
from tvrbench.bench.plots import method_colours, plot_all, plot_stress
from tvrbench.bench.report import ReportInfo, render_report
from tvrbench.bench.seeds import aggregate_seed_rows
from tvrbench.metrics import MDR_CONVENTION, bootstrap_ci, paired_two_level_bootstrap


def table(rows):
    cols = ["method", "bucket", "n_queries", "t2v_R@1", "t2v_R@1_lo", "t2v_R@1_hi"]
    df = pd.DataFrame(rows, columns=cols)
    df["gflops_text"], df["gflops_video"], df["gflops_pair"] = 1.0, 2.0, 1.0
    return df


def test_clear_winner_is_significant():
    df = table(
        [
            ("A", "short", 100, 60.0, 55.0, 65.0),
            ("B", "short", 100, 30.0, 25.0, 35.0),
            ("A", "long", 100, 50.0, 45.0, 55.0),
            ("B", "long", 100, 20.0, 15.0, 25.0),
            ("A", "all", 200, 55.0, 51.0, 59.0),
            ("B", "all", 200, 25.0, 21.0, 29.0),
        ]
    )
    lines = findings(df)
    assert lines[0].startswith("**training variance was not measured (1 seed)**")
    overall = next(s for s in lines if s.startswith("**overall**"))
    assert "A wins" in overall and "do not overlap" in overall and "**a finding**" in overall
    assert "1 seed: training variance not measured" in overall
    assert any("unchanged" in s for s in lines)
    assert any("most efficient: A" in s for s in lines)


def test_overlapping_intervals_not_significant():
    df = table(
        [
            ("A", "all", 50, 42.0, 30.0, 54.0),
            ("B", "all", 50, 40.0, 28.0, 52.0),
        ]
    )
    (_, line, *_) = findings(df)
    assert "A wins" in line and "not a finding" in line


def test_ranking_change_is_reported():
    df = table(
        [
            ("A", "short", 10, 60.0, 50.0, 70.0),
            ("B", "short", 10, 40.0, 30.0, 50.0),
            ("A", "long", 10, 20.0, 10.0, 30.0),
            ("B", "long", 10, 45.0, 35.0, 55.0),
            ("A", "all", 20, 40.0, 30.0, 50.0),
            ("B", "all", 20, 42.0, 32.0, 52.0),
        ]
    )
    text = " ".join(findings(df))
    assert "A 1st → 2nd" in text and "B 2nd → 1st" in text


def test_paired_bootstrap_against_hand_computation():
    a = np.array([1] * 80 + [5] * 20)
    b = np.array([1] * 20 + [5] * 80)
    d = paired_two_level_bootstrap({0: a}, {0: b}, "R@1", n_boot=500, seed=0)
    assert d.diff == 60.0 and 0 < d.lo <= d.diff <= d.hi and d.seeds_held == 1
    # Paired ranks drive the report's verdict when given (the one-seed layout is accepted).
    df = table([("A", "all", 100, 80.0, 70.0, 88.0), ("B", "all", 100, 20.0, 12.0, 30.0)])
    ranks = {"A": {"ranks_t2v": a, "bucket": ["x"] * 100}, "B": {"ranks_t2v": b}}
    (_, line, *_) = findings(df, ranks, n_boot=500, seed=0)
    assert "two-level paired-bootstrap" in line and "**a finding**" in line
    assert f"[{d.lo:+.1f}, {d.hi:+.1f}]" in line
    assert "A ahead of B in 1/1 seeds" in line and "training variance not measured" in line
    same = {"A": {"ranks_t2v": a}, "B": {"ranks_t2v": a}}
    (_, line, *_) = findings(df, same)
    assert "not a finding" in line and "tied in 1/1 seeds" in line


def test_render_report_banner():
    df = table([("A", "all", 10, 50.0, 40.0, 60.0)])
    text = render_report(df, None, ReportInfo(data="synthetic"), findings(df))
    assert text.splitlines()[0] == "> **SYNTHETIC DATA — these are not DiDeMo numbers**"
    assert "only A was run" in text


def test_mean_rank_finding_can_disagree_with_r_at_1():
    # a wins R@1 but b has the lower mean rank, with clearly separated intervals.
    table = pd.DataFrame(
        [
            {"method": "a", "bucket": "all", "n_queries": 100, "t2v_R@1": 20.0,
             "t2v_R@1_lo": 12.0, "t2v_R@1_hi": 28.0,
             "t2v_MnR": 120.0, "t2v_MnR_lo": 110.0, "t2v_MnR_hi": 130.0},
            {"method": "b", "bucket": "all", "n_queries": 100, "t2v_R@1": 15.0,
             "t2v_R@1_lo": 8.0, "t2v_R@1_hi": 22.0,
             "t2v_MnR": 60.0, "t2v_MnR_lo": 50.0, "t2v_MnR_hi": 70.0},
        ]
    )  # fmt: skip
    lines = findings(table)
    mnr = [line for line in lines if "mean rank" in line and "MnR" in line]
    assert len(mnr) == 1
    assert "overall: b 60.0 vs a 120.0 (95 % intervals do not overlap)" in mnr[0]
    table.loc[1, "t2v_MnR_hi"] = 115.0  # now the intervals overlap
    assert "(95 % intervals overlap)" in [x for x in findings(table) if "MnR" in x][0]


# ----------------------------------------------------------------------------- several seeds


def seeded_run(r1_by_seed: dict[str, dict[int, int]], n: int = 100, n_boot: int = 300):
    """Per-seed rows + aggregated rows and ranks, for methods whose t2v R@1 per seed is given as
    the number of the ``n`` queries ranked first (the others get rank 5)."""
    ranks, rows = {}, []
    for method, per_seed in r1_by_seed.items():
        ranks[method] = {}
        for seed, hits in per_seed.items():
            r = np.array([1] * hits + [5] * (n - hits))
            entry = {
                "index": list(range(n)),
                "ranks_t2v": r.tolist(),
                "ranks_v2t": r.tolist(),
                "bucket": ["x"] * n,
            }
            ranks[method][seed] = entry
            row = {"method": method, "bucket": "all", "seed": seed, "n_queries": n}
            for d in ("t2v", "v2t"):
                ci = bootstrap_ci(torch.from_numpy(r), n_boot=n_boot, seed=0)
                row.update({f"{d}_R@{k}": 100.0 * np.mean(r <= k) for k in (1, 5, 10, 50)})
                row.update({f"{d}_MdR": float(np.median(r)), f"{d}_MnR": float(r.mean())})
                for key, (lo, hi) in ci.items():
                    row[f"{d}_{key}_lo"], row[f"{d}_{key}_hi"] = lo, hi
            row.update(gflops_text=1.0, gflops_video=2.0, gflops_pair=1.0)
            rows.append(row)
    rows += aggregate_seed_rows(rows, ranks, n_boot=n_boot, seed=0)
    return pd.DataFrame(rows), ranks


def test_order_reversed_in_one_seed_is_not_a_finding():
    # Seed 0 alone: A 80 vs B 20 R@1, a clear finding. Seed 1 reverses it: A 20 vs B 70.
    results, ranks = seeded_run({"A": {0: 80, 1: 20}, "B": {0: 20, 1: 70}})
    lines = findings(results, ranks, n_boot=300, seed=0)
    assert lines[0].startswith("**training variance**: 2 seeds per method")
    overall = next(s for s in lines if s.startswith("**overall**"))
    assert "A wins" in overall and "with 50.0" in overall  # headline = the seed means
    assert "(2 seeds × 100 queries)" in overall
    assert "A ahead of B in 1/2 seeds" in overall and "not a finding" in overall
    assert "training variance not measured" not in overall
    # The same data with seed 0 only is a finding (and says variance was not measured).
    one = results[results["seed"].astype(str) == "0"]
    one_ranks = {m: {0: v[0]} for m, v in ranks.items()}
    one_rows = aggregate_seed_rows(one.to_dict("records"), one_ranks, n_boot=300)
    table1 = pd.concat([one, pd.DataFrame(one_rows)], ignore_index=True)
    lines = findings(table1, one_ranks, n_boot=300, seed=0)
    overall = next(s for s in lines if s.startswith("**overall**"))
    assert "**a finding**" in overall and "1/1 seeds" in overall
    assert "training variance not measured" in overall
    assert lines[0].startswith("**training variance was not measured (1 seed)**")


def test_consistent_order_across_seeds_is_a_finding():
    results, ranks = seeded_run({"A": {0: 80, 1: 75, 2: 85}, "B": {0: 20, 1: 30, 2: 25}})
    overall = next(s for s in findings(results, ranks) if s.startswith("**overall**"))
    assert "**a finding**" in overall and "A ahead of B in 3/3 seeds" in overall
    # Without ranks the per-seed rows still tell in how many seeds the order held.
    overall = next(s for s in findings(results) if s.startswith("**overall**"))
    assert "A ahead of B in 3/3 seeds" in overall and "do not overlap" in overall


def test_mean_rank_finding_uses_the_paired_bootstrap_with_ranks():
    results, ranks = seeded_run({"A": {0: 80, 1: 75}, "B": {0: 20, 1: 30}})
    (mnr,) = [s for s in findings(results, ranks) if "MnR" in s]
    assert "two-level paired bootstrap" in mnr and "2/2 seeds → **a finding**" in mnr


def test_report_with_several_seeds_shows_spread_and_per_seed_table():
    results, ranks = seeded_run({"A": {0: 80, 1: 60}, "B": {0: 20, 1: 30}})
    info = ReportInfo(data="didemo", seeds=[0, 1])
    text = render_report(results, None, info, findings(results, ranks))
    assert "t2v R@1 ± std [95 % CI]" in text
    assert "| A | all | 100 |" in text and " 70.0 ± 14.1 [" in text
    assert "## t2v R@1 per training seed" in text and "| A | all | 80.0 | 60.0 |" in text
    assert "- seeds: 0, 1 — training variance measured over 2 seeds" in text
    assert f"MdR = {MDR_CONVENTION}" in text and "v2t convention: best-caption" in text
    # Headline tables hold one row per method x bucket, not the per-seed rows.
    assert text.count("| A | all | 100 |") == 1


def test_report_with_one_seed_says_variance_not_measured():
    df = table([("A", "all", 10, 50.0, 40.0, 60.0), ("B", "all", 10, 40.0, 30.0, 50.0)])
    info = ReportInfo(data="synthetic", v2t_convention="reference")
    text = render_report(df, None, info, findings(df))
    assert text.splitlines()[0] == f"> **{report.SYNTHETIC_BANNER}**"
    assert "training variance was not measured (1 seed)" in text
    assert "v2t convention: reference (each video's captions" in text
    assert "± std" not in text and "per training seed" not in text


def test_plots_with_one_and_several_seeds(tmp_path):
    several, _ = seeded_run({"A": {0: 80, 1: 60}, "B": {0: 20, 1: 30}})
    several = pd.concat([several, several.assign(bucket="y")], ignore_index=True)
    for col in ("latency_query_ms", "latency_video_ms", "chance_R@1"):
        several[col] = 1.0
    gallery = pd.DataFrame(
        {"method": ["B", "A", "B", "A"], "gallery_size": [10, 10, 100, 100], "ms_per_query": 1.0}
    )
    one = several[several["seed"].astype(str) == "0"].drop(columns=["seed", "n_seeds"])
    for name, frame in (("several", several), ("one", one)):
        out = tmp_path / name
        out.mkdir()
        written = plot_all(frame, gallery, out, synthetic=True)
        assert len(written) == 4 and all((out / f).stat().st_size > 0 for f in written)
    # One colour per method, in the order the methods ran, also for the gallery plot.
    assert method_colours(several, gallery) == {"A": "C0", "B": "C1"}


# ------------------------------------------------------------------------------- environment


def test_cpu_model_names_the_processor_not_the_architecture(tmp_path):
    intel = tmp_path / "intel"
    intel.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel\t\t: 85\n"
        "model name\t: Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz\n\nprocessor\t: 1\n"
    )
    assert cpu_model(intel) == "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 108.00\nHardware\t: BCM2835\n")
    assert cpu_model(arm) == "BCM2835"
    assert cpu_model(tmp_path / "missing")  # falls back, never empty
    here = cpu_model()
    assert here and here != platform.machine()
    assert device_name(torch.device("cpu")) == here
    env = collect_environment(torch.device("cpu"), measure_matmul=False)
    assert env["device_name"] == env["cpu_model"] == here and env["cuda"] is None
    assert "gpu_name" not in env


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_environment_names_gpu_driver_and_cuda():
    env = collect_environment(torch.device("cuda"), measure_matmul=False)
    assert env["gpu_name"] == torch.cuda.get_device_name(0) == env["device_name"]
    assert env["cuda"] == torch.version.cuda and env["gpu_memory_gib"] > 0
    assert env["gpu_driver"] is None or env["gpu_driver"][0].isdigit()
    assert env["cpu_model"] != platform.machine()


def test_stress_plot_and_report_sections(tmp_path):
    rows = []
    for method, base in (("A", 40.0), ("B", 30.0)):
        for seed in (0, 1):
            for t in (0, 30, 60):
                r1 = base - t / 6 + seed
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "injected_length_s": t,
                        "n_queries": 50,
                        "t2v_R@1": r1,
                        "t2v_R@1_lo": r1 - 5,
                        "t2v_R@1_hi": r1 + 5,
                        "t2v_MnR": 10.0 + t,
                        "mean_relevant_fraction": 30 / (30 + t),
                    }
                )
    stress = pd.DataFrame(rows)
    stress = pd.concat(
        [stress, pd.DataFrame(aggregate_seed_rows(rows, None, group_key="injected_length_s"))],
        ignore_index=True,
    )
    name = plot_stress(stress, tmp_path, synthetic=True)
    assert (tmp_path / name).stat().st_size > 0
    one = stress[stress["seed"].astype(str) == "0"]
    assert plot_stress(one, tmp_path, synthetic=False) == name
    df = table([("A", "all", 10, 50.0, 40.0, 60.0), ("B", "all", 10, 40.0, 30.0, 50.0)])
    info = {
        "data": "didemo",
        "stress": stress,
        "stress_findings": ["A loses 10 R@1 from 0 to 60 s."],
        "published": {"A": {"R@1": 43.4, "MnR": 17.5, "source": "paper A", "protocol": "31 s"}},
        "published_methods": ["A", "B"],
        "recipes": {
            "A": {"recipe": "shared", "lr": 1e-4, "precision": "bf16-mixed"},
            "B": "published",
        },
        "training_variance": "training variance measured over 2 seeds",
    }
    text = render_report(df, None, ReportInfo(**info), findings(df))
    assert "## Controlled length" in text and "- A loses 10 R@1 from 0 to 60 s." in text
    assert "| A | 60 | 50 | 0.33 | 30.5 ± 0.7 [–, –] |" in text  # no ranks: no interval
    assert "| A | 43.4 | – | – | – | 17.5 | paper A | 31 s |" in text
    assert "| B | – | – | – | – | – | none published for DiDeMo | – |" in text
    assert "## Training recipe of every method (as run)" in text
    assert "| A | shared | 0.0001 |" in text and "training precision: bf16-mixed" in text
    assert "- recipes: A: shared; B: published" in text
    assert "— training variance measured over 2 seeds" in text


def test_ablation_groups_and_section():
    groups = report.ablation_groups(
        ["meanp", "xclip", "glccl_no_csc", "glccl", "glccl_no_temporal"], {"glccl": ("xclip",)}
    )
    assert groups == [["xclip", "glccl_no_csc", "glccl_no_temporal", "glccl"]]
    assert report.ablation_groups(["meanp", "xclip", "glccl"], {"glccl": ("xclip",)}) == []
    rows = [
        (m, b, 10, r1, r1 - 5, r1 + 5)
        for m, base in (("xclip", 20.0), ("glccl_no_csc", 24.0), ("glccl", 25.0))
        for b, r1 in (("short", base + 2), ("all", base))
    ]
    df = table(rows)
    df["t2v_MnR"] = 7.0
    text = render_report(
        df, None, ReportInfo(data="synthetic", ablation_baselines={"glccl": ("xclip",)}), []
    )
    assert "## Ablations" in text
    assert "| xclip | 22.0 (-5.0) / 7.0 | 20.0 (-5.0) / 7.0 |" in text
    assert "| glccl_no_csc | 26.0 (-1.0) / 7.0 | 24.0 (-1.0) / 7.0 |" in text
    assert "| glccl | 27.0 / 7.0 | 25.0 / 7.0 |" in text
    assert "## Ablations" not in render_report(
        df[df["method"] != "glccl_no_csc"], None, ReportInfo(), []
    )
