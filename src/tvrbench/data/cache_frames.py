"""``tvrbench cache-frames``: fill the frame cache of a data config before any GPU job.

Decoding raw DiDeMo takes from about twenty minutes (360p) to hours (720p) of CPU time; run it on
CPU machines first, then training only reads the cache (same file identities and sampling
settings, hence the same keys: point ``cache_dir`` / ``TVRBENCH_CACHE`` at the same folder).

It reads the ``data:`` section of one or more LightningCLI configs (later files override earlier
ones, as ``--config`` does for ``tvrbench fit``), decodes every listed video of the chosen splits
that is not cached yet in a pool of every usable CPU (progress bar per split), and writes a
manifest CSV of the videos that failed (``video, split, reason``: unreadable, or no file). It is
resumable: each video is stored as soon as it is decoded, and a rerun decodes only what is
missing.

    tvrbench cache-frames --config configs/data/didemo.yaml --root /data/didemo
"""

from __future__ import annotations

import argparse
import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tvrbench.atomic import atomic_path
from tvrbench.data.annotations import SPLITS, load_split
from tvrbench.data.datamodule import MANIFEST_FIELDS, DiDeMoDataModule, probe_videos

log = logging.getLogger(__name__)

MANIFEST_NAME = "cache_frames_failed.csv"


@dataclass(frozen=True)
class SplitCacheReport:
    """What one split's pass did.

    Attributes:
        split: the split.
        listed: videos in the split list (after the config's limit).
        already_cached: videos whose entry (frames or bad-video verdict) was in the cache before.
        decoded: videos decoded by this pass.
        failed: videos that are unreadable or have no file (listed in the manifest).
    """

    split: str
    listed: int
    already_cached: int
    decoded: int
    failed: int


def data_init_args(config_paths: list[str]) -> dict[str, Any]:
    """The ``data.init_args`` of LightningCLI configs, later files overriding earlier ones."""
    import yaml

    merged: dict[str, Any] = {}
    for path in config_paths:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise SystemExit(f"cache-frames: cannot read config {path}: {err}") from err
        data = doc.get("data")
        if data is None:
            continue
        if not isinstance(data, dict):
            raise SystemExit(f"cache-frames: {path}: 'data' must be a mapping")
        merged.update(data.get("init_args", {}) or {})
    return merged


def cache_split(
    dm: DiDeMoDataModule, split: str, processes: int
) -> tuple[SplitCacheReport, list[dict[str, str]]]:
    """Decode the missing entries of one split; returns its report and its failed rows."""
    ann = load_split(dm.root, split, dm.video_dir)
    videos = ann.videos
    limit = dm.limits[split]
    if limit is not None:
        videos = videos[:limit]
    with_file = [v for v in videos if v.path is not None]
    paths = [v.path for v in with_file if v.path is not None]
    cached = sum(dm.cache.info(p, dm.sampling) is not None for p in paths)
    infos = probe_videos(paths, dm.sampling, dm.cache, dm.reader, processes, desc=split)
    failed = [
        {"video": v.video, "split": split, "reason": str(info.error)}
        for v, info in zip(with_file, infos)
        if info.error is not None
    ]
    failed += [
        {"video": name, "split": split, "reason": f"missing: no file for it in {dm.video_dir}"}
        for name in ann.missing
    ]
    report = SplitCacheReport(split, len(videos), cached, len(paths) - cached, len(failed))
    return report, failed


def write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tvrbench cache-frames",
        description="Decode every video of a data config into the frame cache (resumable).",
    )
    parser.add_argument("--config", action="append", required=True, help="data config YAML")
    parser.add_argument("--root", help="dataset root (overrides the config's)")
    parser.add_argument("--video_dir", help="video folder (overrides the config's)")
    parser.add_argument("--cache_dir", help="frame cache folder (overrides the config's)")
    parser.add_argument("--reader", help="auto | decord | pyav | torchcodec")
    parser.add_argument(
        "--splits", default=",".join(SPLITS), help="comma-separated splits (default: all)"
    )
    parser.add_argument(
        "--processes", type=int, default=0, help="decode processes (0: every usable CPU)"
    )
    parser.add_argument(
        "--manifest", help=f"failed-video CSV (default: next to bad_videos.csv, {MANIFEST_NAME})"
    )
    args = parser.parse_args(argv)

    init_args = data_init_args(args.config)
    for name in ("root", "video_dir", "cache_dir", "reader"):
        if getattr(args, name) is not None:
            init_args[name] = getattr(args, name)
    if "root" not in init_args:
        parser.error(f"no data.init_args.root in {', '.join(args.config)}; give --root")
    dm = DiDeMoDataModule(**init_args)
    processes = args.processes if args.processes > 0 else dm.decode_processes()
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        parser.error(f"unknown split(s) {unknown}; expected some of {', '.join(SPLITS)}")
    rows: list[dict[str, str]] = []
    print(f"frame cache: {dm.cache.root} ({dm.sampling}, reader {dm.reader}, {processes} proc.)")
    for split in splits:
        if not (dm.root / f"{split}_data.json").exists():
            print(f"{split}: no {split}_data.json under {dm.root}, skipped")
            continue
        report, failed = cache_split(dm, split, processes)
        rows += failed
        print(
            f"{split}: {report.listed} listed, {report.already_cached} already cached, "
            f"{report.decoded} decoded now, {report.failed} failed"
        )
    manifest = Path(args.manifest) if args.manifest else dm.manifest_path.with_name(MANIFEST_NAME)
    write_manifest(manifest, rows)
    print(f"failed videos: {len(rows)} (manifest {manifest})")
    return 0
