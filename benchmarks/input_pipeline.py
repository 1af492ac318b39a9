"""Input pipeline against what one H100 consumes: frames per CPU-second per core, per stage.

    python benchmarks/input_pipeline.py [--out benchmarks/results/input-<device>.csv]
        [--quick] [--work-dir /tmp/tvrbench-bench-input] [--items 48]

The GPU side (written out, printed next to the figures): ViT-B/32 costs 4.41 G multiply-adds per
224-px frame forward, 3x that with the backward pass = 13.2 G; one H100 at 40 % of its dense bf16
peak (989 TFLOP/s = 495 T multiply-adds/s) therefore consumes
0.4 * 495e12 / 13.2e9 = 15,000 frames/s. A stage that gives F frames per CPU-second on one core
needs 15,000 / (0.8 F) cores to keep up (80 % parallel efficiency).

Stages, each timed in CPU seconds of this process and its finished children (median of the
repeats for the short ones):

* ``raw_decode``: :func:`tvrbench.data.video.decode_video` per reader (1 fps, 31-s clip, 224 px)
  on the real files in ../shared/videos and on generated 30-s H.264 clips at 360p and 720p
  (30 fps; made with ffmpeg when it is on PATH, skipped and said otherwise);
* ``reencoded_decode``: the 720p clip after ``tvrbench prepare-videos`` (3 fps, 224 px);
* ``cache_read``: a bare frame-cache hit (:meth:`FrameCache.load_frames`, 31 frames);
* ``store_*``: the frame-store choice: today's one ``.npy`` per video, one memory-mapped uint8
  shard per split, JPEG-compressed frames (bytes per frame and read cost);
* ``dataloader``: the project's Dataset (cache hits) through a DataLoader at 0/1/2 workers with
  the project's collate (uint8, padded) and, side by side in the same run, the previous collate
  (float32 CLIP normalisation of the padded batch on the CPU, written below as ``old_collate``).
"""

from __future__ import annotations

import argparse
import io
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_VIDEOS = ROOT.parent / "shared" / "videos"

VIT_B32_GMACS_PER_FRAME = 4.41  # forward, 224 px
TRAIN_FACTOR = 3  # forward + backward
H100_BF16_DENSE_TMACS = 495.0  # 989 TFLOP/s dense bf16 = 495 T multiply-adds/s
GPU_UTILISATION = 0.4
PARALLEL_EFFICIENCY = 0.8
DIDEMO_VIDEOS = 10_461
DIDEMO_FRAMES_PER_VIDEO = 30  # 1 fps over a ~30-s video, clip 31 s

COLUMNS = (
    "stage",
    "variant",
    "source",
    "frames",
    "cpu_s",
    "wall_s",
    "frames_per_cpu_s",
    "bytes_per_frame",
    "cores_to_feed_h100",
    "note",
)


def h100_frames_per_s() -> float:
    """Training frames per second one H100 consumes (module docstring)."""
    macs_per_frame = TRAIN_FACTOR * VIT_B32_GMACS_PER_FRAME * 1e9
    return GPU_UTILISATION * H100_BF16_DENSE_TMACS * 1e12 / macs_per_frame


@dataclass
class Row:
    stage: str
    variant: str
    source: str
    frames: int
    cpu_s: float
    wall_s: float
    frames_per_cpu_s: float
    bytes_per_frame: float | None = None
    cores_to_feed_h100: float | None = None
    note: str = ""


