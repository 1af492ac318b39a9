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

Full grid. A video's full grid is every frame at ``sample_fps`` over the whole video, no
``max_frames`` cap (:func:`tvrbench.data.video.full_grid_sampling`; the controlled-length
protocol composes from it). Every sampling of the video is a subset of that grid (the same nearest
frames), so a miss is served from a cached grid without decoding, and with ``clip_seconds: None``
a miss is decoded as the full grid and the grid is stored as well when the sampled frames thin it
(videos longer than ``max_frames / sample_fps``): the lengthened test set then decodes nothing
again. Extra disk: the grid of each such video (with PyAV it costs no extra decoding).

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
from tvrbench.data.video import (
    DecodedVideo,
    SamplingConfig,
    VideoDecodeError,
    full_grid_sampling,
    subsample_grid,
)

CACHE_ENV = "TVRBENCH_CACHE"
CACHE_VERSION = 2  # 2: frames scaled in the decoder / by the uint8 kernel (pixels changed)


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

    def _meta(self, key: str) -> dict | None:
        try:
            return json.loads(self._paths(key)[1].read_text())
        except (OSError, ValueError):
            return None

    def _info(self, path: str | Path, key: str) -> VideoInfo | None:
        meta = self._meta(key)
        if meta is None:
            return None
        if meta.get("error") is not None:
            return VideoInfo(Path(path).name, None, 0, str(meta["error"]))
        if not self._paths(key)[0].exists():
            return None
        return VideoInfo(Path(path).name, float(meta["duration_s"]), int(meta["num_frames"]))

    def _load(self, key: str) -> np.ndarray | None:
        try:
            return np.load(self._paths(key)[0])
        except (OSError, ValueError):
            return None

    def info(self, path: str | Path, sampling: SamplingConfig) -> VideoInfo | None:
        """The cached verdict for this file and setting, or None on a miss."""
        return self._info(path, self.key(path, sampling))

    def load_frames(self, path: str | Path, sampling: SamplingConfig) -> np.ndarray | None:
        """Cached uint8 ``[n, S, S, 3]`` frames, or None on a miss (or an unreadable entry).

        The hot path of a training epoch: one key, one ``.npy`` read, no JSON (the ``.npy`` is
        written before its meta and only for a decodable video).
        """
        return self._load(self.key(path, sampling))

    def store(self, path: str | Path, sampling: SamplingConfig, decoded: DecodedVideo) -> None:
        """Write a decoded video's frames (``.npy``), then its meta (``.json``), atomically."""
        self._store(path, self.key(path, sampling), decoded)

    def _store(self, path: str | Path, key: str, decoded: DecodedVideo) -> None:
        npy, meta_path = self._paths(key)
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

    def _cached_grid(self, path: str | Path, grid: SamplingConfig) -> DecodedVideo | None:
        key = self.key(path, grid)
        meta = self._meta(key)
        if meta is None or meta.get("error") is not None:
            return None
        frames = self._load(key)
        if frames is None:
            return None
        times = np.asarray(meta["times_s"], dtype=np.float64)
        return DecodedVideo(frames, times, float(meta["duration_s"]), str(meta["reader"]))

    def _decode(self, path: str | Path, sampling: SamplingConfig, reader: str) -> DecodedVideo:
        """Decode on a miss, through the video's full grid (module docstring, "Full grid")."""
        grid = full_grid_sampling(sampling)
        if grid == sampling:
            return video_lib.decode_video(path, sampling, reader)
        cached = self._cached_grid(path, grid)
        if cached is not None:
            derived = subsample_grid(cached, sampling)
            if derived is not None:
                return derived
        if sampling.clip_seconds is not None:  # the grid would decode past the clip
            return video_lib.decode_video(path, sampling, reader)
        decoded_grid = video_lib.decode_video(path, grid, reader)
        derived = subsample_grid(decoded_grid, sampling)
        assert derived is not None  # the same span: always derivable
        if len(derived.frames) < len(decoded_grid.frames):  # thinned: keep the grid too
            self.store(path, grid, decoded_grid)
        return derived

    def get_or_decode(
        self, path: str | Path, sampling: SamplingConfig, reader: str = "auto"
    ) -> tuple[VideoInfo, np.ndarray | None]:
        """Frames and info from the cache, decoding (and storing) on a miss.

        Returns ``(info, frames)``; for a bad video ``info.error`` is set and frames is None
        (the verdict is cached too). Never raises :class:`VideoDecodeError`.
        """
        key = self.key(path, sampling)
        info = self._info(path, key)
        if info is not None:
            if info.error is not None:
                return info, None
            frames = self._load(key)
            if frames is not None:
                return info, frames
        try:
            decoded = self._decode(path, sampling, reader)
        except VideoDecodeError as err:
            reason = str(err)
            if Path(path).exists():  # a missing file is not a property of the file: no verdict
                self.store_error(path, sampling, reason)
            return VideoInfo(Path(path).name, None, 0, reason), None
        self._store(path, key, decoded)
        return VideoInfo(Path(path).name, decoded.duration_s, len(decoded.frames)), decoded.frames
