"""`tvrbench fit` and `tvrbench test` (LightningCLI) on the composed configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from tvrbench.data.synth import generate

    root = tmp_path_factory.mktemp("synth-cli")
    generate(root, videos=16, seed=5, fps=1.0, size=32, workers=1, progress=False)
    return root


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(cwd / "hub"),
        "TVRBENCH_CACHE": str(cwd / "cache"),
    }
    return subprocess.run(
        [sys.executable, "-m", "tvrbench", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.parametrize("method", ["glccl", "centerclip"])
def test_fit_then_test_from_the_command_line(method, synth_root, tmp_path):
    common = [
        "--config", str(REPO / f"configs/method/{method}.yaml"),
        "--config", str(REPO / "configs/data/synthetic.yaml"),
        "--config", str(REPO / "configs/trainer/cpu.yaml"),
        "--data.root", str(synth_root),
        "--data.batch_size", "4",
        "--data.num_buckets", "2",
        "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    fit = _cli("fit", *common, "--trainer.max_epochs", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    ckpts = sorted(tmp_path.rglob("best-*.ckpt"))
    assert ckpts, "ModelCheckpoint on val/R@1 wrote no checkpoint"
    # Plain hyperparameters only, the head as its configuration (the data's shape placed in it:
    # synthetic.yaml's 32 words, 18 frames): the checkpoint loads without unpickling code.
    hparams = torch.load(ckpts[0], map_location="cpu", weights_only=True)["hyper_parameters"]
    head = hparams["head"]
    assert hparams["clip"] == "tiny"
    if method == "glccl":
        assert head["class_path"] == "tvrbench.glccl.GLCCLHead"
        assert (head["init_args"]["max_words"], head["init_args"]["max_frames"]) == (32, 18)
    else:
        assert head["class_path"] == "baselines.meanp.MeanPHead"
    test = _cli("test", *common, "--ckpt_path", str(ckpts[0]), cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/t2v/R@1" in test.stdout and "test/bucket=" in test.stdout


def test_unknown_method_class_is_a_clear_error(tmp_path):
    out = _cli("fit", "--model", "baselines.nope.NopeModule", cwd=tmp_path)
    assert out.returncode != 0
    assert "nope" in out.stderr.lower()


def test_missing_clip_weights_is_one_line(tmp_path):
    out = _cli(
        "fit",
        "--config", str(REPO / "configs/method/glccl_published.yaml"),
        "--config", str(REPO / "configs/data/didemo.yaml"),
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.startswith("tvrbench fit:")]
    assert len(lines) == 1 and "CLIP weights not found" in lines[0]
    assert "Traceback" not in out.stderr


def _composed(method: str, **data_args) -> dict:
    """``configs/method/<method>.yaml`` + ``configs/data/synthetic.yaml`` (``data_args`` on top),
    as ``tvrbench fit --config ... --config ...`` composes them."""
    config = yaml.safe_load((REPO / f"configs/method/{method}.yaml").read_text())
    data = yaml.safe_load((REPO / "configs/data/synthetic.yaml").read_text())["data"]
    data["init_args"].update(data_args)
    trainer = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False}
    return {"seed_everything": 0, **config, "data": data, "trainer": trainer}


@pytest.mark.parametrize("method", ["glccl", "xclip", "glscl", "meanp", "centerclip"])
def test_the_data_shape_reaches_the_head(method):
    """The data config owns max_words / max_frames; the standalone path places them in the head
    where its class takes them (tvrbench.methods.place_data_shape), as the bench does."""
    from tvrbench.train import instantiate

    model, _, _ = instantiate(_composed(method, max_words=24, max_frames=7))
    head = model.head
    if method in ("glccl", "xclip"):
        assert (head.max_words, head.max_frames) == (24, 7)
    elif method == "glscl":
        assert head.max_frames == 7 and head.temporal.max_frames == 7
    else:
        assert not hasattr(head, "max_frames")
    assert type(model).__name__ == (
        "CenterCLIPModule" if method == "centerclip" else "RetrievalModule"
    )
