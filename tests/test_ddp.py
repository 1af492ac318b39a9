"""A 2-process CPU (gloo) evaluation gives exactly the metrics of one process.

The test split has an odd number of videos, so the distributed sampler pads one rank by repeating
a sample; the evaluation must undo that (no sample counted twice) and gather every embedding.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from tvrbench.data.synth import generate

    root = tmp_path_factory.mktemp("synth-ddp")
    generate(root, videos=24, seed=3, fps=1.0, size=32, workers=1, progress=False)
    return root


def _run(root, cache_dir, devices: int) -> dict[str, float]:
    import lightning as L

    from baselines.meanp import MeanPModule
    from tvrbench.data.datamodule import DiDeMoDataModule

    L.seed_everything(0)
    dm = DiDeMoDataModule(
        root=str(root),
        image_size=32,
        max_words=32,
        max_frames=6,
        sample_fps=0.2,
        clip_seconds=None,
        num_buckets=2,
        eval_batch_size=2,
        cache_dir=str(cache_dir),
    )
    model = MeanPModule(clip="tiny")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp_spawn" if devices > 1 else "auto",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    return metrics


def test_two_process_test_metrics_equal_one_process(synth_root, tmp_path):
    single = _run(synth_root, tmp_path / "cache", devices=1)
    double = _run(synth_root, tmp_path / "cache", devices=2)
    n = single["test/n_queries"]
    assert n % 2 == 1, "the split must not divide by 2 for this test to mean anything"
    assert double["test/n_queries"] == n
    assert set(single) == set(double)
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
    assert any(k.startswith("test/bucket=") for k in single)
    assert torch.isfinite(torch.tensor(list(single.values()))).all()