def cpu_now_s() -> float:
    """CPU seconds of this process plus its finished (waited-for) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], int], repeats: int) -> tuple[int, float, float]:
    """``(frames, cpu_s, wall_s)`` of the median-CPU repeat of ``fn`` (which returns frames)."""
    runs = []
    for _ in range(repeats):
        c0, w0 = cpu_now_s(), time.perf_counter()
        frames = fn()
        runs.append((frames, cpu_now_s() - c0, time.perf_counter() - w0))
    cpus = [r[1] for r in runs]
    return runs[cpus.index(median(cpus))] if repeats % 2 else min(runs, key=lambda r: r[1])


def make_row(stage: str, variant: str, source: str, measured: tuple[int, float, float], **kw: Any):
    frames, cpu_s, wall_s = measured
    rate = frames / cpu_s if cpu_s > 0 else float("inf")
    cores = h100_frames_per_s() / (PARALLEL_EFFICIENCY * rate)
    row = Row(stage, variant, source, frames, cpu_s, wall_s, rate, cores_to_feed_h100=cores, **kw)
    print(
        f"  {stage:<17} {variant:<22} {source:<26} {rate:>10.1f} frames/CPU-s  "
        f"cores for one H100: {cores:>8.1f}"
    )
    return row


# ------------------------------------------------------------------------------------ clips


def generate_clip(path: Path, height: int, seconds: float = 30.0) -> Path | None:
    """A 30-fps H.264 clip of moving test pattern plus grain (so it does not compress to
    nothing, like real footage); None without ffmpeg."""
    if path.exists():
        return path
    if shutil.which("ffmpeg") is None:
        return None
    width = height * 16 // 9
    src = f"testsrc2=size={width}x{height}:rate=30,noise=alls=12:allf=t"
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src]
    cmd += ["-t", str(seconds), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
    subprocess.run([*cmd, str(path)], check=True)
    return path


def readers() -> list[str]:
    from tvrbench.data.video import available_readers

    usable = [name for name, why in available_readers().items() if why is None]
    return [*usable, "auto"]


def bench_raw(clips: dict[str, Path], repeats: int) -> list[Row]:
    from tvrbench.data.video import SamplingConfig, decode_video

    sampling = SamplingConfig(1.0, 64, 31.0, 224)
    rows = []
    for source, path in clips.items():
        stage = "reencoded_decode" if source.startswith("reencoded") else "raw_decode"
        for reader in readers():

            def run(path: Path = path, reader: str = reader) -> int:
                return len(decode_video(path, sampling, reader).frames)

            measured = timed(run, repeats)
            rows.append(make_row(stage, reader, source, measured))
    return rows


# ------------------------------------------------------------------------------ frame store


def bench_store(work: Path, repeats: int) -> list[Row]:
    """Today's ``.npy`` per video vs one memory-mapped shard vs JPEG (quality 90), read cost."""
    from PIL import Image

    from tvrbench.data.cache import FrameCache
    from tvrbench.data.video import DecodedVideo, SamplingConfig

    rng = np.random.default_rng(0)
    # Natural-looking frames: smooth gradients plus noise (random noise would defeat JPEG).
    yy, xx = np.mgrid[0:224, 0:224]
    base = np.stack([(xx + yy) // 2, xx, yy], axis=-1).astype(np.int16)
    frames = np.stack(
        [np.clip(base + rng.integers(-12, 12, base.shape) + 3 * i, 0, 255) for i in range(31)]
    ).astype(np.uint8)  # (31, 224, 224, 3)
    videos = 16
    cache = FrameCache(work / "store-cache")
    sampling = SamplingConfig(1.0, 64, 31.0, 224)
    paths = []
    for v in range(videos):
        p = work / "store-videos" / f"v{v}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        cache.store(p, sampling, DecodedVideo(frames, np.arange(31.0), 31.0, "synthetic"))
        paths.append(p)
    rows = []

    def npy() -> int:
        return sum(len(cache.load_frames(p, sampling)) for p in paths)

    rows.append(
        make_row(
            "cache_read",
            "npy_per_video",
            "31x224px",
            timed(npy, repeats),
            bytes_per_frame=frames[0].nbytes,
        )
    )
    shard = work / "store-shard.npy"
    np.save(shard, np.concatenate([frames] * videos))

    def mmap_shard() -> int:
        arr = np.load(shard, mmap_mode="r")
        return sum(len(np.array(arr[v * 31 : (v + 1) * 31])) for v in range(videos))

    rows.append(
        make_row(
            "store_mmap_shard",
            "one_shard_per_split",
            "31x224px",
            timed(mmap_shard, repeats),
            bytes_per_frame=frames[0].nbytes,
        )
    )
    jpegs = []
    for f in frames:
        buf = io.BytesIO()
        Image.fromarray(f).save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())

    def jpeg() -> int:
        out = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in jpegs * 4]
        return len(out)

    rows.append(
        make_row(
            "store_jpeg",
            "PIL_quality90",
            "31x224px",
            timed(jpeg, repeats),
            bytes_per_frame=float(np.mean([len(b) for b in jpegs])),
            note="decode only; synthetic gradient+grain frames",
        )
    )
    return rows


