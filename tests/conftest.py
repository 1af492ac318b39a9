"""Shared test fixtures: tiny generated videos and a tiny DiDeMo-format dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared"

TINY_WORDS = ["a", "the", "red", "blue", "green", "circle", "square", "moves", "left", "right"]


def frame_value(i: int) -> int:
    """Grey level of frame ``i`` in :func:`write_video` (steps of 16, so codecs keep it)."""
    return (16 * i + 8) % 256


def write_video(
    path: Path, seconds: float, fps: int = 4, size: int = 64, codec: str = "mpeg4"
) -> Path:
    """A small video whose frame ``i`` is a flat grey of level :func:`frame_value` ``(i)``
    (plus a white square in the top-left corner), ``round(seconds * fps)`` frames."""
    import av

    n = max(1, round(seconds * fps))
    fmt = "mp4" if path.suffix.lower() not in {".avi", ".mov", ".mkv"} else None
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"} if codec == "mpeg4" else {}
        for i in range(n):
            img = np.full((size, size, 3), frame_value(i % 16), dtype=np.uint8)
            img[:8, :8] = 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _entry(i: int, video: str, description: str) -> dict:
    return {
        "annotation_id": i,
        "description": description,
        "video": video,
        "times": [[0, 0], [0, 1]],
        "dl_link": f"https://example.org/{i}",
        "num_segments": 6,
    }


def make_tiny_didemo(root: Path, durations_s: dict[str, list[float]]) -> Path:
    """A DiDeMo-format dataset under ``root``: per split, one video per duration, two sentences
    each; the second video of every split has a name ending in a bare "." (file without it)."""
    rng = np.random.default_rng(0)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    ann_id = 0
    for split, durations in durations_s.items():
        entries, names = [], []
        for j, dur in enumerate(durations):
            stem = f"{split}{j}@N00_{1000 + j}"
            name, file = (f"{stem}.", f"{stem}.mp4") if j == 1 else (f"{stem}.mp4",) * 2
            write_video(root / "videos" / file, dur)
            names.append(name)
            for _ in range(2):
                words = rng.choice(TINY_WORDS, size=int(rng.integers(3, 8)))
                entries.append(_entry(ann_id, name, " ".join(words)))
                ann_id += 1
        (root / f"{split}_data.json").write_text(json.dumps(entries))
        (root / f"{split}_list.txt").write_text("\n".join(names) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_videos(tmp_path_factory) -> dict[str, Path]:
    """Three small videos: 3 s mpeg4 .mp4, 5.5 s mpeg4 .avi, 2 s H.264 .mp4 (4 fps, 64x64)."""
    d = tmp_path_factory.mktemp("videos")
    return {
        "short": write_video(d / "short.mp4", 3.0),
        "avi": write_video(d / "clip.avi", 5.5),
        "h264": write_video(d / "h264.mp4", 2.0, codec="libx264"),
    }


@pytest.fixture(scope="session")
def tiny_didemo(tmp_path_factory) -> Path:
    """A tiny DiDeMo-format dataset: train 6 videos (2-12 s), val 4, test 4."""
    root = tmp_path_factory.mktemp("didemo")
    return make_tiny_didemo(
        root,
        {
            "train": [2.0, 3.0, 4.5, 6.0, 8.0, 12.0],
            "val": [2.5, 3.5, 5.0, 7.0],
            "test": [1.5, 4.0, 6.5, 9.0],
        },
    )


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    """A word-level tokenizer over :data:`TINY_WORDS`, saved to a folder."""
    from tvrbench.backbone import build_tiny_tokenizer

    d = tmp_path_factory.mktemp("tokenizer")
    build_tiny_tokenizer(TINY_WORDS).save_pretrained(str(d))
    return str(d)
