"""The dataset manifest: every video of the splits with its size, digest, duration, frames
sampled and status, so that two labs can tell whether they ran on the same DiDeMo (public copies
differ: several videos are missing from some).

One row per listed (and annotated) video of each split (:data:`MANIFEST_COLUMNS`):

* ``status`` — ``ok``; ``missing`` (no file for the name in the video folder); ``unreadable``
  (no reader could decode it; ``reason`` says why);
* ``size_bytes`` — the file's size;
* ``sha256`` — for speed not of the whole file: SHA-256 of its first ``hashed_bytes`` bytes
  (``hash_mb`` MiB, 1 by default, or the whole file when smaller) followed by the ASCII text
  ``size=<size_bytes>`` (the bytes hashed are in ``hashed_bytes``): a file changed after its
  first MiB without a change in size is not told apart, the price of reading 1 MiB per video;
* ``duration_s`` and ``frames_sampled`` — decoded duration and the number of frames the sampling
  setting (fps, max frames, clip seconds) takes from it, read through the frame cache.

The manifest's own identity is :func:`manifest_sha256` (SHA-256 of the CSV file's bytes): the
benchmark writes ``manifest.csv`` into the run folder and records that hash in results.json.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tvrbench.data.annotations import SPLITS
from tvrbench.data.video import SamplingConfig

MANIFEST_COLUMNS = [
    "split",
    "video",
    "file",
    "status",
    "size_bytes",
    "sha256",
    "hashed_bytes",
    "duration_s",
    "frames_sampled",
    "reason",
]
#: MiB hashed from the start of each file (the rest is represented by its size).
DEFAULT_HASH_MB = 1.0
MIB = 1024**2


@dataclass(frozen=True)
class ManifestRow:
    """One video of one split (see the module docstring for the columns)."""

    split: str
    video: str
    file: str
    status: str
    size_bytes: int | None
    sha256: str
    hashed_bytes: int | None
    duration_s: float | None
    frames_sampled: int | None
    reason: str


def file_digest(path: str | Path, hash_mb: float = DEFAULT_HASH_MB) -> tuple[str, int, int]:
    """``(sha256 hex, size in bytes, bytes hashed)``: SHA-256 of the first ``hash_mb`` MiB of the
    file followed by ``b"size=<size>"``.

    >>> import tempfile, os
    >>> with tempfile.NamedTemporaryFile(delete=False) as fh:
    ...     _ = fh.write(b"abc")
    >>> digest, size, hashed = file_digest(fh.name)
    >>> digest == hashlib.sha256(b"abcsize=3").hexdigest(), size, hashed
    (True, 3, 3)
    >>> os.unlink(fh.name)
    """
    if not hash_mb > 0:
        raise ValueError(f"hash_mb must be > 0, got {hash_mb}")
    path = Path(path)
    size = path.stat().st_size
    limit = min(size, int(hash_mb * MIB))
    h = hashlib.sha256()
    with path.open("rb") as fh:
        left = limit
        while left > 0:
            chunk = fh.read(min(left, MIB))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    h.update(f"size={size}".encode())
    return h.hexdigest(), size, limit


def build_manifest(
    root: str | Path,
    video_dir: str | Path | None,
    sampling: SamplingConfig,
    cache_dir: str | Path | None = None,
    reader: str = "auto",
    splits: tuple[str, ...] = SPLITS,
    hash_mb: float = DEFAULT_HASH_MB,
    processes: int = 1,
    limits: dict[str, int | None] | None = None,
) -> list[ManifestRow]:
    """Manifest rows of every video of ``splits`` (split-list order; missing videos after the
    split's others). Durations and frame counts come from the frame cache (videos not yet in it
    are decoded once, as ``tvrbench inspect-data`` does). ``limits``: per split, only the first
    so many videos (as a DataModule with ``<split>_limit`` uses them)."""
    from tvrbench.data.annotations import load_split
    from tvrbench.data.cache import FrameCache
    from tvrbench.data.datamodule import probe_videos

    cache = FrameCache(cache_dir)
    rows: list[ManifestRow] = []
    for split in splits:
        ann = load_split(root, split, video_dir)
        limit = (limits or {}).get(split)
        videos = [v for v in ann.videos[:limit] if v.path is not None]
        infos = probe_videos(
            [v.path for v in videos if v.path is not None],
            sampling,
            cache,
            reader,
            processes,
            desc=f"manifest {split}",
        )
        for v, info in zip(videos, infos):
            assert v.path is not None
            digest, size, hashed = file_digest(v.path, hash_mb)
            bad = info.error is not None
            rows.append(
                ManifestRow(
                    split=split,
                    video=v.video,
                    file=v.path.name,
                    status="unreadable" if bad else "ok",
                    size_bytes=size,
                    sha256=digest,
                    hashed_bytes=hashed,
                    duration_s=None if bad else info.duration_s,
                    frames_sampled=None if bad else info.num_frames,
                    reason=str(info.error) if bad else "",
                )
            )
        folder = Path(video_dir) if video_dir is not None else Path(root) / "videos"
        rows += [
            ManifestRow(
                split, name, "", "missing", None, "", None, None, None, f"no file in {folder}"
            )
            for name in ann.missing
        ]
    return rows


def write_manifest(rows: list[ManifestRow], path: str | Path) -> str:
    """Write ``rows`` as CSV (atomically) and return :func:`manifest_sha256` of the file."""
    from tvrbench.atomic import atomic_write_csv

    table = [{k: ("" if v is None else v) for k, v in asdict(r).items()} for r in rows]
    atomic_write_csv(path, table, MANIFEST_COLUMNS)
    return manifest_sha256(path)


def datamodule_manifest(datamodule: Any, path: str | Path) -> str | None:
    """Write the manifest of the videos a ``DiDeMoDataModule`` reads (its root, video folder,
    sampling, frame cache, reader and split limits) to ``path``; returns its hash, or None for a
    DataModule without video files (e.g. cached features)."""
    needed = ("root", "video_dir", "sampling", "cache", "reader")
    if not all(hasattr(datamodule, name) for name in needed):
        return None
    rows = build_manifest(
        datamodule.root,
        datamodule.video_dir,
        datamodule.sampling,
        cache_dir=datamodule.cache.root,
        reader=datamodule.reader,
        limits=getattr(datamodule, "limits", None),
    )
    return write_manifest(rows, path)


def manifest_record(path: str | Path) -> dict[str, Any] | None:
    """What results.json records of a manifest file: its name, SHA-256 and status counts (None
    when there is no such file)."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open(newline="") as fh:
        statuses = [row["status"] for row in csv.DictReader(fh)]
    counts = {s: statuses.count(s) for s in sorted(set(statuses))}
    return {"file": path.name, "sha256": manifest_sha256(path), "videos": counts}


def manifest_sha256(path: str | Path) -> str:
    """SHA-256 of a manifest file's bytes (the identity of the data a run used)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def status_counts(rows: list[ManifestRow]) -> dict[str, int]:
    """``{status: count}`` over ``rows`` (ok / missing / unreadable)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return counts


__all__ = [
    "DEFAULT_HASH_MB",
    "MANIFEST_COLUMNS",
    "ManifestRow",
    "build_manifest",
    "datamodule_manifest",
    "file_digest",
    "manifest_record",
    "manifest_sha256",
    "status_counts",
    "write_manifest",
]