# ------------------------------------------------------------------------------- DataLoader


def old_collate(samples: list[dict[str, Any]], max_frames: int) -> dict[str, Any]:
    """The collate before uint8 batches: float32 CLIP normalisation of the whole padded batch
    on the CPU (``normalize_frames(raw) * frame_mask[...]``), as the "before" reference."""
    from tvrbench.data.video import normalize_frames

    b = len(samples)
    size = samples[0]["frames"].shape[1]
    raw = torch.zeros(b, max_frames, size, size, 3, dtype=torch.uint8)  # (B, N, S, S, 3)
    frame_mask = torch.zeros(b, max_frames, dtype=torch.bool)  # (B, N)
    for j, s in enumerate(samples):
        n = min(len(s["frames"]), max_frames)
        raw[j, :n] = s["frames"][:n]
        frame_mask[j, :n] = True
    frames = normalize_frames(raw) * frame_mask[:, :, None, None, None]  # (B, N, 3, S, S)
    return {
        "input_ids": torch.stack([s["input_ids"] for s in samples]).long(),
        "attention_mask": torch.stack([s["attention_mask"] for s in samples]).long(),
        "frames": frames,
        "frame_mask": frame_mask,
    }


class OldCollate:
    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return old_collate(samples, self.max_frames)


class NewCollate:
    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        from tvrbench.data.datamodule import collate_batch

        return collate_batch(samples, self.max_frames)


def bench_loader(work: Path, items: int, workers: list[int], extra_epochs: int) -> list[Row]:
    from torch.utils.data import DataLoader

    from tvrbench.data.annotations import VideoAnnotation
    from tvrbench.data.cache import FrameCache
    from tvrbench.data.datamodule import VideoTextDataset
    from tvrbench.data.video import DecodedVideo, SamplingConfig

    max_frames, real_frames, batch = 64, 31, 16
    sampling = SamplingConfig(1.0, max_frames, 31.0, 224)
    cache_dir = work / "loader-cache"
    cache = FrameCache(cache_dir)
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (real_frames, 224, 224, 3), dtype=np.uint8)
    videos = []
    for i in range(items):
        p = work / "loader-videos" / f"v{i}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        if cache.load_frames(p, sampling) is None:
            cache.store(p, sampling, DecodedVideo(frames, np.arange(31.0), 31.0, "synthetic"))
        videos.append(VideoAnnotation(f"v{i}.bin", ("a video",), ((),), p))
    ids = torch.zeros(items, 32, dtype=torch.long)
    ds = VideoTextDataset(
        videos,
        ids,
        ids.clone(),
        [31.0] * items,
        [real_frames] * items,
        [0] * items,
        sampling,
        str(cache_dir),
        "auto",
    )
    rows = []
    for num_workers in workers:
        for name, collate in (("old_float32_cpu", OldCollate), ("project_uint8", NewCollate)):

            def run(epochs: int, collate: type = collate, num_workers: int = num_workers) -> int:
                loader = DataLoader(
                    ds,
                    batch_size=batch,
                    num_workers=num_workers,
                    collate_fn=collate(max_frames),
                    persistent_workers=num_workers > 0,
                )
                n = 0
                it = iter(loader)
                for _ in range(epochs):
                    for b in it:
                        n += int(b["frame_mask"].sum())
                    it = iter(loader)  # the same persistent workers serve the next epoch
                del it, loader  # workers exit here, so their CPU time is counted
                return n

            # Marginal cost of an epoch (3 epochs minus 1): worker start-up left out, as in a
            # long training run with persistent workers.
            f1, c1, w1 = timed(lambda: run(1), 1)
            f3, c3, w3 = timed(lambda: run(1 + extra_epochs), 1)
            rows.append(
                make_row(
                    "dataloader",
                    f"{name}_w{num_workers}",
                    f"{items}x31f_pad64_b{batch}",
                    (f3 - f1, c3 - c1, w3 - w1),
                    note=f"real frames counted; padded batch built; {extra_epochs} epochs "
                    "after the first (start-up excluded)",
                )
            )
    return rows


# ------------------------------------------------------------------------------------- main


