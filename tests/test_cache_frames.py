"""Decode once, everywhere in parallel: sharded decoding under DDP, ``tvrbench cache-frames``."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import re
from pathlib import Path

import pytest
from conftest import make_tiny_didemo, write_video

from tvrbench.data import video as video_lib
from tvrbench.data.cache import FrameCache
from tvrbench.data.video import SamplingConfig

SAMPLING = SamplingConfig(sample_fps=1.0, max_frames=8, clip_seconds=None, image_size=16)


def _sharded_rank(rank: int, world: int, init_file: str, paths: list[str], cache_dir: str, out):
    import torch.distributed as dist

    from tvrbench.data.datamodule import DecodeShard, probe_sharded

    decoded: list[str] = []
    real = video_lib.decode_video

    def counting(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return real(path, *args, **kwargs)

    video_lib.decode_video = counting
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        shard = DecodeShard(rank, world, rank, world)
        infos = probe_sharded(
            [Path(p) for p in paths], SAMPLING, FrameCache(cache_dir), "auto", 1, shard
        )
        out.put((rank, decoded, [i.num_frames for i in infos]))
    finally:
        dist.destroy_process_group()


def test_sharded_decode_two_gloo_ranks_decode_each_video_once(tmp_path):
    durations = [1.0, 2.0, 3.0, 1.5, 2.5]
    paths = [
        str(write_video(tmp_path / f"v{i}.mp4", d, fps=2, size=16)) for i, d in enumerate(durations)
    ]
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    init_file = str(tmp_path / "pg_init")
    cache_dir = str(tmp_path / "cache")
    procs = [
        ctx.Process(target=_sharded_rank, args=(r, 2, init_file, paths, cache_dir, out))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    decoded = {rank: names for rank, names, _ in results}
    everything = sorted(decoded[0] + decoded[1])
    assert everything == sorted(Path(p).name for p in paths)  # each video once, by one rank
    assert decoded[0] and decoded[1]  # both ranks did a share
    # both ranks return every video's info: 1 fps midpoints of 1-3 s videos (hand-counted)
    for _, _, frames in results:
        assert frames == [1, 2, 3, 1, 2]
    assert len(list(Path(cache_dir).rglob("*.npy"))) == len(paths)


def _decode_in_child(path: str) -> int:
    return len(video_lib.decode_video(path, SAMPLING, "pyav").frames)


def test_pyav_decode_in_forked_pool_after_the_parent_decoded(tmp_path):
    """The parent's scaler must not leak into forked decode workers (it deadlocked)."""
    path = str(write_video(tmp_path / "v.mp4", 3.0, fps=4, size=48))
    assert _decode_in_child(path) == 3
    with multiprocessing.get_context("fork").Pool(2) as pool:
        assert pool.map_async(_decode_in_child, [path, path]).get(timeout=60) == [3, 3]


# ----------------------------------------------------------------------------- cache-frames


def _data_config(tmp_path: Path, root: Path) -> Path:
    config = {
        "data": {
            "class_path": "tvrbench.data.datamodule.DiDeMoDataModule",
            "init_args": {
                "root": str(root),
                "max_frames": 8,
                "sample_fps": 1.0,
                "clip_seconds": 31.0,
                "image_size": 16,
                "cache_dir": str(tmp_path / "cache"),
            },
        }
    }
    path = tmp_path / "data.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def test_cache_frames_fills_resumes_and_lists_failures(tmp_path, decoded_videos, capsys):
    from tvrbench.cli import main

    decoded = decoded_videos
    root = make_tiny_didemo(tmp_path / "ds", {"val": [1.0, 2.0, 3.0], "test": [2.0, 4.0]})
    (root / "videos" / "test0@N00_1000.mp4").write_text("not a video\n")  # unreadable
    (root / "videos" / "val2@N00_1002.mp4").unlink()  # listed, no file
    config = _data_config(tmp_path, root)
    manifest = tmp_path / "failed.csv"
    args = [
        "cache-frames",
        "--config",
        str(config),
        "--processes",
        "1",
        "--manifest",
        str(manifest),
    ]
    assert main(args) == 0
    assert len(decoded) == 4  # 2 val + 2 test files (the missing one has no file)
    with manifest.open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["video"], r["split"]) for r in rows) == [
        ("test0@N00_1000.mp4", "test"),
        ("val2@N00_1002.mp4", "val"),
    ]
    cache_root = tmp_path / "cache"
    entries = sorted(cache_root.rglob("*.npy"))
    assert len(entries) == 3  # the unreadable one has only its verdict (.json)

    # resume: delete two entries; a rerun decodes exactly those two
    capsys.readouterr()
    removed = entries[:2]
    for npy in removed:
        npy.unlink()
        npy.with_suffix(".json").unlink()
    decoded.clear()
    assert main(args) == 0
    assert len(decoded) == 2
    assert len(list(cache_root.rglob("*.npy"))) == 3
    out = capsys.readouterr().out
    decoded_now = [int(n) for n in re.findall(r"(\d+) decoded now", out)]
    assert sum(decoded_now) == 2 and "failed videos: 2" in out


def test_cache_frames_needs_a_root(tmp_path):
    from tvrbench.data.cache_frames import main

    config = tmp_path / "c.yaml"
    config.write_text("data:\n  init_args:\n    max_frames: 8\n")
    with pytest.raises(SystemExit):
        main(["--config", str(config)])
    assert os.path.exists(config)
