"""``tvrbench prepare-videos``: re-encode DiDeMo videos to a low frame rate and short side with
ffmpeg (the published recipe: 3 fps, 224 px), so decoding at training time is cheap.

Every output keeps its input's file NAME (the split lists keep matching), whatever its extension:
the container is always MP4 (``-f mp4``). Outputs are written atomically (:mod:`tvrbench.atomic`: a
hidden temporary file in ``--dst`` moved into place), so a file present in ``--dst`` is complete
and is skipped on a rerun. Failures are listed
in ``DST/prepare_failures.csv`` (video, reason).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tvrbench.atomic import atomic_path, atomic_write_csv

FAILURES_NAME = "prepare_failures.csv"


class FfmpegNotFoundError(RuntimeError):
    """ffmpeg is not on PATH."""


class _FfmpegFailed(Exception):
    """ffmpeg failed on one file (raised inside the atomic write so nothing is moved into place)."""


def ffmpeg_command(src: Path, dst: Path, fps: float, short_side: int) -> list[str]:
    """The ffmpeg call for one file (even output sides, as H.264 requires)."""
    scale = f"scale='if(gt(iw,ih),-2,{short_side})':'if(gt(iw,ih),{short_side},-2)'"
    return [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src),
        "-vf", f"fps={fps:g},{scale}", "-an", "-f", "mp4", str(dst),
    ]  # fmt: skip


def prepare_one(src: Path, dst_dir: Path, fps: float, short_side: int) -> tuple[str, str | None]:
    """Re-encode ``src`` into ``dst_dir`` under the same name; returns (name, error or None)."""
    dst = dst_dir / src.name
    if dst.exists() and dst.stat().st_size > 0:
        return src.name, None
    try:
        # "-f mp4" sets the container (the name may end in anything); ".mp4" just labels the file.
        with atomic_path(dst, suffix=".mp4") as tmp:
            proc = subprocess.run(
                ffmpeg_command(src, tmp, fps, short_side), capture_output=True, text=True
            )
            if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
                lines = proc.stderr.strip().splitlines()
                raise _FfmpegFailed(lines[-1] if lines else f"exit code {proc.returncode}")
    except _FfmpegFailed as err:
        return src.name, f"ffmpeg failed: {str(err)[:300]}"
    return src.name, None


def prepare_videos(
    src_dir: str | Path,
    dst_dir: str | Path,
    fps: float = 3.0,
    short_side: int = 224,
    workers: int = 4,
) -> list[dict[str, str]]:
    """Re-encode every file of ``src_dir``; returns the failures (also written to the manifest)."""
    if shutil.which("ffmpeg") is None:
        raise FfmpegNotFoundError(
            "ffmpeg not found on PATH; install it (e.g. apt-get install ffmpeg)"
        )
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"{src_dir}: source folder not found")
    if src_dir.resolve() == dst_dir.resolve():
        raise ValueError(f"{dst_dir}: destination must differ from the source (names are kept)")
    dst_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    from tqdm.auto import tqdm

    failures = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = pool.map(lambda p: prepare_one(p, dst_dir, fps, short_side), files)
        for name, error in tqdm(jobs, total=len(files), desc="re-encode", unit="video"):
            if error is not None:
                failures.append({"video": name, "reason": error})
    atomic_write_csv(dst_dir / FAILURES_NAME, failures, ("video", "reason"))
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tvrbench prepare-videos", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="folder of the original videos")
    p.add_argument("--dst", required=True, help="output folder (same file names)")
    p.add_argument("--fps", type=float, default=3.0)
    p.add_argument("--short-side", type=int, default=224)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = p.parse_args(argv)
    try:
        failures = prepare_videos(args.src, args.dst, args.fps, args.short_side, args.workers)
    except (FfmpegNotFoundError, OSError, ValueError) as err:
        print(f"tvrbench prepare-videos: {err}", file=sys.stderr)
        return 2
    if failures:
        print(
            f"{len(failures)} video(s) failed; listed in {Path(args.dst) / FAILURES_NAME}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
