"""Chunked gallery scoring (``tvrbench.chunking``), the head-cost helpers
(``tvrbench.bench.head_cost``) and the scoring benchmark scripts (``benchmarks/scoring.py``,
``benchmarks/published_efficiency.py``)."""

from __future__ import annotations

import csv
import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from baselines.meanp import MeanPHead
from baselines.xpool import XPoolHead
from tvrbench.backbone import TextFeatures
from tvrbench.bench.head_cost import is_plain_matmul, random_inputs, reference_note, row_dtype
from tvrbench.chunking import block_sizes, chunked_score
from tvrbench.glccl import GLCCLHead
from tvrbench.methods import default_methods, resolve_methods

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "scoring.py"
EFFICIENCY_SCRIPT = ROOT / "benchmarks" / "published_efficiency.py"
BT, BV, L, N, D = 7, 11, 6, 5, 16


def _inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    word_len = torch.randint(2, L + 1, (BT,), generator=gen)
    frame_len = torch.randint(1, N + 1, (BV,), generator=gen)
    frame_mask = torch.arange(N)[None] < frame_len[:, None]
    return {
        "sentence": torch.randn(BT, D, generator=gen),
        "words": torch.randn(BT, L, D, generator=gen),
        "attention_mask": torch.arange(L)[None] < word_len[:, None],
        "frame_emb": torch.randn(BV, N, D, generator=gen) * frame_mask[..., None],
        "frame_mask": frame_mask,
    }


