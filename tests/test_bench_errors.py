"""`tvrbench bench` stops at once, with one line, when its inputs are absent."""

from __future__ import annotations

from pathlib import Path

from tvrbench.bench.runner import main

CONFIG = str(Path(__file__).resolve().parents[1] / "configs/bench/tiny.yaml")


def _run(capsys, tmp_path, *args: str) -> tuple[int, str]:
    code = main(["--config", CONFIG, "--out_dir", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return code, err[0]


def test_missing_clip_weights(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    code, line = _run(capsys, tmp_path, "--clip", "openai/clip-vit-base-patch32")
    assert code == 2
    assert line.startswith("tvrbench bench: CLIP") and "openai/clip-vit-base-patch32" in line
    assert not (tmp_path / "out").exists()  # failed before any work


def test_missing_didemo_root(capsys, tmp_path):
    code, line = _run(capsys, tmp_path, "--didemo_root", str(tmp_path / "nope"))
    assert code == 2 and "no such folder" in line


def test_malformed_annotations(capsys, tmp_path):
    root = tmp_path / "didemo"
    (root / "videos").mkdir(parents=True)
    for split in ("train", "val", "test"):
        (root / f"{split}_data.json").write_text('{"not": "a list"}')
    code, line = _run(capsys, tmp_path, "--didemo_root", str(root))
    assert code == 2 and "train_data.json" in line