def summary(rows: list[Row]) -> list[str]:
    need = h100_frames_per_s()
    lines = [
        "GPU side: ViT-B/32 training = 3 x 4.41 = 13.2 G multiply-adds per 224-px frame;",
        f"one H100 at 40 % of 495 T multiply-adds/s (dense bf16) consumes {need:,.0f} frames/s.",
    ]
    by = {(r.stage, r.variant, r.source): r for r in rows}
    for w in (0, 1, 2):
        old = next((r for r in rows if r.variant == f"old_float32_cpu_w{w}"), None)
        new = next((r for r in rows if r.variant == f"project_uint8_w{w}"), None)
        if old and new:
            lines.append(
                f"DataLoader, {w} workers: {old.frames_per_cpu_s:,.0f} -> "
                f"{new.frames_per_cpu_s:,.0f} frames/CPU-s "
                f"({new.frames_per_cpu_s / old.frames_per_cpu_s:.1f}x); one H100 needs "
                f"{old.cores_to_feed_h100:.1f} -> {new.cores_to_feed_h100:.1f} cores"
            )
    for source in ("h264_360p_30s", "h264_720p_30s"):
        decs = [r for (s, _, src), r in by.items() if s == "raw_decode" and src == source]
        if decs:
            best = max(decs, key=lambda r: r.frames_per_cpu_s)
            setup_min = (
                DIDEMO_VIDEOS
                * DIDEMO_FRAMES_PER_VIDEO
                / (best.frames_per_cpu_s * 16 * PARALLEL_EFFICIENCY)
                / 60
            )
            lines.append(
                f"raw {source} ({best.variant}): {best.frames_per_cpu_s:.1f} frames/CPU-s/core; "
                f"{best.cores_to_feed_h100:,.0f} cores to feed one H100 from raw video; decoding "
                f"DiDeMo once ({DIDEMO_VIDEOS:,} videos x {DIDEMO_FRAMES_PER_VIDEO} frames) on 16 "
                f"cores: {setup_min:.0f} min"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="CSV (default results/input-cpu.csv)")
    parser.add_argument(
        "--work-dir", default=str(Path(tempfile.gettempdir()) / "tvrbench-bench-input")
    )
    parser.add_argument("--items", type=int, default=48, help="videos in the DataLoader test")
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    device = "cpu"
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"input-{device}.csv"
    repeats = 1 if args.quick else 3
    items = 8 if args.quick else args.items
    rows: list[Row] = []
    need = h100_frames_per_s()
    print(f"one H100 consumes {need:,.0f} ViT-B/32 training frames/s (see the module docstring)")

    clips: dict[str, Path] = {}
    if SHARED_VIDEOS.exists():
        for p in sorted(SHARED_VIDEOS.iterdir()):
            clips[f"shared/{p.name}"] = p
    else:
        print(f"  {SHARED_VIDEOS} absent: real files skipped")
    seconds = 6.0 if args.quick else 30.0
    for height in (360, 720):
        clip = generate_clip(work / f"h264_{height}p_{seconds:.0f}s.mp4", height, seconds)
        if clip is None:
            print("  ffmpeg not on PATH: generated 360p/720p clips and the re-encode skipped")
            break
        clips[f"h264_{height}p_{seconds:.0f}s"] = clip
    big = clips.get(f"h264_720p_{seconds:.0f}s")
    if big is not None:
        from tvrbench.data.prepare import prepare_one

        dst = work / "reencoded"
        dst.mkdir(exist_ok=True)
        if not (dst / big.name).exists():
            prepare_one(big, dst, 3.0, 224)
        clips["reencoded_3fps_224px_from_720p"] = dst / big.name
    print("raw and re-encoded decode (1 fps, clip 31 s, 224 px):")
    long_repeats = {k: (1 if "720p" in k or "360p" in k else repeats) for k in clips}
    for source, path in clips.items():
        rows += bench_raw({source: path}, long_repeats[source])
    print("frame store:")
    rows += bench_store(work, repeats)
    print("DataLoader (cache hits, batch 16, 31 real frames padded to 64):")
    rows += bench_loader(work, items, [0, 1, 2], extra_epochs=1 if args.quick else 2)

    lines = summary(rows)
    print("\n".join(lines))
    from tvrbench.atomic import atomic_write_csv

    atomic_write_csv(out, [asdict(r) for r in rows], COLUMNS, float_format=".6g")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
