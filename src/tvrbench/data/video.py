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

Readers: ``"decord"`` (fast random access), ``"pyav"`` (decodes the stream sequentially, up to
``clip_seconds``; the rest is only demuxed for the duration), ``"torchcodec"`` (optional extra,
see :func:`decode_torchcodec`), ``"auto"`` (the reader picked from the container — PyAV for AVI,
decord otherwise — so a file is opened once; the other one only when it fails on that file).
Decord's frame index is checked: when its timestamps are not finite and increasing (e.g. some AVI
files), random access is not trusted either and decord is treated as having failed (``"auto"``
moves on to PyAV; a forced ``"decord"`` reader then decodes sequentially with times from the
average rate).

Preprocessing: short side resized to ``image_size`` (bilinear with antialiasing), centre crop to
``image_size x image_size``; the product is uint8 ``[n, S, S, 3]`` (what the frame cache stores
and what batches carry).
PyAV scales in the decoder (FFmpeg's scaler, in the same pass as the RGB conversion); decord's
frames are resized by PyTorch's uint8 kernel (decord scales only to a size given before the file
is opened, which would take a second open to learn the frame size).
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

READERS = ("auto", "decord", "pyav", "torchcodec")
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


FULL_GRID_MAX_FRAMES = 100_000  # "no cap": the full-grid frame-cache key (27 h at 1 fps)


def full_grid_sampling(sampling: SamplingConfig) -> SamplingConfig:
    """Every grid frame of the whole video: ``sample_fps`` and ``image_size`` kept, no cap."""
    return SamplingConfig(sampling.sample_fps, FULL_GRID_MAX_FRAMES, None, sampling.image_size)


def subsample_grid(grid: DecodedVideo, sampling: SamplingConfig) -> DecodedVideo | None:
    """The frames ``sampling`` takes, picked from a decoded full grid (no decoding).

    Every target of :func:`sample_times` is a grid midpoint ``(k + 0.5) / sample_fps`` and the
    nearest frame to it does not depend on which other targets are asked for, so grid frame ``k``
    is the answer. ``grid`` must be at ``sampling.sample_fps`` (the cache key sees to it). Returns
    None when the grid cannot serve ``sampling``: another frame size, or a clip shorter than half
    an interval (its one frame sits at mid-clip, off the grid).
    """
    if grid.frames.shape[1] != sampling.image_size:
        return None
    span_s = grid.duration_s
    if sampling.clip_seconds is not None:
        span_s = min(span_s, sampling.clip_seconds)
    if math.ceil(span_s * sampling.sample_fps - 0.5) == 0:  # no midpoint: one frame at mid-span
        if span_s != grid.duration_s or len(grid.frames) != 1:
            return None
        idx = np.zeros(1, dtype=np.int64)
    else:
        targets = sample_times(grid.duration_s, sampling)
        idx = np.round(targets * sampling.sample_fps - 0.5).astype(np.int64)
    if len(idx) and idx.max() >= len(grid.frames):
        return None
    return DecodedVideo(grid.frames[idx], grid.times_s[idx], grid.duration_s, grid.reader)


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


def resize_dims(height: int, width: int, image_size: int) -> tuple[int, int]:
    """``(new_h, new_w)`` with the short side at ``image_size`` (aspect kept, neither below it)."""
    scale = image_size / min(height, width)
    return max(image_size, round(height * scale)), max(image_size, round(width * scale))


def crop_centre(frames: np.ndarray, image_size: int) -> np.ndarray:
    """Centre ``image_size x image_size`` crop of ``[..., H, W, 3]`` (a view)."""
    h, w = frames.shape[-3], frames.shape[-2]
    top, left = (h - image_size) // 2, (w - image_size) // 2
    return frames[..., top : top + image_size, left : left + image_size, :]


