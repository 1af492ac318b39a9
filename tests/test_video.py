"""Decoding, sampling, preprocessing and the frame cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import frame_value, write_video

from tvrbench.data.cache import FrameCache, default_cache_dir
from tvrbench.data.video import (
    CLIP_MEAN,
    CLIP_STD,
    SamplingConfig,
    VideoDecodeError,
    decode_video,
    nearest_indices,
    normalize_frames,
    preprocess_frames,
    sample_times,
)

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "videos"
REAL = {"bikes.mp4": 10.0, "carphone_pristine.mp4": 4.0, "Megamind.avi": 11.26}


# ------------------------------------------------------------------------------ sampling


def test_sample_times_hand_computed():
    s = SamplingConfig(sample_fps=1.0, max_frames=64, clip_seconds=31.0)
    np.testing.assert_allclose(sample_times(4.0, s), [0.5, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(sample_times(3.4, s), [0.5, 1.5, 2.5])  # 3.5 is past the end
    assert len(sample_times(100.0, s)) == 31  # clipped at 31 s
    np.testing.assert_allclose(sample_times(0.3, s), [0.15])  # shorter than half an interval
    s2 = SamplingConfig(sample_fps=2.0, max_frames=64, clip_seconds=None)
    np.testing.assert_allclose(sample_times(2.0, s2), [0.25, 0.75, 1.25, 1.75])


def test_sample_times_spread_when_over_max_frames():
    s = SamplingConfig(sample_fps=1.0, max_frames=5, clip_seconds=None)
    t = sample_times(100.0, s)  # 100 candidates 0.5..99.5 -> 5 spread over the whole span
    np.testing.assert_allclose(t, [0.5, 25.5, 50.5, 74.5, 99.5])
    s31 = SamplingConfig(sample_fps=1.0, max_frames=5, clip_seconds=31.0)
    assert sample_times(100.0, s31)[-1] == 30.5


def test_nearest_indices_matches_brute_force():
    rng = np.random.default_rng(0)
    frames = np.sort(rng.uniform(0, 10, 50))
    targets = rng.uniform(-1, 11, 40)
    brute = np.abs(frames[None, :] - targets[:, None]).argmin(axis=1)
    np.testing.assert_array_equal(nearest_indices(frames, targets), brute)


# ------------------------------------------------------------------------- preprocessing


def test_centre_crop_without_resize_is_a_slice():
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (2, 32, 50, 3), dtype=np.uint8)
    out = preprocess_frames(frames, 32)
    np.testing.assert_array_equal(out, frames[:, :, 9:41])


def test_resize_keeps_flat_images_and_aspect():
    frames = np.full((1, 40, 80, 3), 77, dtype=np.uint8)
    out = preprocess_frames(frames, 20)
    assert out.shape == (1, 20, 20, 3) and out.dtype == np.uint8
    assert np.all(out == 77)


def test_normalize_matches_numpy():
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
    ref = (x / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)  # (..., H, W, 3)
    got = normalize_frames(torch.from_numpy(x))
    assert got.shape == (2, 3, 3, 4, 4)
    np.testing.assert_allclose(got.numpy(), np.moveaxis(ref, -1, -3), atol=1e-5)


# ------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("reader", ["decord", "pyav"])
@pytest.mark.parametrize("kind", ["short", "avi", "h264"])
def test_generated_videos_nearest_frame(tiny_videos, reader, kind):
    path = tiny_videos[kind]
    duration = {"short": 3.0, "avi": 5.5, "h264": 2.0}[kind]
    s = SamplingConfig(sample_fps=2.0, max_frames=64, clip_seconds=None, image_size=32)
    out = decode_video(path, s, reader)
    assert out.reader == reader
    assert out.duration_s == pytest.approx(duration, abs=1e-3)
    targets = (np.arange(int(duration * 2)) + 0.5) / 2.0
    np.testing.assert_allclose(out.times_s, targets, atol=1e-3)  # 4 fps: frames exist there
    expected = [frame_value(round(t * 4) % 16) for t in targets]
    np.testing.assert_allclose(out.frames[:, 16, 16, 0], expected, atol=4)
    assert out.frames.shape == (len(targets), 32, 32, 3) and out.frames.dtype == np.uint8


@pytest.mark.skipif(not SHARED_VIDEOS.exists(), reason="shared videos absent")
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_videos_both_readers_agree(name):
    s = SamplingConfig(sample_fps=1.0, max_frames=64, clip_seconds=31.0, image_size=64)
    a = decode_video(SHARED_VIDEOS / name, s, "decord")
    b = decode_video(SHARED_VIDEOS / name, s, "pyav")
    assert a.duration_s == pytest.approx(REAL[name], abs=0.1)
    assert b.duration_s == pytest.approx(REAL[name], abs=0.1)
    assert a.frames.shape == b.frames.shape == (int(REAL[name] - 0.5) + 1, 64, 64, 3)
    diff = np.abs(a.frames.astype(np.float64) - b.frames.astype(np.float64)).mean()
    assert diff < 3.0


def _corrupt_files(tmp_path: Path, valid: Path) -> dict[str, Path]:
    data = valid.read_bytes()
    files = {
        "truncated": tmp_path / "truncated.mp4",
        "empty": tmp_path / "empty.mp4",
        "text": tmp_path / "text.mp4",
        "missing": tmp_path / "missing.mp4",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a video\n" * 20)
    return files


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "missing"])
@pytest.mark.parametrize("reader", ["auto", "decord", "pyav"])
def test_bad_files_raise_decode_error(tmp_path, tiny_videos, kind, reader):
    path = _corrupt_files(tmp_path, tiny_videos["short"])[kind]
    with pytest.raises(VideoDecodeError) as info:
        decode_video(path, SamplingConfig(image_size=32), reader)
    assert path.name in str(info.value) and "\n" not in str(info.value)


def test_unknown_reader_is_rejected(tiny_videos):
    with pytest.raises(ValueError, match="unknown reader"):
        decode_video(tiny_videos["short"], reader="opencv")


# --------------------------------------------------------------------------------- cache


def test_cache_hit_and_bad_verdict(tmp_path, tiny_videos, decoded_videos):
    cache = FrameCache(tmp_path / "cache")
    s = SamplingConfig(image_size=32)
    info, frames = cache.get_or_decode(tiny_videos["short"], s)
    assert info.error is None and frames.shape[0] == info.num_frames == 3
    info2, frames2 = cache.get_or_decode(tiny_videos["short"], s)
    np.testing.assert_array_equal(frames, frames2)
    assert info2.duration_s == pytest.approx(3.0, abs=1e-3)
    bad = _corrupt_files(tmp_path, tiny_videos["short"])["text"]
    for _ in range(2):
        info_bad, none = cache.get_or_decode(bad, s)
        assert none is None and "text.mp4" in info_bad.error
    assert decoded_videos == ["short.mp4", "text.mp4"]  # one decode each
    # Another sampling setting is another entry; a modified file is another key.
    assert cache.key(tiny_videos["short"], s) != cache.key(
        tiny_videos["short"], SamplingConfig(image_size=64)
    )
    key = cache.key(bad, s)
    os.utime(bad, ns=(0, 10**9))
    assert cache.key(bad, s) != key
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_cache_location_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TVRBENCH_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert FrameCache().root == tmp_path / "c"
    monkeypatch.delenv("TVRBENCH_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tvrbench" / "frames"


def test_pyav_short_video_single_frame(tmp_path):
    path = write_video(tmp_path / "tiny.mp4", 0.25, fps=8)  # 2 frames, 0.25 s
    for reader in ("decord", "pyav"):
        out = decode_video(path, SamplingConfig(image_size=32), reader)
        assert out.frames.shape[0] == 1
        assert out.duration_s == pytest.approx(0.25, abs=1e-3)


# --------------------------------------------------------------------------- prepare-videos


def test_prepare_videos_without_ffmpeg(tmp_path, monkeypatch, capsys):
    from tvrbench.data import prepare

    monkeypatch.setattr(prepare.shutil, "which", lambda name: None)
    assert prepare.main(["--src", str(tmp_path), "--dst", str(tmp_path / "out")]) == 2
    assert "ffmpeg not found on PATH" in capsys.readouterr().err
    cmd = prepare.ffmpeg_command(Path("a."), Path("b."), 3.0, 224)
    assert cmd[cmd.index("-f") + 1] == "mp4" and "fps=3" in cmd[cmd.index("-vf") + 1]


@pytest.mark.skipif(__import__("shutil").which("ffmpeg") is None, reason="ffmpeg not on PATH")
def test_prepare_videos_keeps_names(tmp_path, tiny_videos):
    from tvrbench.data.prepare import FAILURES_NAME, prepare_videos

    src = tmp_path / "src"
    src.mkdir()
    (src / "clip.avi").write_bytes(tiny_videos["avi"].read_bytes())
    (src / "noext.").write_bytes(tiny_videos["short"].read_bytes())
    (src / "broken.mp4").write_text("not a video")
    failures = prepare_videos(src, tmp_path / "dst", fps=3, short_side=32, workers=2)
    assert [f["video"] for f in failures] == ["broken.mp4"]
    assert (tmp_path / "dst" / FAILURES_NAME).exists()
    # Written atomically: no temporary left behind, no partial output of the failed file.
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [
        "clip.avi", "noext.", FAILURES_NAME
    ]  # fmt: skip
    for name, dur in (("clip.avi", 5.5), ("noext.", 3.0)):
        out = decode_video(tmp_path / "dst" / name, SamplingConfig(image_size=32), "pyav")
        assert out.duration_s == pytest.approx(dur, abs=0.4)
