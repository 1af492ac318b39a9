"""Cheaper decoding: PyAV stops at clip_seconds, one open per file in ``auto``, torchcodec."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED, frame_value, write_video

from tvrbench.data import video as video_lib
from tvrbench.data.video import SamplingConfig, decode_video

SHARED_VIDEOS = SHARED / "videos"


def _full_then_clip(path: Path, reader: str, clip_s: float, fps: float, size: int):
    full = decode_video(path, SamplingConfig(fps, 10_000, None, size), reader)
    clipped = decode_video(path, SamplingConfig(fps, 10_000, clip_s, size), reader)
    return full, clipped


@pytest.mark.parametrize("codec", ["mpeg4", "libx264"])
def test_pyav_stops_at_clip_with_full_decode_frames(tmp_path, codec):
    path = write_video(tmp_path / f"long_{codec}.mp4", 12.0, fps=4, codec=codec)
    full, clipped = _full_then_clip(path, "pyav", clip_s=3.0, fps=2.0, size=32)
    # Hand-computed: 12 s at 2 fps -> 24 candidates; 3 s -> 6, at 0.25, 0.75, ... 2.75 s.
    assert full.frames.shape[0] == 24 and clipped.frames.shape[0] == 6
    assert clipped.duration_s == pytest.approx(12.0, abs=1e-6)  # from packet timestamps
    assert full.duration_s == pytest.approx(12.0, abs=1e-6)
    np.testing.assert_allclose(clipped.times_s, (np.arange(6) + 0.5) / 2.0)
    np.testing.assert_array_equal(clipped.frames, full.frames[:6])
    expected = [frame_value(round(t * 4) % 16) for t in clipped.times_s]
    np.testing.assert_allclose(clipped.frames[:, 16, 16, 0], expected, atol=4)


def test_pyav_clip_decodes_only_the_clipped_part(tmp_path, monkeypatch):
    """The stop is real: frames after the clip are not decoded (counted at the decoder)."""
    path = write_video(tmp_path / "long.mp4", 20.0, fps=4)
    seen: list[float] = []
    real = video_lib._in_time_order

    def counting(frames, *args):
        def recorded():
            for frame in frames:
                seen.append(float(frame.time))
                yield frame

        return real(recorded(), *args)

    monkeypatch.setattr(video_lib, "_in_time_order", counting)
    decode_video(path, SamplingConfig(1.0, 64, 2.0, 32), "pyav")
    # 20 s of video, clip 2 s: decoding ends after the last candidate (1.5 s) plus the reorder
    # window (16 frames = 4 s at 4 fps), far before the end
    assert seen and max(seen) <= 1.5 + 16 / 4 + 0.25


@pytest.mark.skipif(not SHARED_VIDEOS.exists(), reason="shared videos absent")
@pytest.mark.parametrize("name", ["bikes.mp4", "Megamind.avi", "carphone_pristine.mp4"])
def test_pyav_clip_on_real_files_matches_full_decode(name):
    full, clipped = _full_then_clip(SHARED_VIDEOS / name, "pyav", clip_s=3.0, fps=1.0, size=32)
    assert clipped.duration_s == pytest.approx(full.duration_s, abs=1e-9)
    np.testing.assert_array_equal(clipped.frames, full.frames[:3])
    np.testing.assert_array_equal(clipped.times_s, full.times_s[:3])


def _count_opens(monkeypatch) -> list[str]:
    import av
    import decord

    opened: list[str] = []
    real_open, real_vr = av.open, decord.VideoReader

    def av_open(*args, **kwargs):
        opened.append("pyav")
        return real_open(*args, **kwargs)

    def vr(*args, **kwargs):
        opened.append("decord")
        return real_vr(*args, **kwargs)

    monkeypatch.setattr(av, "open", av_open)
    monkeypatch.setattr(decord, "VideoReader", vr)
    return opened


@pytest.mark.parametrize("kind, reader", [("short", "decord"), ("h264", "decord"), ("avi", "pyav")])
def test_auto_opens_each_file_once(tiny_videos, monkeypatch, kind, reader):
    opened = _count_opens(monkeypatch)
    out = decode_video(tiny_videos[kind], SamplingConfig(image_size=32), "auto")
    assert opened == [reader] and out.reader == reader


@pytest.mark.skipif(not SHARED_VIDEOS.exists(), reason="shared videos absent")
def test_auto_opens_broken_index_avi_once(monkeypatch):
    """Megamind.avi: decord's index has decode-order timestamps; auto goes to PyAV directly."""
    opened = _count_opens(monkeypatch)
    out = decode_video(SHARED_VIDEOS / "Megamind.avi", SamplingConfig(image_size=32), "auto")
    assert opened == ["pyav"] and out.reader == "pyav"


def test_auto_falls_back_when_the_first_reader_fails(tmp_path, tiny_videos, monkeypatch):
    opened = _count_opens(monkeypatch)

    def broken(*args, **kwargs):
        raise video_lib._ReaderError("forced failure")

    monkeypatch.setattr(video_lib, "decode_decord", broken)
    out = decode_video(tiny_videos["short"], SamplingConfig(image_size=32), "auto")
    assert out.reader == "pyav" and opened == ["pyav"]


def test_is_avi_reads_the_container_not_the_name(tmp_path, tiny_videos):
    renamed = tmp_path / "really_avi.mp4"
    renamed.write_bytes(tiny_videos["avi"].read_bytes())
    assert video_lib.is_avi(renamed) and not video_lib.is_avi(tiny_videos["short"])


# ------------------------------------------------------------------------------- torchcodec


def _torchcodec_usable() -> bool:
    if importlib.util.find_spec("torchcodec") is None:
        return False
    try:  # its wheels link a CUDA torch: importing can fail with a CPU-only torch
        import torchcodec.decoders  # noqa: F401
    except Exception:
        return False
    return True


def test_torchcodec_missing_is_a_decode_error_not_a_crash(tiny_videos):
    if _torchcodec_usable():
        pytest.skip("torchcodec is importable here")
    with pytest.raises(video_lib.VideoDecodeError, match="torchcodec"):
        decode_video(tiny_videos["short"], SamplingConfig(image_size=32), "torchcodec")


@pytest.mark.parametrize("kind", ["short", "h264"])
def test_torchcodec_nearest_frames(tiny_videos, kind):
    if not _torchcodec_usable():
        pytest.skip("torchcodec not importable (optional extra tvrbench[torchcodec])")
    duration = {"short": 3.0, "h264": 2.0}[kind]
    s = SamplingConfig(sample_fps=2.0, max_frames=64, clip_seconds=None, image_size=32)
    out = decode_video(tiny_videos[kind], s, "torchcodec")
    assert out.reader == "torchcodec"
    assert out.duration_s == pytest.approx(duration, abs=1e-3)
    targets = (np.arange(int(duration * 2)) + 0.5) / 2.0
    np.testing.assert_allclose(out.times_s, targets, atol=1e-3)
    expected = [frame_value(round(t * 4) % 16) for t in targets]
    np.testing.assert_allclose(out.frames[:, 16, 16, 0], expected, atol=4)
