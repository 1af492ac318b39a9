"""End-to-end tiny benchmark run (configs/bench/tiny.yaml, 2 seeds): outputs, per-seed and
aggregated rows, and the resume of one deleted (method, seed)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from conftest import TINY_BENCH_EXTRA, bench_argv, run_dir_of

from tvrbench.bench.outputs import METRIC_COLUMNS
from tvrbench.bench.runner import main, split_methods


def test_split_methods():
    assert split_methods("a, b,a") == ["a", "b"]
    assert split_methods(["a", "b,c"]) == ["a", "b", "c"]


def test_files_exist(tiny_bench_run):
    _, run = tiny_bench_run
    for name in [
        "results.csv",
        "gallery.csv",
        "results.json",
        "report.md",
        "bad_videos.csv",
        "accuracy_vs_length.png",
        "gflops_vs_length.png",
        "latency_vs_length.png",
        "cost_vs_gallery.png",
        "methods/meanp/seed0.json",
        "methods/xpool/seed0.json",
        "methods/meanp/seed1.json",
        "methods/xpool/seed1.json",
    ]:
        assert (run / name).is_file(), name
    assert (run / "bad_videos.csv").read_text().splitlines()[0] == "split,video,reason"
    assert list((run / "checkpoints" / "meanp" / "seed0").glob("*.ckpt"))
    report = (run / "report.md").read_text()
    assert report.startswith("> **SYNTHETIC DATA — these are not DiDeMo numbers**")
    assert not list(run.rglob("*.tmp*")), "temporary files left behind"


def test_run_writes_the_dataset_manifest_and_records_its_hash(tiny_bench_run):
    """manifest.csv in the run folder: every video of the run's data (the synthetic set here)
    with status; results.json holds the SHA-256 of the file's bytes (computed here by hand)."""
    import csv
    import hashlib

    _, run = tiny_bench_run
    path = run / "manifest.csv"
    with path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and {r["split"] for r in rows} == {"train", "val", "test"}
    assert all(r["status"] == "ok" and len(r["sha256"]) == 64 for r in rows)
    summary = json.loads((run / "data_summary.json").read_text())
    assert sum(r["split"] == "test" for r in rows) == summary["test"]["videos"]
    record = json.loads((run / "results.json").read_text())["data_manifest"]
    assert record["file"] == "manifest.csv"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["videos"] == {"ok": len(rows)}


def test_results_table(tiny_bench_run):
    _, run = tiny_bench_run
    df = pd.read_csv(run / "results.csv")
    needed = ["method", "bucket", "n_queries", "mean_duration_s", "mean_frames", "chance_R@1"]
    needed += ["gflops_text", "gflops_video", "gflops_pair", "data", "clip_seconds"]
    needed += ["latency_query_ms", "latency_query_p90_ms", "latency_video_ms"]
    needed += ["latency_video_p90_ms"]
    for d in ("t2v", "v2t"):
        for k in ("R@1", "R@5", "R@10", "MdR", "MnR"):
            needed += [f"{d}_{k}", f"{d}_{k}_lo", f"{d}_{k}_hi"]
    needed += ["t2v_R@50"]
    assert not set(needed) - set(df.columns)
    assert set(df["method"]) == {"meanp", "xpool"}
    df = df[df["seed"].astype(str) == "0"]
    assert (df["data"] == "synthetic").all()
    buckets = json.loads((run / "data_summary.json").read_text())["test_bucket_edges"]
    assert set(df["postproc"]) == {"none", "dsl", "qbnorm"}  # the default: all three
    for _, g in df.groupby(["method", "postproc"]):
        assert len(g) == len(buckets) + 2  # inner edges + 1 buckets, plus "all"
        assert list(g["bucket"]).count("all") == 1
        assert g["bucket"].is_unique
        total = int(g.loc[g["bucket"] == "all", "n_queries"].iloc[0])
        assert int(g.loc[g["bucket"] != "all", "n_queries"].sum()) == total
        assert g["chance_R@1"].iloc[0] == pytest.approx(100.0 / total)
    for d in ("t2v", "v2t"):
        for k in ("R@1", "R@5", "R@10"):
            col = df[f"{d}_{k}"]
            assert col.between(0, 100).all()
            assert (df[f"{d}_{k}_lo"] <= col + 1e-9).all() and (
                col <= df[f"{d}_{k}_hi"] + 1e-9
            ).all()
        assert (df[f"{d}_MdR"] >= 1).all() and (df[f"{d}_MnR"] >= 1).all()
    for col in ["gflops_text", "gflops_video", "gflops_pair", "latency_query_ms"]:
        assert (df[col] > 0).all(), col
    assert (df["latency_video_ms"] > 0).all()
    gallery = pd.read_csv(run / "gallery.csv")
    assert sorted(gallery["gallery_size"].unique()) == [10, 100]
    assert (gallery["ms_per_query"] > 0).all()
    results = json.loads((run / "results.json").read_text())
    assert results["environment"]["threads"] >= 1
    assert results["config"]["methods"] == ["meanp", "xpool"]