def _noisy(head: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return head.eval()


def _reference(name: str, head, x, text, video) -> torch.Tensor:
    """Scores from an implementation independent of the head's fast ``score``."""
    if name in ("meanp", "centerclip"):
        t = x["sentence"].numpy()
        t = t / np.linalg.norm(t, axis=1, keepdims=True)
        f = x["frame_emb"].numpy()
        f = f / np.maximum(np.linalg.norm(f, axis=2, keepdims=True), 1e-30)
        m = x["frame_mask"].numpy()[..., None]
        v = (f * m).sum(1) / m.sum(1)
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        return torch.from_numpy(t @ v.T)
    return head.reference_score(text, video)


def _head(name: str):
    if name in ("meanp", "centerclip"):  # CenterCLIP scores its segment embeddings like meanP
        return MeanPHead()
    if name == "xpool":
        return _noisy(XPoolHead(D, num_heads=2))
    return _noisy(GLCCLHead(D, max_words=L, max_frames=N, temporal_layers=1))


class _Recorder:
    """Wraps a head; records the shape of every block it scores."""

    def __init__(self, head) -> None:
        self.head, self.blocks = head, []

    def pair_bytes(self, text, video) -> int:
        return self.head.pair_bytes(text, video)

    def score(self, text, video):
        out = self.head.score(text, video)
        self.blocks.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("name", ["meanp", "centerclip", "xpool", "glccl"])
@pytest.mark.parametrize("pairs", [1, 3, 2 * BV + 1, 10**6])
@torch.no_grad()
def test_chunked_score_equals_one_full_call(name, pairs):
    head = _head(name)
    x = _inputs()
    text = head.text_state(TextFeatures(x["sentence"], x["words"], x["attention_mask"]))
    video = head.video_state(x["frame_emb"], x["frame_mask"])
    budget = pairs * head.pair_bytes(text, video)
    recorder = _Recorder(head)
    chunked = chunked_score(recorder, text, video, budget)
    full = head.score(text, video)
    assert chunked.shape == (BT, BV)
    assert (chunked - full).abs().max() <= 1e-5
    assert (chunked - _reference(name, head, x, text, video).float()).abs().max() <= 1e-5
    # The budget holds for every block, and small budgets cut both axes.
    assert all(bt * bv <= max(1, pairs) for bt, bv in recorder.blocks)
    assert sum(bt * bv for bt, bv in recorder.blocks) == BT * BV
    if pairs < BV:
        assert len(recorder.blocks) >= BT * math.ceil(BV / pairs)


@pytest.mark.parametrize("n_text", [1, 5, 1004])
@pytest.mark.parametrize("n_video", [1, 7, 1004, 100_000])
@pytest.mark.parametrize("pair_bytes", [4, 11_008, 419_072])
@pytest.mark.parametrize("budget_mb", [0.001, 1.0, 64.0, 2048.0])
def test_block_sizes_respect_the_budget(n_text, n_video, pair_bytes, budget_mb):
    budget = int(budget_mb * 1024**2)
    t, v = block_sizes(n_text, n_video, pair_bytes, budget)
    assert 1 <= t <= n_text and 1 <= v <= n_video
    if budget >= pair_bytes:
        assert t * v * pair_bytes <= budget
        # Not needlessly small: one more text (or video, when splitting videos) would not fit
        # or there is none left.
        if v == n_video:
            assert t == n_text or (t + 1) * v * pair_bytes > budget
        else:
            assert t == 1 and (v + 1) * pair_bytes > budget
    else:
        assert (t, v) == (1, 1)  # one pair at a time is the least there is


def _load_script(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _load_benchmark():
    return _load_script(SCRIPT, "scoring_benchmark")


def test_benchmark_inputs_and_flop_formulas():
    x = random_inputs(200, 300, 64, 64, 8, seed=0)
    words = x["attention_mask"].sum(1)
    frames = x["frame_mask"].sum(1)
    assert words.min() >= 20 and words.max() <= 64 and frames.min() >= 10 and frames.max() <= 64
    assert torch.allclose(x["sentence"].norm(dim=1), torch.ones(200))
    assert (x["frame_emb"][~x["frame_mask"]] == 0).all()
    # The GLCCL reference's FLOP formula against torch's counter (matrix products only).
    from torch.utils.flop_counter import FlopCounterMode

    head = _head("glccl")
    y = _inputs()
    text = head.text_state(TextFeatures(y["sentence"], y["words"], y["attention_mask"]))
    video = head.video_state(y["frame_emb"], y["frame_mask"])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.reference_score(text, video)
    counted = counter.get_total_flops() // 2
    formula = head.reference_pair_flops(L, N, D) * BT * BV
    assert 0.85 * formula <= counted <= formula


def test_plain_matmul_heads_and_reference_notes():
    """The large-gallery row goes to heads whose pair is one dot product, decided from the head;
    the reference's counting note comes from the head."""
    assert is_plain_matmul(MeanPHead(), L, N, D)
    assert not is_plain_matmul(_head("xpool"), L, N, D)
    assert not is_plain_matmul(_head("glccl"), L, N, D)
    assert reference_note(_head("glccl")).startswith("Multiply-adds per pair")
    head = MeanPHead()
    head.reference_note = "counted by hand"
    assert reference_note(head) == "counted by hand"


def test_method_discovery_skips_variants(tmp_path):
    """Without --methods: every config but ``<config>_<suffix>`` variants, known methods first;
    with --methods: the given order, unknown names reported."""
    bench = _load_benchmark()
    for name in ("glccl", "glccl_no_csc", "meanp", "meanp_published", "my_method", "xpool"):
        (tmp_path / f"{name}.yaml").write_text("model: {class_path: a.B}\n")
    assert default_methods(tmp_path) == ["meanp", "xpool", "glccl", "my_method"]
    assert resolve_methods(None, tmp_path) == (["meanp", "xpool", "glccl", "my_method"], [])
    assert resolve_methods("glccl_no_csc,meanp,nope", tmp_path) == (
        ["glccl_no_csc", "meanp", "nope"],
        ["nope"],
    )
    args = bench.parse_args(["--quick", f"--config-dir={tmp_path}"])
    assert args.method_list == ["meanp", "xpool", "glccl", "my_method"]
    assert (args.texts, args.dim, args.budget_mb) == (24, 64, 0.25)
    assert bench.default_out(args).parent == ROOT / "outputs" / "benchmarks"
    assert bench.parse_args(["--quick", "--texts=5", f"--config-dir={tmp_path}"]).texts == 5
    full = bench.parse_args([f"--config-dir={tmp_path}"])
    assert (full.texts, full.words, full.dim) == (1004, 64, 512)
    assert bench.default_out(full) == ROOT / "benchmarks" / "results" / "scoring-cpu.csv"
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods=nope", f"--config-dir={tmp_path}"])


def test_quick_run_in_process_and_unbuildable_configs(tmp_path, capsys):
    """--quick runs in seconds; a config whose module cannot be built is skipped and announced,
    a failure only when it was asked for by name."""
    bench = _load_benchmark()
    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "meanp.yaml").write_text((ROOT / "configs/method/meanp.yaml").read_text())
    (config_dir / "broken.yaml").write_text("model: {class_path: no_such_module.Module}\n")
    out = tmp_path / "quick.csv"
    common = ["--quick", f"--config-dir={config_dir}", f"--out={out}", "--gallery-videos=50"]
    assert bench.main(common) == 0
    assert "skipped broken" in capsys.readouterr().out
    with out.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["meanp", "meanp" + bench.GALLERY_SUFFIX]
    assert all(float(r["max_abs_diff_vs_ref"]) == 0 for r in rows)
    assert bench.main([*common, "--methods=meanp,broken"]) == 1


def _run_script(tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "scoring.csv"
    cmd = [sys.executable, str(SCRIPT), "--texts", "8", "--videos", "8", "--words", "6"]
    cmd += ["--frames", "5", "--dim", "16", "--gallery-videos", "40", "--matmul-size", "128"]
    cmd += ["--repeats", "2", "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return proc, out


@pytest.mark.slow
def test_benchmark_script_end_to_end(tmp_path):
    bench = _load_benchmark()
    # A 50 KiB budget cuts GLCCL's texts into blocks of one: timed on 3 of 8, extrapolated.
    proc, out = _run_script(
        tmp_path,
        "--subset-texts",
        "3",
        "--budget-mb",
        "0.05",
        "--methods",
        "meanp,centerclip,xpool,glccl",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "numerics: fast == reference" in proc.stdout and "FAILED" not in proc.stdout
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames[: len(bench.COLUMNS)] == bench.COLUMNS
        rows = list(reader)
    methods = [r["method"] for r in rows]
    gallery = "meanp_centerclip" + bench.GALLERY_SUFFIX  # one row for the head they share
    assert methods == ["meanp", "centerclip", "xpool", "glccl", gallery]
    for r in rows:
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["n_texts"] == "8"
        for key in ("time_s", "ref_time_s", "speedup", "peak_mb", "ref_peak_mb", "flops"):
            assert math.isfinite(float(r[key])) and float(r[key]) >= 0, (r["method"], key)
        assert float(r["max_abs_diff_vs_ref"]) <= 1e-5
        assert float(r["gflops_per_s"]) == pytest.approx(
            float(r["flops"]) / float(r["time_s"]) / 1e9, rel=1e-3
        )
    glccl = rows[methods.index("glccl")]
    assert glccl["timed_texts"] == "3" and "extrapolated" in glccl["note"]
    assert rows[-1]["n_videos"] == "40"


def test_bf16_run_measures_every_head_in_the_dtype_it_really_computes_in(tmp_path, capsys):
    """--dtype bf16 used to crash X-CLIP and GLCCL (float32 scoring against bf16 parameters)
    and to time GLSCL in float32 against the bf16 matmul rate. Now a head whose scoring upcasts
    to float32 (scores_in_float32) is measured in fp32, labelled so, against the fp32 rate;
    the others run in bf16."""
    bench = _load_benchmark()
    assert [row_dtype(h, "bf16") for h in (MeanPHead(), XPoolHead(D))] == ["bf16"] * 2
    assert row_dtype(GLCCLHead(D, max_words=L, max_frames=N), "bf16") == "fp32"
    assert row_dtype(GLCCLHead(D, max_words=L, max_frames=N), "fp32") == "fp32"
    out = tmp_path / "bf16.csv"
    argv = ["--quick", "--dtype=bf16", "--gallery-videos=0", f"--out={out}"]
    assert bench.main([*argv, "--methods=meanp,xclip,glccl,glscl"]) == 0
    printed = capsys.readouterr().out
    assert "dense matmul 256^3 in fp32" in printed  # the second rate, measured for those rows
    with out.open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    assert {m: r["dtype"] for m, r in rows.items()} == {
        "meanp": "bf16", "xclip": "fp32", "glccl": "fp32", "glscl": "fp32",
    }  # fmt: skip
    for m in ("xclip", "glccl", "glscl"):
        assert "asked bf16" in rows[m]["note"] and "scores in float32" in rows[m]["note"]
        assert rows[m]["matmul_gflops_per_s"] != rows["meanp"]["matmul_gflops_per_s"]
        assert float(rows[m]["max_abs_diff_vs_ref"]) <= 1e-5
    assert "asked" not in rows["meanp"]["note"]


def test_published_protocol_table_against_glscl_table_i(tmp_path, monkeypatch, capsys):
    """benchmarks/published_efficiency.py --protocols msrvtt: the head GFLOPs at 1000 x 1000,
    L = 32, N = 12, D = 512 next to GLSCL's Table I, from SPEC's per-pair formulas written out
    here; the pipeline rows add the text cost (a stand-in tower here, the ViT-B/32 one is slow to
    build) to the scoring."""
    eff = _load_script(EFFICIENCY_SCRIPT, "published_efficiency_benchmark")
    monkeypatch.setattr(
        eff, "text_tower_costs", lambda words, device, seed: [eff.TextTowerCost(32, 1.25, 2.0)]
    )
    argv = ["--protocols=msrvtt", "--no-timing", "--methods=meanp,xpool,glscl"]
    assert eff.main([*argv, f"--out-dir={tmp_path}"]) == 0
    assert "| xpool | 275.0 | 542.7 |" in capsys.readouterr().out
    with (tmp_path / "efficiency-published.csv").open() as fh:
        rows = {r["method"]: r for r in csv.DictReader(fh)}
    d, n, pairs = 512, 12, 1e6
    want = {  # official forward per pair (SPEC §2.1, §2.2, §2.6), published (Table I)
        "meanp": (d, 0.5),
        "xpool": (2 * d * d + 2 * n * d + 12 * d + n, 275.0),
        "glscl": (2 * n * d + 8 * d + 2 * d, 1.0),
        "TS2-Net": (None, 6.1),
        "Prompt Switch": (None, 298.5),
    }
    assert set(rows) == set(want)
    for method, (per_pair, published) in want.items():
        r = rows[method]
        assert float(r["published_gflops"]) == published and r["reason"]
        if per_pair is None:
            assert r["reference_gflops"] == "" and "not implemented" in r["reason"]
            continue
        ours = per_pair * pairs / 1e9
        assert float(r["reference_gflops"]) == pytest.approx(ours, rel=1e-3)
        assert float(r["reference_over_published"]) == pytest.approx(ours / published, rel=1e-3)
        assert (r["n_texts"], r["words"], r["frames"], r["dim"]) == ("1000", "32", "12", "512")
    assert float(rows["xpool"]["fast_gflops"]) == pytest.approx(
        (3 * n * d + 8 * d + n) * pairs / 1e9, rel=1e-3
    )  # W_o and W_l folded into per-video states
    with (tmp_path / "efficiency-pipeline.csv").open() as fh:
        pipe = [r for r in csv.DictReader(fh) if r["method"] == "meanp"]
    assert [int(r["gallery_videos"]) for r in pipe] == [1000, 10000, 100000]
    for r in pipe:
        scoring = d * int(r["gallery_videos"]) / 1e9
        assert float(r["scoring_gflops"]) == pytest.approx(scoring, rel=1e-3)
        total = 1.25 + float(r["text_state_gflops"]) + scoring
        assert float(r["total_gflops"]) == pytest.approx(total, rel=1e-3)
