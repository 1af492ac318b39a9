"""tvrbench.atomic: complete files or the old ones, never a partial write or a stray temporary."""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from tvrbench.atomic import (
    atomic_path,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
)


class _Boom(Exception):
    pass


def test_atomic_path_file_appears_complete(tmp_path):
    target = tmp_path / "sub" / "out.bin"  # the folder is created
    with atomic_path(target, suffix=".bin") as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(".bin")
        tmp.write_bytes(b"half")
        assert not target.exists()  # nothing at the destination before the block ends
        with tmp.open("ab") as fh:
            fh.write(b" and the rest")
    assert target.read_bytes() == b"half and the rest"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]


def test_atomic_path_failure_keeps_old_content_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(_Boom):
        with atomic_path(target) as tmp:
            tmp.write_text("partial new")
            raise _Boom
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_path_failure_without_old_file_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # BaseException too: a killed run cleans up
        with atomic_path(tmp_path / "new.txt") as tmp:
            tmp.write_text("partial")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_writers_failing_midway_keep_old_content(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": 1})

    class Unserialisable:
        """Fails half-way through a write: as JSON (``tolist``) and as a pickle."""

        def tolist(self):
            raise _Boom

        def __reduce__(self):
            raise _Boom

    with pytest.raises(_Boom):
        atomic_write_json(target, {"a": Unserialisable()})
    assert json.loads(target.read_text()) == {"a": 1}
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    with pytest.raises(_Boom):
        atomic_torch_save({"w": torch.zeros(2), "x": Unserialisable()}, tmp_path / "m.pt")
    torch.testing.assert_close(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]


def test_atomic_write_bytes_and_text_overwrite(tmp_path):
    target = tmp_path / "f"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    atomic_write_text(target, "héllo")
    assert target.read_bytes() == "héllo".encode()


def test_atomic_write_csv_header_without_rows(tmp_path):
    target = tmp_path / "empty.csv"
    atomic_write_csv(target, [], ("video", "reason"))
    assert target.read_text() == "video,reason\n"
    with target.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == ["video", "reason"] and list(reader) == []


def test_atomic_write_csv_rows_and_extra_columns(tmp_path):
    target = tmp_path / "rows.csv"
    rows = [{"video": "a.mp4", "reason": "bad, very"}, {"video": "b.mp4", "extra": 3}]
    atomic_write_csv(target, rows, ("video", "reason"))
    with target.open(newline="") as fh:
        read = list(csv.DictReader(fh))
    assert read == [
        {"video": "a.mp4", "reason": "bad, very", "extra": ""},
        {"video": "b.mp4", "reason": "", "extra": "3"},
    ]


def test_atomic_write_json_with_nan(tmp_path):
    target = tmp_path / "nan.json"
    atomic_write_json(target, {"R@1": float("nan"), "inf": float("inf"), "n": torch.tensor(2)})
    assert "NaN" in target.read_text()
    back = json.loads(target.read_text())  # Python's json reads its own NaN/Infinity back
    assert math.isnan(back["R@1"]) and back["inf"] == math.inf and back["n"] == 2


def test_atomic_torch_save_round_trip(tmp_path):
    state = {"w": torch.randn(3, 4), "step": 7, "nested": {"b": torch.arange(5)}}
    target = tmp_path / "state.pt"
    atomic_torch_save(state, target)
    back = torch.load(target, weights_only=True)
    torch.testing.assert_close(back["w"], state["w"])
    torch.testing.assert_close(back["nested"]["b"], state["nested"]["b"])
    assert back["step"] == 7
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


# ------------------------------------------------------------------ the writers that use it


def _fake_ffmpeg(fail_names):
    """A stand-in for ``subprocess.run(ffmpeg ...)``: writes bytes to the output (the last
    argument); for an input named in ``fail_names`` writes half a file and exits 1."""
    seen = []

    def run(cmd, **kwargs):
        src, out = Path(cmd[cmd.index("-i") + 1]), Path(cmd[-1])
        seen.append(out)
        assert cmd[cmd.index("-f") + 1] == "mp4" and out.exists()  # mkstemp made it
        if src.name in fail_names:
            out.write_bytes(b"half")
            return subprocess.CompletedProcess(cmd, 1, "", "boom\nInvalid data found\n")
        out.write_bytes(b"video " + src.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, seen


def test_prepare_videos_writes_atomically(tmp_path, monkeypatch):
    from tvrbench.data import prepare

    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for name in ("a.avi", "b.", "broken.mp4"):
        (src / name).write_bytes(name.encode())
    dst.mkdir()
    (dst / "broken.mp4").write_bytes(b"")  # an empty leftover is redone, not kept
    run, seen = _fake_ffmpeg({"broken.mp4"})
    monkeypatch.setattr(prepare.shutil, "which", lambda name: "/usr/bin/ffmpeg")
    monkeypatch.setattr(prepare.subprocess, "run", run)
    failures = prepare.prepare_videos(src, dst, workers=1)
    assert failures == [{"video": "broken.mp4", "reason": "ffmpeg failed: Invalid data found"}]
    assert {p.parent for p in seen} == {dst}
    assert all(p.name.startswith(".") and p.suffix == ".mp4" for p in seen)
    assert (dst / "a.avi").read_bytes() == b"video a.avi"
    assert (dst / "b.").read_bytes() == b"video b."
    assert (dst / "broken.mp4").read_bytes() == b""  # the failed output never replaced it
    assert sorted(p.name for p in dst.iterdir()) == [
        "a.avi", "b.", "broken.mp4", prepare.FAILURES_NAME
    ]  # fmt: skip
    assert (dst / prepare.FAILURES_NAME).read_text().splitlines()[0] == "video,reason"
    # A rerun keeps the finished files and writes a header-only manifest once all succeed.
    (src / "broken.mp4").unlink()
    (dst / "broken.mp4").unlink()
    run, seen = _fake_ffmpeg(set())
    monkeypatch.setattr(prepare.subprocess, "run", run)
    assert prepare.prepare_videos(src, dst, workers=1) == [] and seen == []
    assert (dst / prepare.FAILURES_NAME).read_text() == "video,reason\n"


def test_frame_cache_failed_store_leaves_no_entry(tmp_path, monkeypatch):
    import numpy as np

    from tvrbench.data import cache as cache_lib
    from tvrbench.data.video import DecodedVideo, SamplingConfig

    store = cache_lib.FrameCache(tmp_path / "cache")
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    sampling = SamplingConfig(image_size=8)
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    decoded = DecodedVideo(frames=frames, duration_s=2.0, times_s=[0.5, 1.5], reader="pyav")

    def failing_save(fh, array):
        fh.write(b"\x93NUMPY partial")
        raise _Boom

    monkeypatch.setattr(cache_lib.np, "save", failing_save)
    with pytest.raises(_Boom):
        store.store(video, sampling, decoded)
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    assert store.info(video, sampling) is None
    monkeypatch.undo()
    store.store(video, sampling, decoded)
    assert sorted(p.suffix for p in (tmp_path / "cache").rglob("*") if p.is_file()) == [
        ".json", ".npy"
    ]  # fmt: skip
    np.testing.assert_array_equal(store.load_frames(video, sampling), frames)
    assert store.info(video, sampling).num_frames == 2


def test_csv_float_format(tmp_path):
    from tvrbench.atomic import atomic_write_csv

    path = tmp_path / "f.csv"
    atomic_write_csv(
        path, [{"a": 1.0 / 3.0, "b": "x", "c": 2}], ["a", "b", "c"], float_format=".3g"
    )
    assert path.read_text() == "a,b,c\n0.333,x,2\n"
