"""End-to-end tiny benchmark run (configs/bench/tiny.yaml) and its resume behaviour."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from tvrbench.bench.runner import main, split_methods

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "bench" / "tiny.yaml"
CLASS_PATHS = {"meanp": "baselines.meanp.MeanPModule", "xpool": "baselines.xpool.XPoolModule"}


def method_dir(tmp: Path) -> Path:
    """configs/method when it holds the tiny run's methods, else stand-in configs."""
    real = REPO / "configs" / "method"
    if all((real / f"{m}.yaml").exists() for m in CLASS_PATHS):
        return real
    out = tmp / "methods-config"
    out.mkdir(exist_ok=True)
    for name, class_path in CLASS_PATHS.items():
        (out / f"{name}.yaml").write_text(
            f"model:\n  class_path: {class_path}\n  init_args: {{}}\n"
        )
    return out


def tiny_argv(tmp: Path) -> list[str]:
    return [
        "--config",
        str(TINY),
        "--methods",
        "meanp,xpool",
        "--method_config_dir",
        str(method_dir(tmp)),
        "--cache_dir",
        str(tmp / "cache"),
        "--out_dir",
        str(tmp / "out"),
    ]


def run_dir_of(tmp: Path) -> Path:
    (run,) = [p for p in (tmp / "out").iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tmp = tmp_path_factory.mktemp("bench")
    assert main(tiny_argv(tmp)) == 0
    return tmp, run_dir_of(tmp)


def test_split_methods():
    assert split_methods("a, b,a") == ["a", "b"]
    assert split_methods(["a", "b,c"]) == ["a", "b", "c"]


def test_files_exist(tiny_run):
    _, run = tiny_run
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
    ]:
        assert (run / name).is_file(), name
    assert (run / "bad_videos.csv").read_text().splitlines()[0] == "split,video,reason"
    assert list((run / "checkpoints" / "meanp" / "seed0").glob("*.ckpt"))
    report = (run / "report.md").read_text()
    assert report.startswith("> **SYNTHETIC DATA — these are not DiDeMo numbers**")
    assert not list(run.rglob("*.tmp*")), "temporary files left behind"


def test_run_writes_the_dataset_manifest_and_records_its_hash(tiny_run):
    """manifest.csv in the run folder: every video of the run's data (the synthetic set here)
    with status; results.json holds the SHA-256 of the file's bytes (computed here by hand)."""
    import csv
    import hashlib

    _, run = tiny_run
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


def test_results_table(tiny_run):
    _, run = tiny_run
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


def test_postproc_rows_records_and_report(tiny_run):
    _, run = tiny_run
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


def test_qualitative_sheet_and_its_records(tiny_run):
    """qualitative.png + qualitative.md, linked from the report; every record holds the same
    seeded sample (up to 2 queries from every length bucket) with ranks equal to its own
    per-query ranks and top-5 lists that hold the correct video exactly when rank <= 5."""
    _, run = tiny_run
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


def test_resume_redoes_only_missing(tiny_run, capsys):
    tmp, run = tiny_run
    kept = run / "methods" / "meanp" / "seed0.json"
    before = kept.stat().st_mtime_ns
    (run / "methods" / "xpool" / "seed0.json").unlink()
    capsys.readouterr()
    assert main(tiny_argv(tmp)) == 0
    out = capsys.readouterr().out
    assert "1 (method, seed) done; 1 to run" in out
    assert run_dir_of(tmp) == run
    assert kept.stat().st_mtime_ns == before
    assert (run / "methods" / "xpool" / "seed0.json").is_file()
    assert set(pd.read_csv(run / "results.csv")["method"]) == {"meanp", "xpool"}
