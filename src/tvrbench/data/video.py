"""Video decoding, frame sampling and preprocessing (SPEC §3).

Sampling: frames are taken at the midpoints of consecutive ``1 / sample_fps`` intervals,
``t_i = (i + 0.5) / sample_fps`` for every ``t_i`` inside the span, where the span is the video's
duration, truncated to ``clip_seconds`` when that is set (31 s is the published protocol; None
keeps the whole video). When there are more than ``max_frames`` candidates, ``max_frames`` of them
are chosen uniformly over the whole span (``linspace`` over the candidate indices, as CLIP4Clip
does on its 1-fps frame list). A video shorter than one interval gives one frame at mid-span.

Durations and timestamps come from the stream itself, never from the header frame count or fps
(some files lie about both): the duration is the last frame's time plus one frame interval, both
measured from the stream start. For every target time the frame nearest in time is taken.

Readers: ``"decord"`` (fast random access), ``"pyav"`` (decodes the stream sequentially),
``"auto"`` (decord, then PyAV when decord fails on that file). Decord's frame index is checked:
when its timestamps are not finite and increasing (e.g. some AVI files), random access is not
trusted either and decord is treated as having failed (``"auto"`` moves on to PyAV; a forced
``"decord"`` reader then decodes sequentially with times from the average rate).

Preprocessing: short side resized to ``image_size`` (bilinear with antialiasing), centre crop to
``image_size x image_size``; the product is uint8 ``[n, S, S, 3]`` (what the frame cache stores and what batches carry).
CLIP normalisation (:func:`prepare_frames`) runs on the model's device, after the batch moved.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

READERS = ("auto", "decord", "pyav")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class VideoDecodeError(RuntimeError):
    """A video file could not be decoded by any reader (message: file name and reason)."""


@dataclass(frozen=True)
class SamplingConfig:
    """How frames are taken from a video (part of the frame-cache key).

    Attributes:
        sample_fps: sampling rate in frames per second of video.
        max_frames: at most this many frames per video.
        clip_seconds: truncate the span to this many seconds (None: whole video).
        image_size: side of the square output frames in pixels.
    """

    sample_fps: float = 1.0
    max_frames: int = 64
    clip_seconds: float | None = 31.0
    image_size: int = 224

    def __post_init__(self) -> None:
        if not self.sample_fps > 0:
            raise ValueError(f"sample_fps must be > 0, got {self.sample_fps}")
        if self.max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {self.max_frames}")
        if self.clip_seconds is not None and not self.clip_seconds > 0:
            raise ValueError(f"clip_seconds must be > 0 or None, got {self.clip_seconds}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")


@dataclass
class DecodedVideo:
    """Frames sampled from one video.

    Attributes:
        frames: uint8 ``[n, S, S, 3]`` preprocessed frames.
        times_s: ``[n]`` times (s) of the frames taken (nearest decoded frame to each target).
        duration_s: decoded duration of the whole video in seconds.
        reader: which reader produced the frames.
    """

    frames: np.ndarray
    times_s: np.ndarray
    duration_s: float
    reader: str


# ----------------------------------------------------------------------------------- sampling


def candidate_times(span_s: float, sample_fps: float) -> np.ndarray:
    """Midpoints ``(i + 0.5) / fps`` strictly inside ``[0, span_s)``; ``[span_s / 2]`` when the
    span is shorter than half an interval."""
    n = max(0, math.ceil(span_s * sample_fps - 0.5))
    if n == 0:
        return np.array([max(span_s, 0.0) / 2.0])
    return (np.arange(n) + 0.5) / sample_fps


def sample_times(duration_s: float, sampling: SamplingConfig) -> np.ndarray:
    """Target times (s) for a video of ``duration_s`` seconds, at most ``max_frames`` of them."""
    span_s = duration_s if sampling.clip_seconds is None else min(duration_s, sampling.clip_seconds)
    times = candidate_times(span_s, sampling.sample_fps)
    if len(times) > sampling.max_frames:
        idx = np.round(np.linspace(0, len(times) - 1, sampling.max_frames)).astype(np.int64)
        times = times[idx]
    return times


_TIE_S = 1e-6  # timestamps closer than this count as equally near (ties go to the earlier frame)


def nearest_indices(frame_times_s: np.ndarray, targets_s: np.ndarray) -> np.ndarray:
    """For each target, the index of the frame nearest in time (ties: the earlier frame).

    ``frame_times_s`` must be sorted ascending.
    """
    right = np.clip(np.searchsorted(frame_times_s, targets_s), 1, len(frame_times_s) - 1)
    left = right - 1
    if len(frame_times_s) == 1:
        return np.zeros(len(targets_s), dtype=np.int64)
    dist_right = np.abs(frame_times_s[right] - targets_s)
    take_right = dist_right < np.abs(targets_s - frame_times_s[left]) - _TIE_S
    return np.where(take_right, right, left).astype(np.int64)


def _duration_from_times(times_s: np.ndarray) -> float:
    """Last frame time plus one frame interval (median spacing)."""
    if len(times_s) > 1:
        step = float(np.median(np.diff(times_s)))
        return float(times_s[-1]) + max(step, 0.0)
    return float(times_s[-1]) if len(times_s) else 0.0


# ------------------------------------------------------------------------------ preprocessing


def preprocess_frames(frames: np.ndarray | torch.Tensor, image_size: int) -> np.ndarray:
    """Resize the short side to ``image_size`` (bilinear, antialiased) and centre-crop.

    Args:
        frames: uint8 ``[n, H, W, 3]``.
    Returns:
        uint8 ``[n, image_size, image_size, 3]``.
    """
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames [n, H, W, 3], got {tuple(x.shape)}")
    n, h, w, _ = x.shape
    if n == 0:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    scale = image_size / min(h, w)
    new_h, new_w = max(image_size, round(h * scale)), max(image_size, round(w * scale))
    x = x.permute(0, 3, 1, 2).float()  # (n, 3, H, W)
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True)
    top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
    x = x[:, :, top : top + image_size, left : left + image_size]  # (n, 3, S, S)
    x = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)  # (n, S, S, 3)
    return x.contiguous().numpy()


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 ``[..., H, W, 3]`` → CLIP-normalised float ``[..., 3, H, W]``."""
    x = frames.float().div(255.0).movedim(-1, -3)  # (..., 3, H, W)
    mean = x.new_tensor(CLIP_MEAN).view(3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(3, 1, 1)
    return (x - mean) / std


def prepare_frames(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """A batch's frames as the CLIP towers take them, on whatever device they already are.

    ``frames`` uint8 ``[B, N, S, S, 3]`` (the batch contract: padded, not normalised) becomes
    float32 ``[B, N, 3, S, S]``, CLIP-normalised, with padded frames (``frame_mask`` False) set
    to 0; floating frames are taken as already prepared and returned unchanged. Run after the
    batch reached the device (``RetrievalModule.on_after_batch_transfer``), so only uint8 bytes
    cross the host and the normalisation runs where the model does.
    """
    if frames.is_floating_point():
        return frames
    if frames.dtype != torch.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        raise ValueError(
            f"frames must be uint8 [B, N, S, S, 3] or prepared float [B, N, 3, S, S], got "
            f"{frames.dtype} {tuple(frames.shape)}"
        )
    x = normalize_frames(frames)  # (B, N, 3, S, S) float32
    return x * frame_mask[:, :, None, None, None].to(x.dtype)


# ------------------------------------------------------------------------------------ readers


class _ReaderError(Exception):
    """One reader failed on one file (collected; raised as VideoDecodeError if all fail)."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(f"{path.name}: file not found ({path})")
    if not path.is_file():
        raise VideoDecodeError(f"{path.name}: not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(f"{path.name}: empty file")


def _valid_times(times_s: np.ndarray) -> bool:
    return bool(
        len(times_s) > 0
        and np.all(np.isfinite(times_s))
        and times_s[0] > -1.0
        and np.all(np.diff(times_s) > 0)
    )


def decode_decord(
    path: Path, sampling: SamplingConfig, sequential_ok: bool = False
) -> DecodedVideo:
    """Decode with decord: timestamps from its frame index, frames by random access.

    With ``sequential_ok`` a file with a broken frame index is decoded sequentially, frame times
    then coming from the average rate (used only when decord is forced).
    """
    try:
        import decord
    except ImportError as err:
        raise _ReaderError(f"decord not installed ({err})") from err
    try:
        vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        n = len(vr)
        if n == 0:
            raise _ReaderError("no frames")
        stamps = np.asarray(vr.get_frame_timestamp(np.arange(n)), dtype=np.float64)  # (n, 2)
        starts = stamps[:, 0]
        if _valid_times(starts):
            starts, end = starts - starts[0], float(stamps[-1, 1] - starts[0])
            duration_s = end if end > starts[-1] else _duration_from_times(starts)
            targets = sample_times(duration_s, sampling)
            idx = nearest_indices(starts, targets)
            uniq, inverse = np.unique(idx, return_inverse=True)
            raw = vr.get_batch(uniq.tolist()).asnumpy()[inverse]  # (n_t, H, W, 3)
            times = starts[idx]
        elif sequential_ok:
            fps = float(vr.get_avg_fps())
            if not fps > 0:
                raise _ReaderError("broken frame index and no frame rate")
            all_times = np.arange(n) / fps
            duration_s = _duration_from_times(all_times)
            targets = sample_times(duration_s, sampling)
            idx = nearest_indices(all_times, targets)
            vr = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            wanted = set(idx.tolist())
            kept: dict[int, np.ndarray] = {}
            for i in range(int(idx.max()) + 1):
                frame = vr.next().asnumpy()
                if i in wanted:
                    kept[i] = frame
            raw = np.stack([kept[i] for i in idx.tolist()])
            times = all_times[idx]
        else:
            raise _ReaderError("frame timestamps are not finite and increasing")
    except _ReaderError:
        raise
    except Exception as err:  # decord raises DECORDError and assorted RuntimeErrors
        raise _ReaderError(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
    frames = preprocess_frames(raw, sampling.image_size)
    return DecodedVideo(frames, times, float(duration_s), "decord")


_EARLY_FRAMES = 64  # frames kept before the first candidate (for videos under half an interval)
_REORDER_DEPTH = 16
_PREPROCESS_BATCH = 16


def _in_time_order(frames: Any, depth: int = _REORDER_DEPTH) -> Any:
    """Yield ``(frame, time_s)`` in output order, the times being the frames' timestamps sorted.

    Decoders output frames in presentation order, but some containers (e.g. AVI with packed
    B-frames) label them with timestamps in decode order; the i-th output frame gets the i-th
    smallest timestamp, with a reorder window of ``depth`` frames.
    """
    queue: deque[Any] = deque()
    heap: list[float] = []
    for frame in frames:
        if frame.time is None:
            continue
        queue.append(frame)
        heapq.heappush(heap, float(frame.time))
        if len(queue) > depth:
            yield queue.popleft(), heapq.heappop(heap)
    while queue:
        yield queue.popleft(), heapq.heappop(heap)


def decode_pyav(path: Path, sampling: SamplingConfig) -> DecodedVideo:
    """Decode the whole stream with PyAV, keeping for each candidate time its nearest frame.

    Candidates are all midpoints up to ``clip_seconds`` (or the end); the final ``max_frames``
    are chosen among them once the decoded duration is known, so one pass suffices and only
    candidate frames are held in memory (preprocessed, in batches of 16).
    """
    try:
        import av
    except ImportError as err:
        raise _ReaderError(f"PyAV not installed ({err})") from err
    step_s = 1.0 / sampling.sample_fps
    limit_s = math.inf if sampling.clip_seconds is None else sampling.clip_seconds
    kept: dict[int, tuple[float, int]] = {}  # candidate index -> (frame time, frame number)
    raw: dict[int, np.ndarray] = {}  # frame number -> RGB frame waiting for preprocessing
    done: dict[int, np.ndarray] = {}  # frame number -> preprocessed frame

    def flush() -> None:
        shapes = {a.shape for a in raw.values()}
        for shape in shapes:  # the frame size may change mid-stream
            nums = [n for n, a in raw.items() if a.shape == shape]
            out = preprocess_frames(np.stack([raw[n] for n in nums]), sampling.image_size)
            done.update(zip(nums, out))
        raw.clear()

    def frame_ref(num: int, frame: Any) -> int:
        if num not in raw and num not in done:
            raw[num] = frame.to_ndarray(format="rgb24")
            if len(raw) >= _PREPROCESS_BATCH:  # batches resize faster than single frames
                flush()
        return num

    times: list[float] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _ReaderError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            origin: float | None = None
            prev: tuple[int, float, Any] | None = None
            early: list[tuple[int, float, Any]] = []  # frames before the first candidate
            k = 0  # next candidate index
            for num, (frame, abs_t) in enumerate(_in_time_order(container.decode(stream))):
                if origin is None:
                    origin = abs_t
                t = abs_t - origin
                if times and t <= times[-1]:
                    continue  # repeated timestamp: keep the first frame
                times.append(t)
                if t < 0.5 * step_s and len(early) < _EARLY_FRAMES:
                    early.append((num, t, frame))
                while (k + 0.5) * step_s <= t and (k + 0.5) * step_s < limit_s:
                    c = (k + 0.5) * step_s
                    if prev is not None and abs(c - prev[1]) <= abs(t - c) + _TIE_S:
                        kept[k] = (prev[1], frame_ref(prev[0], prev[2]))
                    else:
                        kept[k] = (t, frame_ref(num, frame))
                    k += 1
                prev = (num, t, frame)
            if prev is None:
                raise _ReaderError("no decodable frames")
            duration_s = _duration_from_times(np.asarray(times))
            span_s = min(duration_s, limit_s)
            while (k + 0.5) * step_s < span_s:  # candidates after the last frame's time
                kept[k] = (prev[1], frame_ref(prev[0], prev[2]))
                k += 1
            if not kept:  # shorter than half an interval: the frame nearest mid-span
                mid = span_s / 2.0
                num, t, frame = min([*early, prev], key=lambda f: abs(f[1] - mid))
                kept[0] = (t, frame_ref(num, frame))
    except _ReaderError:
        raise
    except Exception as err:  # av.error.* and assorted decoder errors
        raise _ReaderError(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
    flush()
    targets = sample_times(duration_s, sampling)
    if len(kept) == 1 and len(targets) == 1:
        chosen = [0]
    else:
        chosen = [int(round(t / step_s - 0.5)) for t in targets]
    frames = np.stack([done[kept[i][1]] for i in chosen])
    picked = np.asarray([kept[i][0] for i in chosen])
    return DecodedVideo(frames, picked, float(duration_s), "pyav")


def decode_video(
    path: str | Path, sampling: SamplingConfig | None = None, reader: str = "auto"
) -> DecodedVideo:
    """Decode and sample one video; raises :class:`VideoDecodeError` when every reader fails.

    Args:
        path: the video file.
        sampling: sampling parameters (defaults: 1 fps, 64 frames, 31 s, 224 px).
        reader: ``"auto"`` (decord, then PyAV), ``"decord"`` or ``"pyav"``.
    """
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; expected one of {', '.join(READERS)}")
    sampling = sampling or SamplingConfig()
    path = Path(path)
    _check_file(path)
    reasons = []
    if reader in ("auto", "decord"):
        try:
            return decode_decord(path, sampling, sequential_ok=reader == "decord")
        except _ReaderError as err:
            reasons.append(f"decord: {err}")
    if reader in ("auto", "pyav"):
        try:
            return decode_pyav(path, sampling)
        except _ReaderError as err:
            reasons.append(f"pyav: {err}")
    raise VideoDecodeError(f"{path.name}: cannot decode ({'; '.join(reasons)})")