def preprocess_frames(frames: np.ndarray | torch.Tensor, image_size: int) -> np.ndarray:
    """Resize the short side to ``image_size`` (bilinear, antialiased) and centre-crop.

    The resize runs on uint8 channels-last tensors (PyTorch's integer kernel: no float32
    temporaries; within 1 grey level of the float computation).

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
    new_h, new_w = resize_dims(h, w, image_size)
    if (new_h, new_w) != (h, w):
        x = x.to(torch.uint8).permute(0, 3, 1, 2)  # (n, 3, H, W), channels-last in memory
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True)
        x = x.permute(0, 2, 3, 1)  # (n, new_h, new_w, 3)
    out = crop_centre(x.to(torch.uint8).numpy(), image_size)  # (n, S, S, 3)
    return np.ascontiguousarray(out)


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


def _pyav_rgb(frame: Any, image_size: int, reformatter: Any) -> np.ndarray:
    """One PyAV frame → uint8 ``[S, S, 3]``: scaled by FFmpeg's scaler (bilinear, in the same
    pass as the RGB conversion, so no full-size RGB frame is made), then centre-cropped.

    ``reformatter``: a ``VideoReformatter`` made by this decode. Not ``frame.reformat``: its
    shared scaler context keeps a thread pool that a forked decode worker inherits without the
    threads (a deadlock); one scaling thread, since decoding is parallel over processes.
    """
    new_h, new_w = resize_dims(frame.height, frame.width, image_size)
    rgb = reformatter.reformat(
        frame, width=new_w, height=new_h, format="rgb24", interpolation="BILINEAR", threads=1
    )
    return np.ascontiguousarray(crop_centre(rgb.to_ndarray(), image_size))


def _packet_time_s(packet: Any, time_base: Any) -> float | None:
    stamp = packet.pts if packet.pts is not None else packet.dts
    return None if stamp is None or time_base is None else float(stamp * time_base)


def decode_pyav(path: Path, sampling: SamplingConfig) -> DecodedVideo:
    """Decode with PyAV in one sequential pass, keeping for each candidate time its nearest frame.

    Candidates are all midpoints up to ``clip_seconds`` (or the end); the final ``max_frames``
    are chosen among them once the duration is known, and only candidate frames are converted
    (scaled in the decoder) and held. Decoding stops once the last candidate under
    ``clip_seconds`` is settled; the rest of the file is only demuxed, the duration then coming
    from the packets' timestamps (the same "last frame time plus one frame interval" as decoded
    frames give).
    """
    try:
        import av
    except ImportError as err:
        raise _ReaderError(f"PyAV not installed ({err})") from err
    step_s = 1.0 / sampling.sample_fps
    limit_s = math.inf if sampling.clip_seconds is None else sampling.clip_seconds
    size = sampling.image_size
    kept: dict[int, tuple[float, int]] = {}  # candidate index -> (frame time, frame number)
    done: dict[int, np.ndarray] = {}  # frame number -> preprocessed frame [S, S, 3]

    reformatter = av.video.reformatter.VideoReformatter()

    def frame_ref(num: int, frame: Any) -> int:
        if num not in done:
            done[num] = _pyav_rgb(frame, size, reformatter)
        return num

    times: list[float] = []  # decoded frame times from the stream start (s)
    packet_times: list[float] = []  # every video packet's timestamp (s, absolute)
    untimed_packets = 0  # packets without pts or dts (then the stream is decoded to its end)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _ReaderError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            packets = container.demux(stream)

            def record(packet: Any) -> None:
                nonlocal untimed_packets
                if packet.size:
                    t_p = _packet_time_s(packet, stream.time_base)
                    if t_p is None:
                        untimed_packets += 1
                    else:
                        packet_times.append(t_p)

            def decoded() -> Any:
                for packet in packets:
                    record(packet)
                    yield from packet.decode()

            origin: float | None = None
            prev: tuple[int, float, Any] | None = None
            early: list[tuple[int, float, Any]] = []  # frames before the first candidate
            k = 0  # next candidate index
            stopped = False
            for num, (frame, abs_t) in enumerate(_in_time_order(decoded())):
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
                if (k + 0.5) * step_s >= limit_s and untimed_packets == 0:
                    stopped = True  # every candidate under the clip is settled
                    break
            if prev is None or origin is None:
                raise _ReaderError("no decodable frames")
            if stopped:
                for packet in packets:  # demux only: timestamps of the rest of the stream
                    record(packet)
                stamps = np.unique(np.asarray(packet_times) - origin)  # sorted, repeats dropped
                stamps = stamps[stamps > -_TIE_S]
                # untimed packets after the stop: one median frame interval each
                duration_s = _duration_from_times(stamps)
                if untimed_packets and len(stamps) > 1:
                    duration_s += untimed_packets * float(np.median(np.diff(stamps)))
            else:
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
    targets = sample_times(duration_s, sampling)
    if len(kept) == 1 and len(targets) == 1:
        chosen = [0]
    else:
        chosen = [int(round(t / step_s - 0.5)) for t in targets]
    frames = np.stack([done[kept[i][1]] for i in chosen])
    picked = np.asarray([kept[i][0] for i in chosen])
    return DecodedVideo(frames, picked, float(duration_s), "pyav")


def available_readers() -> dict[str, str | None]:
    """Every concrete reader and why it cannot be used here (None: importable).

    torchcodec's wheels link the CUDA build of torch, so it is often absent on CPU machines;
    decord has no wheels off x86_64."""
    out: dict[str, str | None] = {}
    for name, module in (
        ("decord", "decord"),
        ("pyav", "av"),
        ("torchcodec", "torchcodec.decoders"),
    ):
        try:
            __import__(module)
            out[name] = None
        except Exception as err:  # ImportError, or a torch ABI mismatch (OSError/RuntimeError)
            out[name] = f"not importable ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
    return out


def decode_torchcodec(path: Path, sampling: SamplingConfig) -> DecodedVideo:
    """Decode with torchcodec (PyTorch's FFmpeg decoder; optional extra ``tvrbench[torchcodec]``).

    Exact seek mode (one scan of the packets): the duration is the stream's content span (last
    frame's time plus its duration, from the first frame's time). For each target the frame
    played at that time is fetched; when the next frame is nearer it is fetched instead (ties
    go to the earlier frame, as with the other readers).
    """
    try:
        from torchcodec.decoders import VideoDecoder
    except Exception as err:  # ImportError, or its libraries failing to load (CPU-only torch)
        raise _ReaderError(f"torchcodec not importable ({type(err).__name__}: {err})") from err
    try:
        dec = VideoDecoder(str(path), dimension_order="NHWC", num_ffmpeg_threads=1)
        meta = dec.metadata
        begin_s = float(meta.begin_stream_seconds or 0.0)
        end_s = meta.end_stream_seconds
        if end_s is None or not float(end_s) > begin_s:
            raise _ReaderError("no frame timestamps")
        duration_s = float(end_s) - begin_s
        targets = sample_times(duration_s, sampling)
        last_s = float(end_s) - 1e-6
        played = dec.get_frames_played_at(seconds=[min(begin_s + t, last_s) for t in targets])
        pts = played.pts_seconds.double().numpy() - begin_s  # (n_t,)
        nxt = pts + played.duration_seconds.double().numpy()  # next frame's time (s)
        later = (nxt - targets < targets - pts - _TIE_S) & (nxt < duration_s - _TIE_S)
        data = played.data
        if later.any():
            seconds = [float(begin_s + nxt[j]) for j in np.flatnonzero(later)]
            following = dec.get_frames_played_at(seconds=seconds)
            data = data.clone()
            data[torch.from_numpy(later)] = following.data
            pts[later] = following.pts_seconds.double().numpy() - begin_s
        raw = data.numpy()  # (n_t, H, W, 3)
    except _ReaderError:
        raise
    except Exception as err:
        raise _ReaderError(f"{type(err).__name__}: {str(err).splitlines()[0][:200]}") from err
    frames = preprocess_frames(raw, sampling.image_size)
    return DecodedVideo(frames, pts, duration_s, "torchcodec")


def is_avi(path: Path) -> bool:
    """True for a RIFF/AVI container (read from its first 12 bytes, not its name)."""
    with path.open("rb") as fh:
        head = fh.read(12)
    return head[:4] == b"RIFF" and head[8:12] == b"AVI "


def auto_readers(path: Path) -> tuple[str, str]:
    """The order ``"auto"`` tries the readers in, decided from the container so that a normal
    file is opened once: AVI → PyAV first (decord's AVI frame index is often broken, and it
    would index the whole file before that shows), anything else → decord first."""
    return ("pyav", "decord") if is_avi(path) else ("decord", "pyav")


def decode_video(
    path: str | Path, sampling: SamplingConfig | None = None, reader: str = "auto"
) -> DecodedVideo:
    """Decode and sample one video; raises :class:`VideoDecodeError` when every reader fails.

    Args:
        path: the video file.
        sampling: sampling parameters (defaults: 1 fps, 64 frames, 31 s, 224 px).
        reader: ``"auto"`` (the reader chosen by :func:`auto_readers`, the other one if it
            fails), ``"decord"``, ``"pyav"`` or ``"torchcodec"``.
    """
    if reader not in READERS:
        raise ValueError(f"unknown reader {reader!r}; expected one of {', '.join(READERS)}")
    sampling = sampling or SamplingConfig()
    path = Path(path)
    _check_file(path)
    order = auto_readers(path) if reader == "auto" else (reader,)
    reasons = []
    for name in order:
        try:
            if name == "decord":
                return decode_decord(path, sampling, sequential_ok=reader == "decord")
            if name == "pyav":
                return decode_pyav(path, sampling)
            return decode_torchcodec(path, sampling)
        except _ReaderError as err:
            reasons.append(f"{name}: {err}")
    raise VideoDecodeError(f"{path.name}: cannot decode ({'; '.join(reasons)})")
