"""On-disk cache of decoded frames, durations and bad-video verdicts.

Location: ``cache_dir`` when given, else the environment variable ``TVRBENCH_CACHE``, else
``~/.cache/tvrbench/frames``. Per video and sampling setting it holds two files named by a key
(SHA-1 of the file identity — absolute path, size, mtime — and of the sampling parameters
``sample_fps, max_frames, clip_seconds, image_size``):

* ``<key>.npy`` — uint8 ``[n, S, S, 3]`` frames. Size: ``n * S * S * 3`` bytes, i.e. about
  150 KB per frame at 224 px: 4.7 MB for a 31-frame DiDeMo video, about 40 GB for the 10,461
  DiDeMo videos at the published protocol (1 fps, 31 s, 224 px); about 3 KB per frame at 32 px.
* ``<key>.json`` — ``{"video", "duration_s", "num_frames", "times_s", "reader"}``, or
  ``{"video", "error"}`` for a file no reader could decode (so it is not decoded again each epoch).

Files are written atomically (:mod:`tvrbench.atomic`: a temporary file in the same folder moved
into place with ``os.replace``), so parallel workers and DDP ranks may share one cache. A changed
file (size or mtime) gets a new key; stale entries are never read (delete the folder to reclaim
space).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tvrbench.atomic import atomic_path, atomic_write_text
from tvrbench.data import video as video_lib
from tvrbench.data.video import DecodedVideo, SamplingConfig, VideoDecodeError

CACHE_ENV = "TVRBENCH_CACHE"
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$TVRBENCH_CACHE`` if set, else ``~/.cache/tvrbench/frames``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tvrbench" / "frames"


@dataclass
class VideoInfo:
    """What the cache knows about one video (without its frames).

    Attributes:
        video: file name.
        duration_s: decoded duration (None for a bad video).
        num_frames: number of sampled frames (0 for a bad video).
        error: why no reader could decode it, or None.
    """

    video: str
    duration_s: float | None
    num_frames: int
    error: str | None = None


class FrameCache:
    """Decoded-frame cache (see the module docstring for location, layout and size).

    Args:
        cache_dir: folder of the cache (default :func:`default_cache_dir`).
    """

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()

    def key(self, path: str | Path, sampling: SamplingConfig) -> str:
        """Key of a file's current identity (path, size, mtime) and the sampling setting."""
        path = Path(path).resolve()
        try:
            st = path.stat()
            ident = [str(path), st.st_size, st.st_mtime_ns]
        except OSError:
            ident = [str(path), -1, -1]
        spec = [
            CACHE_VERSION,
            ident,
            float(sampling.sample_fps),
            int(sampling.max_frames),
            None if sampling.clip_seconds is None else float(sampling.clip_seconds),
            int(sampling.image_size),
        ]
        return hashlib.sha1(json.dumps(spec).encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        sub = self.root / key[:2]
        return sub / f"{key}.npy", sub / f"{key}.json"

    def info(self, path: str | Path, sampling: SamplingConfig) -> VideoInfo | None:
        """The cached verdict for this file and setting, or None on a miss."""
        npy, meta_path = self._paths(self.key(path, sampling))
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            return None
        if meta.get("error") is not None:
            return VideoInfo(Path(path).name, None, 0, str(meta["error"]))
        if not npy.exists():
            return None
        return VideoInfo(Path(path).name, float(meta["duration_s"]), int(meta["num_frames"]))

    def load_frames(self, path: str | Path, sampling: SamplingConfig) -> np.ndarray | None:
        """Cached uint8 ``[n, S, S, 3]`` frames, or None on a miss (or an unreadable entry)."""
        npy, _ = self._paths(self.key(path, sampling))
        try:
            return np.load(npy)
        except (OSError, ValueError):
            return None

    def store(self, path: str | Path, sampling: SamplingConfig, decoded: DecodedVideo) -> None:
        """Write a decoded video's frames (``.npy``), then its meta (``.json``), atomically."""
        npy, meta_path = self._paths(self.key(path, sampling))
        frames = np.ascontiguousarray(decoded.frames, dtype=np.uint8)
        # Through a handle: np.save would append ".npy" to the temporary file's name.
        with atomic_path(npy) as tmp, tmp.open("wb") as fh:
            np.save(fh, frames)
        meta = {
            "video": Path(path).name,
            "duration_s": decoded.duration_s,
            "num_frames": int(frames.shape[0]),
            "times_s": [float(t) for t in decoded.times_s],
            "reader": decoded.reader,
        }
        atomic_write_text(meta_path, json.dumps(meta))

    def store_error(self, path: str | Path, sampling: SamplingConfig, reason: str) -> None:
        """Record that no reader could decode this file (its ``.json`` only)."""
        _, meta_path = self._paths(self.key(path, sampling))
        meta = {"video": Path(path).name, "error": reason}
        atomic_write_text(meta_path, json.dumps(meta))

    def get_or_decode(
        self, path: str | Path, sampling: SamplingConfig, reader: str = "auto"
    ) -> tuple[VideoInfo, np.ndarray | None]:
        """Frames and info from the cache, decoding (and storing) on a miss.

        Returns ``(info, frames)``; for a bad video ``info.error`` is set and frames is None
        (the verdict is cached too). Never raises :class:`VideoDecodeError`.
        """
        info = self.info(path, sampling)
        if info is not None:
            if info.error is not None:
                return info, None
            frames = self.load_frames(path, sampling)
            if frames is not None:
                return info, frames
        try:
            decoded = video_lib.decode_video(path, sampling, reader)
        except VideoDecodeError as err:
            reason = str(err)
            if Path(path).exists():  # a missing file is not a property of the file: no verdict
                self.store_error(path, sampling, reason)
            return VideoInfo(Path(path).name, None, 0, reason), None
        self.store(path, sampling, decoded)
        return VideoInfo(Path(path).name, decoded.duration_s, len(decoded.frames)), decoded.frames
