"""Synthetic DiDeMo-format dataset: ``tvrbench synth --out DIR``.

The built-in benchmark and the test fixtures run on this data when no real DiDeMo is configured.
It is written exactly like real DiDeMo (LisaAnne/LocalizingMoments annotations, CLIP4Clip split
lists, real video files with untidy Flickr-style names), so the DiDeMo loader reads it through the
same code path, and it is built so that retrieval behaves like DiDeMo's in the ways the study
cares about:

* A video is a sequence of 5-second moments (DiDeMo's unit), 1 to 18 of them (5-90 s), with a
  length distribution favouring short-to-mid lengths but with plenty of long videos, so that
  equal-count length buckets all fill.
* Each moment shows one event: a shape (6 kinds) in a colour (8 well-separated colours) of a size
  (small/large) moving in a straight line across a plain background (3 tints). The shape stays
  fully in view for the whole moment, so any frame of the moment shows it.
* Motion is drawn as a TRAIL: a thin line in the shape's colour behind the shape, so a single
  frame shows which way it moves. Per-frame image encoders see single frames only; everything a
  sentence says (colour, shape, size, background, direction) is visible in one frame.
* Annotations cover only the first 30 s, as in DiDeMo: each video gets 2-4 sentences, each about
  one of the first min(6, n_moments) moments, with ``times`` = that moment's chunk (annotators
  occasionally disagree by one chunk, as in the real files). Every other moment shows unrelated
  random content. Relevance is therefore partial: a paragraph describes a few moments of the
  video, and the longer the video, the more unrelated content a uniform frame sample (or a mean
  over frames) mixes in, so longer videos are harder to retrieve.

Everything is deterministic per seed: the plan of video ``i`` (length, moments, sentences, name)
comes from ``numpy.random.default_rng([seed, i])``, rendering is a pure function of the plan
(NumPy masks, no randomness) and encoding is single-threaded and lossless for H.264, so parallel
generation over a process pool gives byte-identical JSON and identical decoded frames.

Layout written to ``DIR``::

    train_data.json val_data.json test_data.json   LocalizingMoments schema
    train_list.txt  val_list.txt  test_list.txt    one video file name per line
    videos/<name>                                  mp4/mov/m4v (lossless H.264 4:4:4),
                                                   avi (MPEG-4 Part 2, 4:2:0)
    synth_meta.json                                parameters and every video's contents
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np

GENERATOR_VERSION = 1
MOMENT_S = 5.0  # DiDeMo's chunk length
NUM_SEGMENTS = 6  # DiDeMo's annotated chunks: the first 30 s
MAX_MOMENTS = 18  # 90 s
SPLITS = ("train", "val", "test")
META_NAME = "synth_meta.json"
IN_PROGRESS_NAME = ".synth_in_progress"

COLOURS_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 225, 40),
    "orange": (250, 130, 20),
    "purple": (140, 50, 190),
    "pink": (250, 140, 200),
    "cyan": (40, 210, 220),
}
BACKGROUNDS_RGB: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "black": (20, 20, 20),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")
SIZES_FRAC: dict[str, float] = {"small": 0.11, "large": 0.19}  # radius / frame side
DIRECTIONS: dict[str, tuple[float, float]] = {  # (dx, dy) in image coordinates (y down)
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),
    "down": (0.0, 1.0),
}
DIRECTION_PHRASES = {"left": "to the left", "right": "to the right", "up": "up", "down": "down"}
VERBS = ("moves", "slides", "drifts")
# Sentence templates. Direction only appears where the trail shows it within one frame.
TEMPLATES = (
    "{a_colour} {colour} {shape} moves across the screen.",
    "the {size} {colour} {shape} {verb} {direction}.",
    "{a_colour} {colour} {shape} appears on a {background} background.",
    "we see {a_size} {size} {colour} {shape}.",
    "{a_shape} {shape} in {colour} crosses the screen.",
    "the {colour} {shape} leaves a trail.",
)
SENTENCE_COUNT_P = {2: 0.35, 3: 0.45, 4: 0.20}
NO_PERIOD_P = 0.25  # some real descriptions have no final period
ANNOTATOR_NOISE_P = 0.35  # chance that one of annotators 2-4 marks a neighbouring chunk
# Relative frequency of n_moments = 1..18 (5..90 s): favours short-to-mid, keeps long ones.
LENGTH_WEIGHTS = (3, 4, 5, 6, 7, 7, 7, 6, 6, 5, 5, 4, 4, 4, 3, 3, 3, 3)
# (extension, container format, codec, probability) for the video files.
CONTAINERS = (
    ("mp4", "mp4", "libx264", 0.82),
    ("mov", "mov", "libx264", 0.07),
    ("avi", "avi", "mpeg4", 0.05),
    ("m4v", "ipod", "libx264", 0.02),
    ("", "mp4", "libx264", 0.02),  # name ends in a bare "." (27 such names in the real test list)
    ("trim.mp4", "mp4", "libx264", 0.02),  # several dots
)
# The first videos get one container each, so that even a 12-video fixture has every kind.
_FORCED_CONTAINERS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}

_WORD_RE = re.compile(r"[a-z]+")


class SynthError(ValueError):
    """The output directory or the arguments cannot be used."""


# ---------------------------------------------------------------------------------- vocabulary


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def vocabulary() -> list[str]:
    """Every word a generated sentence can contain (lower-case, sorted, no punctuation).

    A pure function of the module's constants. The tiny tokenizer's word-level vocabulary is a
    frozen copy of it, :data:`tvrbench.vocabulary.TINY_WORDS` (token ids must never move); a
    test checks that the two agree, so a new word here needs a deliberate change there.
    """
    words: set[str] = set()
    for template in TEMPLATES:
        words.update(_WORD_RE.findall(re.sub(r"\{[a-z_]+\}", " ", template)))
    fillers = [*COLOURS_RGB, *BACKGROUNDS_RGB, *SHAPES, *SIZES_FRAC, *VERBS]
    fillers += [*DIRECTION_PHRASES.values(), "a", "an"]
    for filler in fillers:
        words.update(_WORD_RE.findall(filler))
    return sorted(words)


# ---------------------------------------------------------------------------------------- plan


@dataclass
class Moment:
    """One 5-second event. Positions are fractions of the frame side."""

    shape: str
    colour: str
    size: str
    background: str
    direction: str
    cross_pos: float  # coordinate across the motion direction, in [0, 1]
    described: bool = False


@dataclass
class Sentence:
    annotation_id: int
    moment: int  # index of the described moment (0..5)
    description: str
    times: list[list[int]]  # four annotators' [start, end] chunk pairs


@dataclass
class VideoPlan:
    index: int
    name: str
    extension: str
    container: str
    codec: str
    moments: list[Moment]
    sentences: list[Sentence] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return MOMENT_S * len(self.moments)


def _video_name(rng: np.random.Generator, extension: str) -> str:
    user = int(rng.integers(10_000_000, 99_999_999))
    group = int(rng.integers(0, 10))
    photo = int(rng.integers(2_000_000_000, 9_999_999_999))
    secret = "".join(rng.choice(list("0123456789abcdef"), size=10))
    return f"{user}@N0{group}_{photo}_{secret}.{extension}"


def _random_moment(rng: np.random.Generator) -> Moment:
    return Moment(
        shape=str(rng.choice(SHAPES)),
        colour=str(rng.choice(list(COLOURS_RGB))),
        size=str(rng.choice(list(SIZES_FRAC))),
        background=str(rng.choice(list(BACKGROUNDS_RGB))),
        direction=str(rng.choice(list(DIRECTIONS))),
        cross_pos=float(rng.uniform(0.0, 1.0)),
    )


def _sentence_text(rng: np.random.Generator, moment: Moment) -> str:
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    text = template.format(
        colour=moment.colour,
        shape=moment.shape,
        size=moment.size,
        background=moment.background,
        direction=DIRECTION_PHRASES[moment.direction],
        verb=VERBS[int(rng.integers(len(VERBS)))],
        a_colour=_article(moment.colour),
        a_size=_article(moment.size),
        a_shape=_article(moment.shape),
    )
    if rng.random() < NO_PERIOD_P:
        text = text.rstrip(".")
    return text


def _annotator_times(rng: np.random.Generator, k: int, last: int) -> list[list[int]]:
    """Four annotators' chunk pairs for moment ``k``; chunks stay within 0..last.

    At most one annotator disagrees (by one chunk), so ``[k, k]`` is always the clear majority.
    """
    times = [[k, k] for _ in range(4)]
    if last > 0 and rng.random() < ANNOTATOR_NOISE_P:
        other = min(max(k + int(rng.choice([-1, 1])), 0), last)
        times[1 + int(rng.integers(3))] = sorted([k, other]) if rng.random() < 0.5 else [other] * 2
    return times


def plan_video(seed: int, index: int) -> VideoPlan:
    """Everything about video ``index`` except its pixels, from ``default_rng([seed, index])``."""
    rng = np.random.default_rng([seed, index])
    weights = np.asarray(LENGTH_WEIGHTS, dtype=float)
    n_moments = int(rng.choice(np.arange(1, MAX_MOMENTS + 1), p=weights / weights.sum()))
    probs = np.asarray([c[3] for c in CONTAINERS])
    kind = _FORCED_CONTAINERS.get(index, int(rng.choice(len(CONTAINERS), p=probs / probs.sum())))
    extension, container, codec, _ = CONTAINERS[kind]
    name = _video_name(rng, extension)
    moments = [_random_moment(rng) for _ in range(n_moments)]

    annotated = min(NUM_SEGMENTS, n_moments)
    counts = list(SENTENCE_COUNT_P)
    n_sentences = int(rng.choice(counts, p=list(SENTENCE_COUNT_P.values())))
    # Distinct moments where possible; short videos get several sentences about one moment.
    if n_sentences <= annotated:
        chosen = sorted(int(k) for k in rng.choice(annotated, size=n_sentences, replace=False))
    else:
        chosen = sorted(int(k) for k in rng.integers(0, annotated, size=n_sentences))
    # Described moments get distinct (colour, shape) pairs so each sentence names one event.
    used: set[tuple[str, str]] = set()
    for k in dict.fromkeys(chosen):
        while (moments[k].colour, moments[k].shape) in used:
            moments[k] = _random_moment(rng)
        moments[k].described = True
        used.add((moments[k].colour, moments[k].shape))
    sentences = [
        Sentence(
            annotation_id=index * 10 + j,  # unique over the dataset (at most 4 per video)
            moment=k,
            description=_sentence_text(rng, moments[k]),
            times=_annotator_times(rng, k, annotated - 1),
        )
        for j, k in enumerate(chosen)
    ]
    return VideoPlan(index, name, extension, container, codec, moments, sentences)


def split_sizes(videos: int) -> dict[str, int]:
    """About 71 % / 7 % / 22 % (3200 / 300 / 1000 at 4500), at least one video each."""
    if videos < len(SPLITS):
        raise SynthError(f"--videos must be at least {len(SPLITS)} (one per split), got {videos}")
    test = max(1, round(videos * 2 / 9))
    val = max(1, round(videos / 15))
    return {"train": videos - val - test, "val": val, "test": test}


def plan_dataset(videos: int, seed: int) -> tuple[list[VideoPlan], dict[str, list[int]]]:
    """Plans of all videos (unique names) and the video indices of each split."""
    plans = [plan_video(seed, i) for i in range(videos)]
    seen: set[str] = set()
    for plan in plans:
        if plan.name in seen:  # astronomically rare; re-draw deterministically
            rng = np.random.default_rng([seed, plan.index, 1])
            while plan.name in seen:
                plan.name = _video_name(rng, plan.extension)
        seen.add(plan.name)
    order = np.random.default_rng([seed, videos, 7]).permutation(videos)
    sizes = split_sizes(videos)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split] = sorted(int(i) for i in order[start : start + sizes[split]])
        start += sizes[split]
    return plans, splits


# -------------------------------------------------------------------------------------- render


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask of ``shape`` from pixel offsets ``dx, dy`` (F, H, W) to its centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * radius
    if shape == "triangle":  # apex up, base at 0.75 r below the centre
        return (dy <= 0.75 * radius) & (ax <= (dy + radius) * 0.55)
    if shape == "cross":
        arm = 0.32 * radius
        return ((ax <= arm) & (ay <= radius)) | ((ay <= arm) & (ax <= radius))
    if shape == "ring":
        dist2 = dx * dx + dy * dy
        return (dist2 <= radius * radius) & (dist2 >= (0.55 * radius) ** 2)
    if shape == "bar":
        return (ax <= radius) & (ay <= 0.4 * radius)
    raise ValueError(f"unknown shape {shape!r}")


def moment_frame_times_s(n_moments: int, fps: float) -> np.ndarray:
    """Presentation time of every frame: frame i shows time i / fps (seconds), shape (T,)."""
    n_frames = max(1, int(round(n_moments * MOMENT_S * fps)))
    return np.arange(n_frames) / fps


def render_video(plan: VideoPlan, fps: float, size: int) -> np.ndarray:
    """Frames of a planned video, ``[T, size, size, 3]`` uint8 RGB.

    In moment k (t in [5k, 5k + 5)) the shape's centre moves linearly from one side to the other,
    staying fully inside the frame; a line of length 2 r in the same colour trails behind it.
    """
    times_s = moment_frame_times_s(len(plan.moments), fps)  # (T,)
    moment_of_frame = np.minimum((times_s // MOMENT_S).astype(int), len(plan.moments) - 1)
    frames = np.empty((len(times_s), size, size, 3), dtype=np.uint8)
    coords = np.arange(size, dtype=np.float32) + np.float32(0.5)
    px, py = coords[None, None, :], coords[None, :, None]  # (1, 1, W), (1, H, 1)
    for k, moment in enumerate(plan.moments):
        idx = np.flatnonzero(moment_of_frame == k)
        if idx.size == 0:
            continue
        progress = (times_s[idx] - k * MOMENT_S) / MOMENT_S  # (F,) in [0, 1)
        radius = SIZES_FRAC[moment.size] * size
        margin = radius + 1.0
        trail_half_px = max(0.18 * radius, 1.0)
        along = margin + (size - 2 * margin) * progress  # (F,) position along the motion axis
        across = margin + (size - 2 * margin) * moment.cross_pos
        dir_x, dir_y = DIRECTIONS[moment.direction]
        sign = dir_x + dir_y  # +1 towards larger coordinates, -1 towards smaller ones
        centre = (along if sign > 0 else size - along).astype(np.float32)[:, None, None]
        if dir_x != 0:  # offsets (F, 1, W) along the motion, (1, H, 1) across it
            d_along, d_across = px - centre, py - np.float32(across)
            dx, dy = d_along, d_across
        else:
            d_along, d_across = py - centre, px - np.float32(across)
            dx, dy = d_across, d_along
        # The trail: a thin bar of length 2 r behind the shape, in the shape's colour.
        behind = -sign * d_along  # (F, ., .) distance behind the centre
        trail = (behind >= 0) & (behind <= 3.0 * radius) & (np.abs(d_across) <= trail_half_px)
        mask = trail | _shape_mask(moment.shape, dx, dy, radius)  # (F, H, W)
        block = np.empty((idx.size, size, size, 3), dtype=np.uint8)
        block[:] = BACKGROUNDS_RGB[moment.background]
        block[mask] = COLOURS_RGB[moment.colour]
        frames[idx] = block
    return frames


def _encode(frames: np.ndarray, path: Path, container: str, codec: str, fps: float) -> None:
    """Write ``frames`` [T, H, W, 3] uint8 RGB with PyAV, single-threaded (deterministic)."""
    import av
    from av.video.stream import VideoStream

    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate)
        assert isinstance(stream, VideoStream)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        # H.264 is lossless 4:4:4 (High 4:4:4 Predictive, qp 0): small shapes keep their colour
        # at the edges, and the decoded frames are exactly the rendered ones even if x264's
        # encoding decisions were to differ between runs (seen with lossy settings).
        # MPEG-4 Part 2 only has 4:2:0 (as in real DiDeMo files); its encoder is deterministic.
        stream.pix_fmt = "yuv444p" if codec == "libx264" else "yuv420p"
        stream.codec_context.thread_count = 1
        gop = max(1, int(round(MOMENT_S * fps)))  # a keyframe every moment: cheap seeking
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"qp": "0", "preset": "veryfast", "threads": "1"}
        else:
            stream.options = {"qmin": "1", "qmax": "3"}
        for i, frame in enumerate(frames):
            video_frame = av.VideoFrame.from_ndarray(frame, format="rgb24")
            video_frame.pts = i
            for packet in stream.encode(video_frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _write_video(job: tuple[VideoPlan, str, float, int]) -> int:
    plan, video_dir, fps, size = job
    _encode(
        render_video(plan, fps, size), Path(video_dir) / plan.name, plan.container, plan.codec, fps
    )
    return plan.index


# ---------------------------------------------------------------------------------- output dir


def _params(videos: int, seed: int, fps: float, size: int) -> dict[str, Any]:
    return {"version": GENERATOR_VERSION, "videos": videos, "seed": seed, "fps": fps, "size": size}


def _output_files(out_dir: Path) -> list[Path]:
    names = [f"{s}_data.json" for s in SPLITS] + [f"{s}_list.txt" for s in SPLITS]
    return [out_dir / n for n in [*names, META_NAME, IN_PROGRESS_NAME]]


def _read_meta(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / META_NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SynthError(f"{path}: not a readable synth_meta.json ({err})") from err
    if not isinstance(meta, dict) or meta.get("generator") != "tvrbench.data.synth":
        raise SynthError(f"{path}: not written by tvrbench synth")
    return meta


def _is_complete(out_dir: Path, meta: dict[str, Any]) -> bool:
    if (out_dir / IN_PROGRESS_NAME).exists():
        return False
    files = [out_dir / f"{s}_{kind}" for s in SPLITS for kind in ("data.json", "list.txt")]
    files += [out_dir / "videos" / name for name in meta.get("videos", {})]
    return all(f.is_file() for f in files)


def _prepare_out_dir(out_dir: Path, params: dict[str, Any], force: bool) -> bool:
    """Check ``out_dir``; returns True when it already holds this exact, complete dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SynthError(f"{out_dir}: exists and is not a directory")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        out_dir.mkdir(parents=True, exist_ok=True)
        return False
    meta = _read_meta(out_dir)
    in_progress = (out_dir / IN_PROGRESS_NAME).exists()
    if meta is None and not in_progress:
        raise SynthError(
            f"{out_dir}: directory is not empty and holds no synth output ({META_NAME} missing); "
            "refusing to overwrite it, choose an empty or new directory"
        )
    if meta is not None and _is_complete(out_dir, meta):
        if meta.get("params") == params and not force:
            return True
        if not force:
            raise SynthError(
                f"{out_dir}: holds a synth dataset with other parameters "
                f"({meta.get('params')} != {params}); pass --force to regenerate it"
            )
    # An earlier synth output (complete and forced, or interrupted): remove what synth wrote.
    for path in _output_files(out_dir):
        path.unlink(missing_ok=True)
    shutil.rmtree(out_dir / "videos", ignore_errors=True)
    return False