def test_postproc_rows_records_and_report(tiny_bench_run):
    _, run = tiny_bench_run
    df = pd.read_csv(run / "results.csv")
    record = json.loads((run / "methods" / "xpool" / "seed0.json").read_text())
    ranks = record["ranks"]
    for pp in ("dsl", "qbnorm"):
        # Each post-processing's rows come from its own per-query ranks (same queries).
        pp_ranks = ranks["postproc"][pp]
        assert len(pp_ranks["ranks_t2v"]) == len(ranks["ranks_t2v"])
        row = df[(df["method"] == "xpool") & (df["postproc"] == pp) & (df["bucket"] == "all")]
        row = row[row["seed"].astype(str) == "0"].iloc[0]
        r1 = 100.0 * sum(r == 1 for r in pp_ranks["ranks_t2v"]) / len(pp_ranks["ranks_t2v"])
        assert row["t2v_R@1"] == pytest.approx(r1)
        mean = df[(df["method"] == "xpool") & (df["postproc"] == pp)]
        assert (mean["seed"].astype(str) == "mean").sum() == (mean["seed"].astype(str) == "0").sum()
    bank = record["postproc"]["qbnorm"]
    n_train = json.loads((run / "data_summary.json").read_text())["train"]["videos"]
    assert bank["bank_queries"] == min(n_train, bank["bank_max_queries"]) > 0
    assert bank["beta"] == 20.0 and record["postproc"]["dsl"]["inverse_temperature"] == 100.0
    report = (run / "report.md").read_text()
    assert "## Post-processing: none | DSL | QB-Norm" in report
    assert "| method | bucket | none | DSL | QB-Norm |" in report
    assert "transductive" in report


def test_qualitative_sheet_and_its_records(tiny_bench_run):
    """qualitative.png + qualitative.md, linked from the report; every record holds the same
    seeded sample (up to 2 queries from every length bucket) with ranks equal to its own
    per-query ranks and top-5 lists that hold the correct video exactly when rank <= 5."""
    _, run = tiny_bench_run
    assert (run / "qualitative.png").stat().st_size > 0
    page = (run / "qualitative.md").read_text()
    assert "![qualitative.png](qualitative.png)" in page and "first seed" in page
    assert "[qualitative.md](qualitative.md)" in (run / "report.md").read_text()
    samples = {}
    for method in ("meanp", "xpool"):
        record = json.loads((run / "methods" / method / "seed0.json").read_text())
        ranks = record["ranks"]
        rank_of = dict(zip(ranks["index"], ranks["ranks_t2v"]))
        entry = record["qualitative"]
        assert entry["postproc"] == "none"
        queries = entry["queries"]
        per_bucket = {b: ranks["bucket"].count(b) for b in set(ranks["bucket"])}
        for bucket, n in per_bucket.items():
            assert sum(q["bucket"] == bucket for q in queries) == min(2, n)
        for q in queries:
            assert q["rank"] == rank_of[q["index"]]
            assert len(q["top"]) == min(5, len(ranks["index"])) == len(set(q["top"]))
            assert (q["index"] in q["top"]) == (q["rank"] <= 5)
        samples[method] = [q["index"] for q in queries]
        assert f"| {method} |" in page
    assert samples["meanp"] == samples["xpool"]


def test_two_seeds_give_seed_mean_rows(tiny_bench_run):
    """Every (method, bucket, post-processing) has one row per seed and a ``mean`` row holding
    the mean and standard deviation of the per-seed rows."""
    _, run = tiny_bench_run
    df = pd.read_csv(run / "results.csv")
    assert set(df["seed"].astype(str)) == {"0", "1", "mean"}
    per_seed = df[df["seed"].astype(str) != "mean"]
    means = df[df["seed"].astype(str) == "mean"]
    assert len(means) * 2 == len(per_seed)
    assert (means["n_seeds"] == 2).all()
    for _, row in means.iterrows():
        same = (per_seed["method"] == row["method"]) & (per_seed["bucket"] == row["bucket"])
        g = per_seed[same & (per_seed["postproc"] == row["postproc"])]
        assert len(g) == 2
        for c in METRIC_COLUMNS:
            assert abs(row[c] - g[c].astype(float).mean()) < 1e-9
            assert abs(row[f"{c}_std"] - g[c].astype(float).std(ddof=1)) < 1e-9
    info = json.loads((run / "results.json").read_text())
    assert info["seeds"] == [0, 1] and "2 seeds" in info["training_variance"]
    assert "seeds" in (run / "report.md").read_text()


def test_resume_redoes_only_missing(tiny_bench_run, capsys):
    """Runs last in this module: it deletes one (method, seed) record and resumes; only that
    pair trains again (the shared run is complete again afterwards)."""
    tmp, run = tiny_bench_run
    rows_before = len(pd.read_csv(run / "results.csv"))
    kept = [run / "methods" / m / f"seed{s}.json" for m, s in (("meanp", 0), ("meanp", 1))]
    kept.append(run / "methods" / "xpool" / "seed0.json")
    before = [k.stat().st_mtime_ns for k in kept]
    gone = run / "methods" / "xpool" / "seed1.json"
    gone.unlink()
    capsys.readouterr()
    assert main(bench_argv(tmp, *TINY_BENCH_EXTRA)) == 0
    out = capsys.readouterr().out
    assert "3 (method, seed) done; 1 to run" in out
    assert run_dir_of(tmp / "out") == run
    assert [k.stat().st_mtime_ns for k in kept] == before
    assert gone.is_file()
    again = pd.read_csv(run / "results.csv")
    assert len(again) == rows_before
    assert set(again["method"]) == {"meanp", "xpool"}
