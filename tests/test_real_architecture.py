"""The real job at real architecture size (slow; ``make test-all``): a random-initialised CLIP
with the exact ViT-B/32 configuration and the real BPE tokenizer, saved with ``save_pretrained``,
through ``make bench-didemo DIDEMO_ROOT=... CLIP=...`` with the real protocol's own settings
(configs/bench/didemo_real.yaml: shared recipe, bf16-mixed, grad-clip 1.0, 64 words, whole
videos, the controlled-length protocol) — only sizes shrunk: a few videos, 1 epoch, 8 frames."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TOKENIZER = REPO.parent / "shared" / "clip-tokenizer"
METHODS = ["meanp", "xpool", "centerclip", "xclip", "glscl", "glccl"]
#: ViT-B/32 per 224-px frame (open_clip's profile lists 8.82 image GFLOPs = 2 × 4.41 MACs).
VIT_B32_GMACS_PER_FRAME = 4.41
#: ViT-B/32 text tower + projection for a 64-token text.
TEXT_GMACS_64 = 2.47


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_TOKENIZER.is_dir(), reason="needs ../shared/clip-tokenizer")
def test_make_bench_didemo_at_vit_b32_size(tmp_path):
    from tvrbench.backbone import build_vit_b32_random

    clip = build_vit_b32_random(tmp_path / "clip-b32", SHARED_TOKENIZER)
    didemo = tmp_path / "didemo"
    subprocess.run(
        [sys.executable, "-m", "tvrbench.cli", "synth", "--out", str(didemo), "--videos", "24"],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    sizes = tmp_path / "sizes.yaml"
    sizes.write_text(
        "data_overrides: {clip_seconds: null, max_frames: 8, batch_size: 4, eval_batch_size: 8,"
        " num_workers: 0}\n"
        "trainer_overrides: {max_epochs: 1}\n"
        "latency_repeats: 2\nlatency_warmup: 1\ngallery_sizes: [10, 100]\n"
        "bootstrap_samples: 50\n"
        f"cache_dir: {tmp_path / 'cache'}\n"
    )
    out = tmp_path / "out"
    make = [
        "make",
        "bench-didemo",
        f"DIDEMO_ROOT={didemo}",
        f"CLIP={clip}",
        "DEVICE=cpu",
        f"OUT={out}",
        f"METHODS={','.join(METHODS)}",
        f"BENCH_ARGS=--config {sizes}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run(make, cwd=REPO, check=True, env=env)
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    info = json.loads((run / "results.json").read_text())
    assert not info["skipped"]
    for method in METHODS:
        recipe = info["recipes"][method]
        assert recipe["recipe"] == "shared"
        assert recipe["backbone_lr"] == pytest.approx(1e-7) and recipe["lr"] == pytest.approx(1e-4)
        assert recipe["gradient_clip_val"] == 1.0 and recipe["precision"] == "bf16-mixed"
        assert recipe["max_words"] == 64 and recipe["clip_seconds"] is None
    results = pd.read_csv(run / "results.csv")
    assert set(results["postproc"]) == {"none", "dsl", "qbnorm"}
    rows = results[(results["bucket"] == "all") & (results["seed"].astype(str) == "0")]
    rows = rows[rows["postproc"] == "none"]
    assert sorted(rows["method"]) == sorted(METHODS)
    for _, row in rows.iterrows():
        per_frame = row["gflops_video"] / row["flops_frames"]
        if row["method"] != "centerclip":  # clustering changes the per-frame cost
            assert per_frame == pytest.approx(VIT_B32_GMACS_PER_FRAME, rel=0.03), row["method"]
        # heads add their per-text work (GLSCL's concept decoder: about 7 %)
        assert row["gflops_text"] == pytest.approx(TEXT_GMACS_64, rel=0.08), row["method"]
    meanp = rows[rows["method"] == "meanp"].iloc[0]
    assert meanp["gflops_text"] == pytest.approx(TEXT_GMACS_64, rel=0.03)
    stress = pd.read_csv(run / "stress.csv")
    assert set(stress["method"]) == set(METHODS)
    assert (run / "stress_vs_length.png").is_file()
    report = (run / "report.md").read_text()
    assert "## Training recipe of every method (as run)" in report
    assert "## Published DiDeMo text→video numbers" in report