def _dump_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj) + "\n")


def _annotation_entries(plans: list[VideoPlan], indices: list[int], seed: int, split: str):
    """LocalizingMoments entries of one split, in a shuffled (deterministic) file order."""
    entries = []
    for i in indices:
        plan = plans[i]
        for sentence in plan.sentences:
            photo_id = plan.name.split("_")[1]
            entries.append(
                {
                    "num_segments": NUM_SEGMENTS,
                    "description": sentence.description,
                    "dl_link": f"https://www.flickr.com/video_download.gne?id={photo_id}",
                    "times": sentence.times,
                    "video": plan.name,
                    "annotation_id": sentence.annotation_id,
                }
            )
    order = np.random.default_rng([seed, SPLITS.index(split), 11]).permutation(len(entries))
    return [entries[int(k)] for k in order]


# ----------------------------------------------------------------------------------------- API


def generate(
    out_dir: str | Path,
    videos: int = 4500,
    seed: int = 0,
    fps: float = 2.0,
    size: int = 64,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Write a synthetic DiDeMo-format dataset to ``out_dir`` (layout in the module docstring).

    Args:
        out_dir: output directory; must be empty, absent, or a previous synth output.
        videos: total number of videos (split about 71 / 7 / 22 % into train / val / test).
        seed: everything is a deterministic function of (seed, videos, fps, size).
        fps: frame rate of the written videos (frames per second).
        size: frame side in pixels (square frames; even, at least 16).
        workers: processes rendering and encoding videos (default ``os.cpu_count()``).
        progress: show a tqdm progress bar.
        force: regenerate even if ``out_dir`` already holds a synth dataset.

    Returns:
        Summary: ``out_dir``, videos and sentences per split, ``seconds`` taken and ``skipped``
        (True when ``out_dir`` already held this exact dataset and nothing was done).
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if size < 16 or size % 2:
        raise SynthError(f"--size must be an even number of pixels >= 16, got {size}")
    if not fps > 0 or fps * MOMENT_S < 1:
        raise SynthError(f"--fps must give at least one frame per 5 s moment, got {fps}")
    if workers is not None and workers < 1:
        raise SynthError(f"--workers must be at least 1, got {workers}")
    fps = float(fps)
    params = _params(videos, seed, fps, size)
    sizes = split_sizes(videos)
    if _prepare_out_dir(out_dir, params, force):
        meta = _read_meta(out_dir) or {}
        return {
            "out_dir": str(out_dir),
            **meta.get("splits", {}),
            "sentences": meta.get("sentences", {}),
            "seconds": time.perf_counter() - start,
            "skipped": True,
        }
    (out_dir / IN_PROGRESS_NAME).write_text(json.dumps(params) + "\n")
    plans, splits = plan_dataset(videos, seed)
    video_dir = out_dir / "videos"
    video_dir.mkdir()

    from tqdm import tqdm

    jobs = [(plan, str(video_dir), fps, size) for plan in plans]
    n_workers = min(workers or os.cpu_count() or 1, len(jobs))
    bar = tqdm(total=len(jobs), desc="synth videos", unit="video", disable=not progress)
    if n_workers == 1:
        for job in jobs:
            _write_video(job)
            bar.update()
    else:
        with Pool(n_workers) as pool:
            for _ in pool.imap_unordered(_write_video, jobs, chunksize=8):
                bar.update()
    bar.close()

    sentences = {}
    for split in SPLITS:
        entries = _annotation_entries(plans, splits[split], seed, split)
        sentences[split] = len(entries)
        _dump_json(out_dir / f"{split}_data.json", entries)
        names = sorted(plans[i].name for i in splits[split])
        (out_dir / f"{split}_list.txt").write_text("".join(n + "\n" for n in names))
    split_of = {i: s for s, indices in splits.items() for i in indices}
    meta = {
        "generator": "tvrbench.data.synth",
        "params": params,
        "splits": sizes,
        "sentences": sentences,
        "moment_s": MOMENT_S,
        "videos": {
            plan.name: {
                "index": plan.index,
                "split": split_of[plan.index],
                "duration_s": plan.duration_s,
                "n_frames": len(moment_frame_times_s(len(plan.moments), fps)),
                "container": plan.container,
                "codec": plan.codec,
                "moments": [asdict(m) for m in plan.moments],
                "sentences": [asdict(s) for s in plan.sentences],
            }
            for plan in plans
        },
    }
    _dump_json(out_dir / META_NAME, meta)
    (out_dir / IN_PROGRESS_NAME).unlink()
    return {
        "out_dir": str(out_dir),
        **sizes,
        "sentences": sentences,
        "seconds": time.perf_counter() - start,
        "skipped": False,
    }


def main(argv: list[str]) -> int:
    """``tvrbench synth --out DIR [--videos N] [--seed S] [--fps F] [--size PX] [--workers W]``."""
    parser = argparse.ArgumentParser(
        prog="tvrbench synth", description="Generate a synthetic DiDeMo-format dataset."
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--videos", type=int, default=4500, help="total videos (default 4500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fps", type=float, default=2.0, help="frames per second (default 2)")
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all CPUs)")
    parser.add_argument("--force", action="store_true", help="regenerate an existing dataset")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        summary = generate(
            args.out,
            videos=args.videos,
            seed=args.seed,
            fps=args.fps,
            size=args.size,
            workers=args.workers,
            progress=not args.no_progress,
            force=args.force,
        )
    except SynthError as err:
        print(f"tvrbench synth: error: {err}", file=sys.stderr)
        return 2
    counts = ", ".join(
        f"{s} {summary[s]} videos / {summary['sentences'][s]} sentences" for s in SPLITS
    )
    if summary["skipped"]:
        print(f"{args.out} already holds this synth dataset ({counts}); --force regenerates it")
    else:
        print(f"wrote {args.out}: {counts} in {summary['seconds']:.1f} s")
    return 0
