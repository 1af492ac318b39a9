"""The benchmark under the cached-feature protocol (FAST PROTOCOL): labels, skips, an untrained
meanP scored like a plain NumPy meanP on the cached features, and `tvrbench extract-features`."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, bench_argv, run_dir_of

from tvrbench.bench.report import FAST_PROTOCOL_BANNER
from tvrbench.bench.runner import build_parser, config_hash, main

METHODS = REPO / "configs" / "method"


def cached_argv(tmp: Path) -> list[str]:
    """The tiny benchmark under the cached-feature protocol, its runs under ``tmp/cached``."""
    methods = ["--methods", "meanp,xpool,centerclip", "--method_config_dir", str(METHODS)]
    return bench_argv(tmp, "--protocol", "cached_features", *methods, out="cached")


def run_bench_quietly(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture(scope="module")
def cached_run(bench_home):
    """``(bench_home, run, console)``: :func:`cached_argv`'s run (on the session's data cache)."""
    code, console = run_bench_quietly(cached_argv(bench_home))
    assert code == 0
    return bench_home, run_dir_of(bench_home / "cached"), console


def test_protocol_is_hashed():
    base = {"seed": 0, "max_epochs": 1}
    same = config_hash({**base, "protocol": "finetune"})
    assert same == config_hash({**base, "protocol": "finetune"})
    assert config_hash({**base, "protocol": "cached_features"}) != same


def test_unknown_protocol_is_a_config_error(tmp_path, capsys):
    argv = [*cached_argv(tmp_path)[:2], "--protocol", "frozen", "--out_dir", str(tmp_path)]
    assert main(argv) == 2
    assert "protocol: 'frozen' is not one of finetune, cached_features" in capsys.readouterr().err


def test_config_layer_sets_the_protocol():
    layers = [REPO / "configs" / "bench" / n for n in ("didemo.yaml", "cached_features.yaml")]
    argv = [a for path in layers for a in ("--config", str(path))]
    cfg = build_parser().parse_args(argv)
    assert cfg.protocol == "cached_features"
    assert cfg.methods == ["meanp", "xpool", "glccl"]
    assert cfg.clip == "tiny" and cfg.pretrain  # the shared backbone still comes from didemo.yaml


def test_every_output_is_labelled(cached_run):
    _, run, console = cached_run
    assert run.name.startswith("synthetic-tiny-cached-")
    df = pd.read_csv(run / "results.csv")
    assert "protocol" in df.columns
    assert (df["protocol"] == "cached_features").all()
    assert (pd.read_csv(run / "gallery.csv")["protocol"] == "cached_features").all()
    results = json.loads((run / "results.json").read_text())
    assert results["protocol"] == "cached_features"
    assert results["protocol_banner"] == FAST_PROTOCOL_BANNER
    assert {r["protocol"] for r in results["results"]} == {"cached_features"}
    head = (run / "report.md").read_text().splitlines()[:4]
    assert f"> **{FAST_PROTOCOL_BANNER}**" in head
    assert FAST_PROTOCOL_BANNER.startswith(
        "FAST PROTOCOL — frozen backbone, head-only training on cached features; "
        "not comparable to fine-tuned numbers"
    )
    assert console.count(f"*** {FAST_PROTOCOL_BANNER} ***") == 2  # start and end of the run


def test_centerclip_is_skipped_and_recorded(cached_run):
    _, run, console = cached_run
    df = pd.read_csv(run / "results.csv")
    assert set(df["method"]) == {"meanp", "xpool"}
    results = json.loads((run / "results.json").read_text())
    reason = results["skipped"]["centerclip"]
    assert "CenterCLIP" in reason and "cached" in reason
    assert results["methods"]["centerclip"]["skipped"] == reason
    assert set(results["skipped"]) == {"centerclip"}
    assert f"- **skipped: centerclip** — {reason}" in (run / "report.md").read_text()
    assert f"[centerclip/seed0] SKIPPED: {reason}" in console
    assert f"SKIPPED centerclip: {reason}" in console
    assert not (run / "checkpoints" / "centerclip").exists()


def test_rows_in_range(cached_run):
    _, run, _ = cached_run
    df = pd.read_csv(run / "results.csv")
    df = df[df["seed"].astype(str) != "mean"]
    assert set(df["postproc"]) == {"none", "dsl", "qbnorm"}
    for _, g in df.groupby(["method", "postproc"]):
        total = int(g.loc[g["bucket"] == "all", "n_queries"].iloc[0])
        assert int(g.loc[g["bucket"] != "all", "n_queries"].sum()) == total
        assert g["chance_R@1"].iloc[0] == pytest.approx(100.0 / total)
        assert (g["t2v_MnR"] <= total).all() and (g["v2t_MnR"] <= total).all()
    for d in ("t2v", "v2t"):
        for k in ("R@1", "R@5", "R@10"):
            col = df[f"{d}_{k}"]
            assert col.between(0, 100).all()
            assert (df[f"{d}_{k}_lo"] <= col + 1e-9).all()
            assert (col <= df[f"{d}_{k}_hi"] + 1e-9).all()
        assert (df[f"{d}_MdR"] >= 1).all() and (df[f"{d}_MnR"] >= 1).all()
    # The costs are the full module's (CLIP towers included), as in the fine-tune protocol.
    for col in ["gflops_text", "gflops_video", "gflops_pair", "latency_query_ms"]:
        assert (df[col] > 0).all(), col
    assert (df["latency_video_ms"] > 0).all()


def test_each_method_trains_head_only_or_is_noted(cached_run):
    _, run, _ = cached_run
    methods = json.loads((run / "results.json").read_text())["methods"]
    meanp, xpool = methods["meanp"], methods["xpool"]
    assert meanp["selected_on"] == "not trained" and meanp["train_seconds"] == 0.0
    assert any("evaluated without training" in n for n in meanp["notes"])
    assert not (run / "checkpoints" / "meanp").exists()
    assert xpool["frozen_backbone"] and xpool["train_seconds"] > 0
    assert Path(xpool["checkpoint"]).is_file()
    # The head trained; the backbone is still the tiny CLIP it started from (tiny.yaml: no
    # pretraining), and a freshly built X-Pool (same seeded init) has another head.
    from baselines.xpool import XPoolHead
    from tvrbench.backbone import ClipBackbone
    from tvrbench.retrieval import RetrievalModule

    state = torch.load(xpool["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    initial = ClipBackbone.from_pretrained("tiny").clip.state_dict()
    assert all(torch.equal(state[f"backbone.clip.{k}"], v) for k, v in initial.items())
    fresh = RetrievalModule(head=XPoolHead, clip="tiny", freeze_backbone=True).state_dict()
    head = [k for k in fresh if k.startswith("head.")]
    assert head and any(not torch.equal(state[k], fresh[k]) for k in head)
    features = xpool["features"]
    assert set(features) == {"train", "val", "test"}
    assert all(Path(p).is_file() for p in features.values())


def _masked_mean_unit(frame_emb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    unit = frame_emb / np.linalg.norm(frame_emb, axis=-1, keepdims=True)
    mean = (unit * mask[..., None]).sum(axis=1) / mask.sum(axis=1, keepdims=True)
    return mean / np.linalg.norm(mean, axis=-1, keepdims=True)


def test_untrained_meanp_matches_numpy_on_the_cached_features(cached_run):
    """meanP has nothing to train on a frozen backbone: its test ranks are a plain cosine between
    the cached sentence embedding and the mean of the cached, normalised frame embeddings."""
    _, run, _ = cached_run
    test_file = json.loads((run / "results.json").read_text())["methods"]["xpool"]["features"]
    data = torch.load(test_file["test"], map_location="cpu", weights_only=True)
    order = np.argsort(data["index"].numpy())
    sentence = data["sentence"].double().numpy()[order]
    text = sentence / np.linalg.norm(sentence, axis=-1, keepdims=True)
    frames = data["frame_emb"].double().numpy()[order]
    mask = data["frame_mask"].numpy()[order]
    sim = text @ _masked_mean_unit(frames, mask).T  # (n, n)
    correct = np.diag(sim)[:, None]
    eps = 1e-5  # the module scores in float32
    low = (sim >= correct + eps).sum(axis=1) + 1
    high = (sim >= correct - eps).sum(axis=1)
    ranks = json.loads((run / "methods" / "meanp" / "seed0.json").read_text())["ranks"]
    assert ranks["index"] == sorted(ranks["index"])
    got = np.asarray(ranks["ranks_t2v"])
    assert ((low <= got) & (got <= high)).all()
    df = pd.read_csv(run / "results.csv")
    r1 = df.loc[(df["method"] == "meanp") & (df["bucket"] == "all"), "t2v_R@1"].iloc[0]
    assert r1 == pytest.approx(100.0 * np.mean(got == 1))


def test_resume_keeps_the_skip(cached_run):
    tmp, run, _ = cached_run
    before = (run / "methods" / "centerclip" / "seed0.json").stat().st_mtime_ns
    code, console = run_bench_quietly(cached_argv(tmp))
    assert code == 0
    assert "3 (method, seed) done; 0 to run" in console
    assert (run / "methods" / "centerclip" / "seed0.json").stat().st_mtime_ns == before
    results = json.loads((run / "results.json").read_text())
    assert set(results["skipped"]) == {"centerclip"}
    assert (pd.read_csv(run / "results.csv")["protocol"] == "cached_features").all()


def test_extract_features_command_matches_the_runner(cached_run, tmp_path):
    """`tvrbench extract-features` on a data config with the tiny run's settings writes the same
    cache key, and the same features, as the runner."""
    from tvrbench.backbone import ClipBackbone
    from tvrbench.cli import main as cli_main

    tmp, run, _ = cached_run
    runner_test = Path(
        json.loads((run / "results.json").read_text())["methods"]["xpool"]["features"]["test"]
    )
    root = tmp / "cache" / "synth-0-24"
    image_size = ClipBackbone.from_pretrained("tiny").image_size
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n"
        "  class_path: tvrbench.data.datamodule.DiDeMoDataModule\n"
        "  init_args:\n"
        f"    root: {root}\n"
        "    tokenizer: tiny\n"
        "    max_words: 32\n"
        "    max_frames: 6\n"
        "    sample_fps: 1.0\n"
        "    clip_seconds: 31.0\n"
        f"    image_size: {image_size}\n"
        "    num_buckets: 2\n"
        f"    cache_dir: {tmp / 'cache' / 'frames'}\n"
    )
    out = tmp_path / "features"
    argv = ["extract-features", "--config", str(config), "--out_dir", str(out)]
    assert cli_main([*argv, "--splits", "[test]", "--device", "cpu"]) == 0
    (made,) = out.glob("*.pt")
    assert made.name == runner_test.name
    a = torch.load(made, weights_only=True)
    b = torch.load(runner_test, weights_only=True)
    for key in ("sentence", "words", "frame_emb", "frame_mask", "index"):
        assert torch.equal(a[key], b[key]), key


def test_extract_features_command_rejects_a_bad_split(tmp_path, capsys):
    from tvrbench.features import main as extract_main

    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n  class_path: tvrbench.data.datamodule.DiDeMoDataModule\n"
        f"  init_args:\n    root: {tmp_path}\n"
    )
    argv = ["--config", str(config), "--out_dir", str(tmp_path), "--splits", "[dev]"]
    assert extract_main(argv) == 2
    assert "--splits: unknown ['dev']" in capsys.readouterr().err


def test_report_labels_only_the_fast_protocol():
    from tvrbench.bench.findings import findings
    from tvrbench.bench.report import ReportInfo, render_report

    df = pd.DataFrame([{"method": "A", "bucket": "all", "n_queries": 10, "t2v_R@1": 50.0}])
    finetune = render_report(df, None, ReportInfo(data="didemo"), findings(df))
    assert "FAST PROTOCOL" not in finetune
    assert "- protocol: finetune" in finetune
    info = {"data": "didemo", "protocol": "cached_features", "skipped": {"B": "no features"}}
    fast = render_report(df, None, ReportInfo(**info), findings(df)).splitlines()
    assert fast[0] == f"> **{FAST_PROTOCOL_BANNER}**"
    assert fast[-1] == f"> **{FAST_PROTOCOL_BANNER}**"
    assert "- **skipped: B** — no features" in fast


def test_given_checkpoints_are_tested_or_skipped_by_backbone(cached_run, tmp_path):
    """A head-only checkpoint of the same backbone is tested on the cached features (same ranks as
    the run that trained it); one whose backbone differs is skipped with the reason."""
    tmp, run, _ = cached_run
    trained = json.loads((run / "methods" / "xpool" / "seed0.json").read_text())
    ckpt = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    key = next(k for k in ckpt["state_dict"] if k.startswith("backbone.clip."))
    ckpt["state_dict"][key] = ckpt["state_dict"][key] + 1.0
    other = tmp_path / "other-backbone.ckpt"
    torch.save(ckpt, other)
    for name, path in (("same", trained["checkpoint"]), ("other", str(other))):
        argv = [*cached_argv(tmp), "--methods", "xpool", "--run_name", name]
        code, console = run_bench_quietly([*argv, "--checkpoints", json.dumps({"xpool": path})])
        assert code == 0
        results = json.loads((tmp / "cached" / name / "results.json").read_text())
        if name == "same":
            assert not results["skipped"]
            again = json.loads(
                (tmp / "cached" / name / "methods" / "xpool" / "seed0.json").read_text()
            )
            assert again["ranks"] == trained["ranks"]
        else:
            assert "another backbone" in results["skipped"]["xpool"]
            assert "[xpool/seed0] SKIPPED" in console
