"""Shared test fixtures: tiny generated videos and a tiny DiDeMo-format dataset."""

from __future__ import annotations

import gc
import json
import os
from pathlib import Path

# The tensors in these tests are tiny: intra-op threads cost more than they save (on a loaded
# 2-core machine, several times more), and every child process (DDP ranks, launcher jobs,
# benchmark children, notebook kernels) would start as many again. One thread, unless the
# caller chose otherwise; set before torch is imported, so this process and its children use it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_collection_finish(session) -> None:
    """Put what collection imported (torch, Lightning, transformers: some 450 000 objects that
    live as long as the process) out of the garbage collector's reach, so that a full collection
    does not traverse it again: each took about 0.3 s here, and the benchmarks call
    ``gc.collect()`` before every memory reading."""
    gc.freeze()


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


@pytest.fixture()
def decoded_videos(monkeypatch) -> list[str]:
    """The file names that :func:`tvrbench.data.video.decode_video` decodes in this process
    during the test, in call order (the real decoder still runs)."""
    from tvrbench.data import video as video_lib

    calls: list[str] = []
    real = video_lib.decode_video

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video_lib, "decode_video", counting)
    return calls


@pytest.fixture()
def counting_decode(decoded_videos, monkeypatch) -> list[str]:
    """:func:`decoded_videos` with every DataModule decoding in this process, where the calls
    are seen (its pool would take every CPU, in other processes)."""
    from tvrbench.data.datamodule import DiDeMoDataModule

    monkeypatch.setattr(DiDeMoDataModule, "decode_processes", lambda self: 1)
    return decoded_videos


def quiet_trainer(**settings):
    """A CPU Lightning ``Trainer`` without logger, checkpoints, progress bar or model summary;
    ``settings`` add to these or override them."""
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**quiet, **settings})


# ------------------------------------------------------------------------ tiny benchmark runs

REPO = Path(__file__).resolve().parents[1]
TINY_BENCH = REPO / "configs" / "bench" / "tiny.yaml"


def bench_argv(tmp: Path, *extra: str, out: str | Path = "out") -> list[str]:
    """``tvrbench bench`` arguments for configs/bench/tiny.yaml with the cache under
    ``tmp/cache`` and the runs under ``tmp / out`` (``out`` may be absolute); ``extra`` is
    appended."""
    cache, out_dir = str(tmp / "cache"), str(tmp / out)
    return ["--config", str(TINY_BENCH), "--cache_dir", cache, "--out_dir", out_dir, *extra]


def run_dir_of(out: Path) -> Path:
    """The one run folder under a bench's ``out_dir``."""
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


@pytest.fixture(scope="session")
def bench_home(tmp_path_factory) -> Path:
    """A folder whose ``cache`` (synthetic data, decoded frames) the session's tiny benchmark
    runs share: each generates and decodes only what an earlier one has not."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tmp_path_factory.mktemp("bench")


#: The shared run's arguments beyond :func:`bench_argv`'s.
TINY_BENCH_EXTRA = ("--methods", "meanp,xpool", "--seeds", "2")


@pytest.fixture(scope="session")
def tiny_bench_run(bench_home) -> tuple[Path, Path]:
    """``(bench_home, run)``: the tiny benchmark (meanP, X-Pool) with 2 seeds, run once for the
    session; ``bench_argv(bench_home, *TINY_BENCH_EXTRA)`` resumes it. A test that changes the
    run must leave it complete (the resume test deletes a record and runs again)."""
    from tvrbench.bench.runner import main

    assert main(bench_argv(bench_home, *TINY_BENCH_EXTRA)) == 0
    return bench_home, run_dir_of(bench_home / "out")


#: Injected lengths (s) of the shared controlled-length run.
STRESS_LENGTHS = [0.0, 20.0, 60.0]


def stress_argv(tmp: Path) -> list[str]:
    """The tiny benchmark with the controlled-length protocol at :data:`STRESS_LENGTHS` (whole
    videos: no ``clip_seconds``), its runs under ``tmp/stress``."""
    extra = tmp / "stress.yaml"
    extra.write_text(
        "data_overrides: {max_frames: 6, sample_fps: 1.0, clip_seconds: null, num_buckets: 2,"
        " batch_size: 8, eval_batch_size: 16}\n"
        "stress: true\n"
        f"injected_lengths_s: {STRESS_LENGTHS}\n"
    )
    return bench_argv(tmp, "--config", str(extra), out="stress")


@pytest.fixture(scope="session")
def tiny_stress_run(bench_home) -> tuple[Path, Path]:
    """``(bench_home, run)``: :func:`stress_argv`'s run, once for the session
    (tests/test_bench_stress.py resumes it and adds lengths to it; the notebook reads it)."""
    from tvrbench.bench.runner import main

    assert main(stress_argv(bench_home)) == 0
    return bench_home, run_dir_of(bench_home / "stress")
