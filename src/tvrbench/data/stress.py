"""Length as a controlled variable: the lengthened ("stress") test set (SPEC §6).

For an injected length ``T`` (seconds) every test video ``v`` of decoded duration ``d_v``
becomes ``distractor + v + distractor`` of total length ``L = max(d_v, T)``; the paragraphs are
unchanged. The composed video is then sampled exactly as a real one
(:func:`tvrbench.data.video.sample_times` over ``[0, L)`` with the data module's
:class:`~tvrbench.data.video.SamplingConfig`: midpoints at ``sample_fps``, uniform down-sampling
to ``max_frames``, ``clip_seconds`` applied): past ``max_frames / sample_fps`` seconds the frames
of ``v`` are thinned like every other frame.

Frames. Everything is built from decoded frames, never by re-encoding: every source video
(``v`` itself and the distractors) is taken at its full sampling grid, frame ``k`` being the
decoded frame nearest to ``(k + 0.5) / sample_fps`` (what the decoder picks for that time), with
no ``max_frames`` cap and no ``clip_seconds``. Where the data module's own frames are already that
grid (no thinning, no clip: every synthetic video at the default 0.2 fps / 18 frames) they are
used as they are (in memory or from the frame cache); otherwise the full grid is read from the
frame cache under its own key (:func:`~tvrbench.data.video.full_grid_sampling`), for every
``T``. With ``clip_seconds: null`` the data module's own decode already stored it
(:mod:`tvrbench.data.cache`, "Full grid"), so nothing is decoded again; with a clip it is
decoded once here. The frames of all lengths are therefore read from one source store
(:class:`SourceFrames`, shared per data module), and composing a sample only gathers frames.

Timeline. ``v`` starts at an offset ``o`` on the sampling grid (a multiple of ``1 / sample_fps``),
so the composed grid's frames inside ``[o, o + d_v)`` are exactly ``v``'s own frames:
``placement`` ``"start"`` (``o = 0``), ``"end"`` (the last grid offset with ``o + d_v <= L``),
``"middle"`` (the grid offset nearest to ``(L - d_v) / 2``) or ``"random"`` (uniform over the grid
offsets, seeded). The distractor seconds ``[0, o)`` and ``[o + d_v, L)`` are filled with
contiguous stretches of videos of ``distractor_split`` (``"val"`` by default, or ``"train"``;
never ``"test"``, never a file of the test split): a stretch takes ``min(left, d_u)`` seconds of a
randomly drawn source ``u`` from a random grid position, and the next stretch comes from another
source until the region is full. Every draw comes from ``numpy.random.default_rng([seed,
index])`` for test item ``index``: the same seed gives identical frames, and the offset is the
same fraction of the free grid positions at every ``T``.

``T <= d_v`` (``T = 0`` in particular) returns the unmodified test sample, bit for bit.

Samples are the DataModule's test items (docs/CONTRACTS.md: ``input_ids``, ``attention_mask``,
``frames``, ``index``, ``bucket`` (the video's natural bucket, so ``bucket_names("test")`` is
the base data module's), ``duration_s`` (the composed length ``L``), ``video``) plus
``frame_times_s`` ``[n]`` (times on the composed timeline), ``relevant_mask`` ``[n]`` (frames of
``v``), ``relevant_fraction`` (``d_v / (d_v + distractor seconds) = d_v / L``),
``source_duration_s`` (``d_v``) and ``offset_s`` (``o``). :func:`collate_stress` builds the usual
batch (:func:`tvrbench.data.datamodule.collate_batch`) and pads the extra per-frame keys to
``max_frames`` (``frame_times_s`` with 0, ``relevant_mask`` with False).

Default lengths. Real DiDeMo (1 fps, 64 frames, thinning from 64 s, median ~30 s):
:data:`DIDEMO_INJECTED_LENGTHS_S` ``= [0, 30, 60, 120, 240]``. The synthetic data has 5-90 s
videos in 5-s moments (test median 40 s, mean 43 s) sampled at 0.2 fps into at most 18 frames, so
thinning starts at 90 s: :data:`SYNTHETIC_INJECTED_LENGTHS_S` ``= [0, 45, 90, 180, 360]``, i.e.
unchanged, about the median (lengthens the shorter half), the longest natural length (every video
90 s, no thinning yet: distractors only), then twice and four times the thinning onset (the
relevant frames halved, then quartered) — the same four steps as DiDeMo's in units of the
sampling limit. At 0.2 fps every offset is a multiple of 5 s, i.e. on moment boundaries.

Limitation: a video shorter than half a sampling interval has no frame on a lengthened grid (it
contributes no relevant frame). With ``clip_seconds`` set, the composed video is truncated like a
real one, so for ``T > clip_seconds`` part or all of ``v`` can fall outside the sampled span (a
warning says so); the length study uses ``clip_seconds: null``.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tvrbench.data.annotations import SPLITS
from tvrbench.data.datamodule import (
    DataSetupError,
    DiDeMoDataModule,
    VideoTextDataset,
    collate_batch,
    probe_videos,
)
from tvrbench.data.video import (
    SamplingConfig,
    candidate_times,
    full_grid_sampling,
    nearest_indices,
    sample_times,
)

log = logging.getLogger(__name__)

DIDEMO_INJECTED_LENGTHS_S = [0.0, 30.0, 60.0, 120.0, 240.0]
SYNTHETIC_INJECTED_LENGTHS_S = [0.0, 45.0, 90.0, 180.0, 360.0]
PLACEMENTS = ("random", "start", "middle", "end")
DISTRACTOR_SPLITS = ("val", "train")
_EPS = 1e-9


def _check_options(injected_length_s: float, distractor_split: str, placement: str) -> None:
    if distractor_split == "test":
        raise ValueError(
            "distractor_split='test' is refused: distractors must come from outside the test "
            "gallery (use 'val' or 'train')"
        )
    if distractor_split not in DISTRACTOR_SPLITS:
        raise ValueError(
            f"distractor_split must be one of {DISTRACTOR_SPLITS}, got {distractor_split!r}"
        )
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    if not (math.isfinite(injected_length_s) and injected_length_s >= 0):
        raise ValueError(f"injected_length_s must be finite and >= 0, got {injected_length_s}")


def _num_candidates(span_s: float, sample_fps: float) -> int:
    """Grid frames strictly inside ``[0, span_s)`` (the count :func:`candidate_times` uses)."""
    return max(0, math.ceil(span_s * sample_fps - 0.5))


# ------------------------------------------------------------------------------- closed form


def _picks_at_most(m: int, p: int, q: int) -> int:
    """How many of the ``q + 1`` uniform picks ``round(j * p / q)``, ``j = 0..q``, are ``<= m``.

    ``j * p / q < m + 1/2`` for ``j < (2m + 1) q / (2p)``; an exact half (``2jp = (2m + 1) q``)
    is rounded as the sampler rounds it (``numpy.round`` of the float ``j * (p / q)``, half to
    even), so the count matches :func:`~tvrbench.data.video.sample_times` exactly.
    """
    if m < 0:
        return 0
    if m >= p:
        return q + 1
    num, den = (2 * m + 1) * q, 2 * p
    count = -(-num // den)  # ceil: picks strictly below m + 1/2
    if num % den == 0 and round((num // den) * (p / q)) <= m:
        count += 1
    return min(count, q + 1)


def kept_relevant_frames(
    d_v: float,
    injected_length_s: float,
    offset_s: float,
    sample_fps: float,
    max_frames: int,
    clip_seconds: float | None = None,
) -> int:
    """Frames of ``v`` among the sampled frames of its lengthened video (closed form).

    The composed video of ``L = max(d_v, T)`` seconds has ``n = ceil(L * fps - 1/2)`` grid
    frames (``min(L, clip_seconds)`` with a clip); ``v``, placed at the grid offset ``o``, holds
    grid frames ``a = ceil(o * fps - 1/2)`` to ``b = a + ceil(d_v * fps - 1/2) - 1``. With
    ``n <= N = max_frames`` all of them are kept: ``b - a + 1``. Otherwise the ``N`` picks are
    ``round(j (n - 1) / (N - 1))``, ``j = 0..N-1``, and the count is
    ``P(b) - P(a - 1)`` with ``P(m) = #{j : pick_j <= m} = ceil((2m + 1)(N - 1) / (2(n - 1)))``
    (plus one at an exact half that rounds down). Roughly ``d_v * fps * N / n``: past
    ``N / fps`` seconds the relevant frames fall as ``1 / T``.

    >>> kept_relevant_frames(40.0, 0.0, 0.0, 0.2, 18)  # unchanged: all 8 frames
    8
    >>> kept_relevant_frames(40.0, 360.0, 100.0, 0.2, 18)  # 72 grid frames, 18 kept
    2
    """
    length_s = max(d_v, injected_length_s)
    span_s = length_s if clip_seconds is None else min(length_s, clip_seconds)
    n = _num_candidates(span_s, sample_fps)
    if n == 0:  # one frame at mid-span
        return int(offset_s <= span_s / 2 < offset_s + d_v)
    a = math.ceil(offset_s * sample_fps - 0.5)
    b = min(a + _num_candidates(d_v, sample_fps), n) - 1
    if b < a:
        return 0
    if n <= max_frames:
        return b - a + 1
    if max_frames == 1:
        return int(a <= 0 <= b)
    p, q = n - 1, max_frames - 1
    return _picks_at_most(b, p, q) - _picks_at_most(a - 1, p, q)


# -------------------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Stretch:
    """A contiguous piece of a distractor video placed on the composed timeline.

    Attributes:
        split: the source's split (``"val"`` or ``"train"``).
        index: the source's position in that split's dataset.
        video: the source's name.
        start_s: where the piece starts in the source (a grid time, seconds).
        duration_s: its length (seconds).
        at_s: where it starts on the composed timeline (seconds).
        source_duration_s: the whole source's decoded duration (seconds).
    """

    split: str
    index: int
    video: str
    start_s: float
    duration_s: float
    at_s: float
    source_duration_s: float


@dataclass
class CompositionPlan:
    """How one lengthened video is made (no pixels: frames are gathered from the plan).

    Attributes:
        index: the test item.
        video: its name.
        source_duration_s: ``d_v``.
        composed_duration_s: ``L = max(d_v, T)``.
        offset_s: where ``v`` starts on the composed timeline.
        stretches: the distractor pieces, in timeline order.
        frame_times_s: ``[n]`` sampled times on the composed timeline.
        relevant_mask: ``[n]`` True where the frame is one of ``v``'s.
        frame_source: ``[n]`` -1 for ``v``, else the index into ``stretches``.
        frame_index: ``[n]`` index of the frame in its source's full-grid frames (for an
            unchanged plan: in the test sample's own frames).
        unchanged: True when ``T <= d_v`` (the sample is the unmodified test sample).
    """

    index: int
    video: str
    source_duration_s: float
    composed_duration_s: float
    offset_s: float
    stretches: tuple[Stretch, ...]
    frame_times_s: np.ndarray
    relevant_mask: np.ndarray
    frame_source: np.ndarray
    frame_index: np.ndarray
    unchanged: bool = False

    @property
    def distractor_s(self) -> float:
        return self.composed_duration_s - self.source_duration_s

    @property
    def relevant_fraction(self) -> float:
        """``d_v / (d_v + distractor seconds)``."""
        if self.composed_duration_s <= 0:
            return 1.0
        return self.source_duration_s / self.composed_duration_s

    @property
    def relevant_frames(self) -> int:
        return int(self.relevant_mask.sum())


@dataclass(frozen=True)
class DistractorPool:
    """Videos distractors may come from: ``(split, index, name, duration_s)`` per source."""

    split: str
    indices: tuple[int, ...]
    videos: tuple[str, ...]
    durations_s: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.indices)


def grid_offset_s(
    d_v: float, length_s: float, sample_fps: float, placement: str, u: float = 0.0
) -> float:
    """Start of ``v`` on the composed timeline: a grid time in ``[0, length_s - d_v]``.

    ``u`` in ``[0, 1)`` picks the offset for ``"random"`` (uniform over the grid offsets).
    """
    free = max(0, math.floor((length_s - d_v) * sample_fps + _EPS))  # last grid offset
    if placement == "start":
        k = 0
    elif placement == "end":
        k = free
    elif placement == "middle":
        k = min(free, math.floor((length_s - d_v) * sample_fps / 2 + 0.5))
    elif placement == "random":
        k = min(free, int(u * (free + 1)))
    else:
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    return k / sample_fps


def _fill(
    rng: np.random.Generator,
    pool: DistractorPool,
    at_s: float,
    length_s: float,
    sample_fps: float,
) -> list[Stretch]:
    """Contiguous stretches covering ``[at_s, at_s + length_s)``, consecutive sources differ."""
    out: list[Stretch] = []
    left, prev = length_s, -1
    while left > _EPS:
        if len(pool) == 0:
            raise DataSetupError(f"no {pool.split} video can serve as a distractor")
        j = int(rng.integers(len(pool) - (prev >= 0 and len(pool) > 1)))
        if prev >= 0 and len(pool) > 1 and j >= prev:
            j += 1  # skip the previous source
        d_u = pool.durations_s[j]
        run = min(left, d_u)
        last_start = max(0, math.floor((d_u - run) * sample_fps + _EPS))
        start_s = int(rng.integers(last_start + 1)) / sample_fps
        out.append(Stretch(pool.split, pool.indices[j], pool.videos[j], start_s, run, at_s, d_u))
        at_s += run
        left -= run
        prev = j
    return out


def plan_composition(
    index: int,
    video: str,
    d_v: float,
    injected_length_s: float,
    sampling: SamplingConfig,
    pool: DistractorPool,
    placement: str = "random",
    seed: int = 0,
) -> CompositionPlan:
    """The plan of test item ``index`` lengthened to ``injected_length_s`` (pure arithmetic).

    Draws come from ``numpy.random.default_rng([seed, index])``: first the offset, then the
    stretches before ``v``, then those after it.
    """
    fps = sampling.sample_fps
    if injected_length_s <= d_v:
        times = sample_times(d_v, sampling)
        n = len(times)
        return CompositionPlan(
            index, video, d_v, d_v, 0.0, (), times, np.ones(n, dtype=bool),
            np.full(n, -1, dtype=np.int64), np.arange(n, dtype=np.int64), unchanged=True,
        )  # fmt: skip
    length_s = float(injected_length_s)
    rng = np.random.default_rng([seed, index])
    offset_s = grid_offset_s(d_v, length_s, fps, placement, float(rng.random()))
    stretches = _fill(rng, pool, 0.0, offset_s, fps)
    stretches += _fill(rng, pool, offset_s + d_v, length_s - d_v - offset_s, fps)

    times = sample_times(length_s, sampling)  # (n,) the rule of every real video
    span_s = length_s if sampling.clip_seconds is None else min(length_s, sampling.clip_seconds)
    if _num_candidates(span_s, fps) > 0:
        slots = np.rint(times * fps - 0.5).astype(np.int64)  # grid frame of each sampled time
        first = math.ceil(offset_s * fps - 0.5)
        relevant = (slots >= first) & (slots < first + _num_candidates(d_v, fps))
    else:  # shorter than half an interval: one frame at mid-span
        relevant = (times >= offset_s) & (times < offset_s + d_v)
    source = np.full(len(times), -1, dtype=np.int64)
    frame_index = np.zeros(len(times), dtype=np.int64)
    if relevant.any():
        frame_index[relevant] = nearest_indices(
            candidate_times(d_v, fps), times[relevant] - offset_s
        )
    others = np.flatnonzero(~relevant)
    if len(others):
        starts = np.asarray([s.at_s for s in stretches])
        which = np.clip(np.searchsorted(starts, times[others] + _EPS, side="right") - 1, 0, None)
        for k in np.unique(which):
            s = stretches[k]
            sel = others[which == k]
            local = np.clip(times[sel] - s.at_s, 0.0, s.duration_s) + s.start_s
            source[sel] = k
            frame_index[sel] = nearest_indices(candidate_times(s.source_duration_s, fps), local)
    return CompositionPlan(
        index, video, d_v, length_s, offset_s, tuple(stretches), times, relevant, source,
        frame_index,
    )  # fmt: skip


# ------------------------------------------------------------------------------ source store


class SourceFrames:
    """Full-grid uint8 frames ``[n_u, S, S, 3]`` of the videos of a data module's splits.

    Frame ``k`` is the decoded frame nearest to ``(k + 0.5) / sample_fps``. Videos whose own
    sampled frames are already the full grid reuse them; the others are decoded once into the
    frame cache (:func:`full_grid_sampling` key). Recently used frames stay in memory up to
    ``memory_limit_gb`` (default: the data module's; least recently used dropped first). It holds
    the split datasets, not the data module (DataLoader workers get no trainer to pickle).
    """

    def __init__(self, datamodule: DiDeMoDataModule, memory_limit_gb: float | None = None) -> None:
        self.sampling = datamodule.sampling
        self.full = full_grid_sampling(self.sampling)
        self.cache = datamodule.cache
        self.reader = datamodule.reader
        self.processes = datamodule.decode_processes()
        limit = datamodule.memory_limit_gb if memory_limit_gb is None else memory_limit_gb
        self.memory_limit_bytes = int(limit * 1e9)
        self._datasets: dict[str, VideoTextDataset] = {}
        self._memory: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._prepared: set[tuple[str, int]] = set()
        self.attach(datamodule)

    def attach(self, datamodule: DiDeMoDataModule) -> None:
        """Take in the splits of ``datamodule`` that are set up (call again after more are)."""
        for split in SPLITS:
            if split not in self._datasets:
                try:
                    self._datasets[split] = datamodule.dataset(split)
                except DataSetupError:
                    continue

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)  # DataLoader workers start with an empty memory
        state["_memory"], state["_bytes"] = OrderedDict(), 0
        return state

    def _dataset(self, split: str) -> VideoTextDataset:
        if split not in self._datasets:
            raise DataSetupError(f"split {split!r} was not set up when the source store was made")
        return self._datasets[split]

    def is_own_grid(self, split: str, i: int) -> bool:
        """True when the data module's sampled frames of this video are its full grid."""
        d = self._dataset(split).durations_s[i]
        s = self.sampling
        clipped = s.clip_seconds is not None and s.clip_seconds < d
        return not clipped and len(candidate_times(d, s.sample_fps)) <= s.max_frames

    def prepare(self, keys: list[tuple[str, int]]) -> int:
        """Decode (into the frame cache) the full grids that are not cached yet; returns how many
        videos needed their own full-grid entry. Misses are decoded in a process pool."""
        todo = sorted({k for k in keys if k not in self._prepared and not self.is_own_grid(*k)})
        if todo:
            paths = [self._dataset(split).videos[i].path for split, i in todo]
            assert all(path is not None for path in paths)  # set-up items all have a file
            infos = probe_videos(
                [path for path in paths if path is not None],
                self.full,
                self.cache,
                self.reader,
                self.processes,
                desc="stress",
            )
            for (split, i), info in zip(todo, infos):
                if info.error is not None:
                    name = self._dataset(split).videos[i].video
                    raise DataSetupError(f"{split} {name}: full-grid decode failed ({info.error})")
        self._prepared.update(keys)
        return len(todo)

    def _load(self, split: str, i: int) -> np.ndarray:
        ds = self._dataset(split)
        if self.is_own_grid(split, i):
            return ds.load_frames(i)
        path = ds.videos[i].path
        assert path is not None
        info, frames = self.cache.get_or_decode(path, self.full, self.reader)
        if frames is None:
            raise DataSetupError(f"{split} {ds.videos[i].video}: unreadable ({info.error})")
        return frames

    def get(self, split: str, i: int) -> np.ndarray:
        """uint8 ``[n_u, S, S, 3]`` full-grid frames of item ``i`` of ``split``."""
        key = (split, i)
        frames = self._memory.get(key)
        if frames is not None:
            self._memory.move_to_end(key)
            return frames
        frames = self._load(split, i)
        d_u = self._dataset(split).durations_s[i]
        expected = len(candidate_times(d_u, self.sampling.sample_fps))
        if len(frames) != expected:
            raise DataSetupError(
                f"{split} {self._dataset(split).videos[i].video}: {len(frames)} full-grid frames, "
                f"expected {expected} (stale frame cache? delete {self.cache.root})"
            )
        if frames.nbytes <= self.memory_limit_bytes:
            self._memory[key] = frames
            self._bytes += frames.nbytes
            while self._bytes > self.memory_limit_bytes:
                _, old = self._memory.popitem(last=False)
                self._bytes -= old.nbytes
        return frames


_STORES: weakref.WeakKeyDictionary[DiDeMoDataModule, SourceFrames] = weakref.WeakKeyDictionary()


def source_frames(datamodule: DiDeMoDataModule) -> SourceFrames:
    """The data module's shared :class:`SourceFrames` (one per data module, reused for every
    injected length, so no source is loaded twice while it stays in memory)."""
    store = _STORES.get(datamodule)
    if store is None or store.sampling != datamodule.sampling:
        store = _STORES[datamodule] = SourceFrames(datamodule)
    store.attach(datamodule)
    return store


# ----------------------------------------------------------------------------------- dataset


def distractor_pool(datamodule: DiDeMoDataModule, split: str = "val") -> DistractorPool:
    """The videos of ``split`` that may serve as distractors: a positive duration and no file
    or name shared with a test video."""
    _check_options(0.0, split, "random")
    datamodule.setup_split("test")
    datamodule.setup_split(split)
    test = datamodule.dataset("test").videos
    test_names = {v.video for v in test}
    test_paths = {v.path.resolve() for v in test if v.path is not None}
    ds = datamodule.dataset(split)
    keep = [
        i
        for i, (v, d) in enumerate(zip(ds.videos, ds.durations_s))
        if d > 0
        and v.video not in test_names
        and (v.path is None or v.path.resolve() not in test_paths)
    ]
    return DistractorPool(
        split,
        tuple(keep),
        tuple(ds.videos[i].video for i in keep),
        tuple(float(ds.durations_s[i]) for i in keep),
    )


class StressTestSet(Dataset):
    """The test split with every video lengthened to ``injected_length_s`` (module docstring).

    Args:
        datamodule: the benchmark's :class:`DiDeMoDataModule` (its test split, and the
            distractor split, are set up here if they are not yet).
        injected_length_s: ``T`` in seconds; ``0`` (or any ``T <= d_v``) leaves a video as it is.
        distractor_split: ``"val"`` (default) or ``"train"``; ``"test"`` is refused.
        placement: ``"random"`` (seeded), ``"start"``, ``"middle"`` or ``"end"``.
        seed: seed of the offsets and distractor draws.
        sources: the frame store (default: the data module's shared one).
        limit: keep only the first ``limit`` test videos (the gallery and the queries both;
            None = the whole test split).

    Items: the test items plus ``frame_times_s``, ``relevant_mask``, ``relevant_fraction``,
    ``source_duration_s``, ``offset_s``; batch them with :func:`collate_stress`.
    """

    def __init__(
        self,
        datamodule: DiDeMoDataModule,
        injected_length_s: float,
        distractor_split: str = "val",
        placement: str = "random",
        seed: int = 0,
        sources: SourceFrames | None = None,
        limit: int | None = None,
    ) -> None:
        _check_options(injected_length_s, distractor_split, placement)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be a positive number of test videos, got {limit}")
        self.injected_length_s = float(injected_length_s)
        self.distractor_split = distractor_split
        self.placement = placement
        self.seed = seed
        self.pool = distractor_pool(datamodule, distractor_split)
        self.base = datamodule.dataset("test")
        self.sampling = datamodule.sampling
        self.max_frames = self.sampling.max_frames
        clip = self.sampling.clip_seconds
        if clip is not None and self.injected_length_s > clip:
            log.warning(
                "injected length %.0f s > clip_seconds %.0f s: the lengthened videos are "
                "truncated like real ones, so v may fall outside the sampled span",
                self.injected_length_s,
                clip,
            )
        self.plans = [
            plan_composition(
                i,
                self.base.videos[i].video,
                float(self.base.durations_s[i]),
                self.injected_length_s,
                self.sampling,
                self.pool,
                placement,
                seed,
            )
            for i in range(len(self.base) if limit is None else min(limit, len(self.base)))
        ]
        self.sources = sources if sources is not None else source_frames(datamodule)
        needed = {("test", p.index) for p in self.plans if not p.unchanged}
        needed |= {
            (s.split, s.index)
            for p in self.plans
            for k, s in enumerate(p.stretches)
            if (p.frame_source == k).any()
        }
        self.full_grid_decodes = self.sources.prepare(sorted(needed))

    def __len__(self) -> int:
        return len(self.plans)

    def plan(self, i: int) -> CompositionPlan:
        return self.plans[i]

    def frames(self, i: int) -> np.ndarray:
        """uint8 ``[n, S, S, 3]`` sampled frames of the lengthened video ``i``."""
        p = self.plans[i]
        if p.unchanged:
            return self.base.load_frames(i)
        s = self.sampling.image_size
        out = np.empty((len(p.frame_times_s), s, s, 3), dtype=np.uint8)  # (n, S, S, 3)
        if p.relevant_mask.any():
            own = self.sources.get("test", i)
            out[p.relevant_mask] = own[p.frame_index[p.relevant_mask]]
        for k in np.unique(p.frame_source[p.frame_source >= 0]):
            stretch = p.stretches[k]
            sel = p.frame_source == k
            out[sel] = self.sources.get(stretch.split, stretch.index)[p.frame_index[sel]]
        return out

    def __getitem__(self, i: int) -> dict[str, Any]:
        p = self.plans[i]
        if p.unchanged:
            item = self.base[i]
        else:
            item = {
                "input_ids": self.base.input_ids[i],
                "attention_mask": self.base.attention_mask[i],
                "frames": torch.from_numpy(self.frames(i)),
                "index": i,
                "bucket": self.base.bucket_ids[i],
                "duration_s": p.composed_duration_s,
                "video": self.base.videos[i].video,
            }
        item["frame_times_s"] = torch.as_tensor(p.frame_times_s, dtype=torch.float32)
        item["relevant_mask"] = torch.as_tensor(p.relevant_mask, dtype=torch.bool)
        item["relevant_fraction"] = p.relevant_fraction
        item["source_duration_s"] = p.source_duration_s
        item["offset_s"] = p.offset_s
        return item

    def summary(self) -> dict[str, Any]:
        """Means over the test videos: relevant fraction, relevant (real) frames kept, composed
        frames, composed duration; plus the setting, how many videos were lengthened and
        ``full_grid_decodes``: videos whose own full-grid cache entry this set was the first to
        need (decoded then, unless already in the frame cache)."""
        plans = self.plans
        n = max(1, len(plans))
        return {
            "injected_length_s": self.injected_length_s,
            "distractor_split": self.distractor_split,
            "placement": self.placement,
            "seed": self.seed,
            "videos": len(plans),
            "lengthened_videos": sum(not p.unchanged for p in plans),
            "mean_relevant_fraction": sum(p.relevant_fraction for p in plans) / n,
            "mean_relevant_frames": sum(p.relevant_frames for p in plans) / n,
            "mean_frames": sum(len(p.frame_times_s) for p in plans) / n,
            "mean_composed_duration_s": sum(p.composed_duration_s for p in plans) / n,
            "mean_source_duration_s": sum(p.source_duration_s for p in plans) / n,
            "full_grid_decodes": self.full_grid_decodes,
        }


# ----------------------------------------------------------------------------------- loaders


def collate_stress(samples: list[dict[str, Any]], max_frames: int) -> dict[str, Any]:
    """A batch of docs/CONTRACTS.md plus ``frame_times_s`` float ``[B, N]`` (0 where padded),
    ``relevant_mask`` bool ``[B, N]``, and ``relevant_fraction``, ``source_duration_s``,
    ``offset_s`` float ``[B]``."""
    batch = collate_batch(samples, max_frames)
    b = len(samples)
    times = torch.zeros(b, max_frames, dtype=torch.float32)  # (B, N)
    relevant = torch.zeros(b, max_frames, dtype=torch.bool)  # (B, N)
    for j, s in enumerate(samples):
        n = min(len(s["frame_times_s"]), max_frames)
        times[j, :n] = s["frame_times_s"][:n]
        relevant[j, :n] = s["relevant_mask"][:n]
    batch["frame_times_s"] = times
    batch["relevant_mask"] = relevant
    for key in ("relevant_fraction", "source_duration_s", "offset_s"):
        batch[key] = torch.tensor([float(s[key]) for s in samples], dtype=torch.float32)
    return batch


class _StressCollate:
    """Picklable collate function (DataLoader workers)."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_stress(samples, self.max_frames)


def stress_dataloader(
    datamodule: DiDeMoDataModule,
    injected_length_s: float,
    distractor_split: str = "val",
    placement: str = "random",
    seed: int = 0,
    batch_size: int | None = None,
    num_workers: int | None = None,
) -> DataLoader:
    """Test batches of the lengthened test set (in test order; batch size default: the data
    module's ``eval_batch_size``)."""
    ds = StressTestSet(datamodule, injected_length_s, distractor_split, placement, seed)
    return _loader(ds, datamodule, batch_size, num_workers)


def _loader(
    ds: StressTestSet,
    datamodule: DiDeMoDataModule,
    batch_size: int | None,
    num_workers: int | None,
) -> DataLoader:
    workers = datamodule.num_workers if num_workers is None else num_workers
    return DataLoader(
        ds,
        batch_size=batch_size or datamodule.eval_batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_StressCollate(ds.max_frames),
        persistent_workers=False,
    )


class StressDataModule(L.LightningDataModule):
    """The lengthened test set as a data module: ``trainer.test(module, datamodule=...)``.

    ``test_dataloader()`` yields lengthened batches; ``bucket_names("test")`` is the base data
    module's (each video keeps its natural bucket), so the shared ``RetrievalModule`` reports
    per-bucket metrics unchanged.

    Args:
        datamodule: the benchmark's (set-up or not) :class:`DiDeMoDataModule`.
        injected_length_s, distractor_split, placement, seed: see :class:`StressTestSet`.
        batch_size: test batch size (default: the base data module's ``eval_batch_size``).
        limit: the first ``limit`` test videos only (see :class:`StressTestSet`).
    """

    def __init__(
        self,
        datamodule: DiDeMoDataModule,
        injected_length_s: float,
        distractor_split: str = "val",
        placement: str = "random",
        seed: int = 0,
        batch_size: int | None = None,
        limit: int | None = None,
    ) -> None:
        super().__init__()
        _check_options(injected_length_s, distractor_split, placement)
        self.limit = limit
        self.base = datamodule
        self.injected_length_s = float(injected_length_s)
        self.distractor_split = distractor_split
        self.placement = placement
        self.seed = seed
        self.batch_size = batch_size
        self._dataset: StressTestSet | None = None

    @property
    def sampling(self) -> SamplingConfig:
        return self.base.sampling

    @property
    def bucket_by(self) -> str:
        return self.base.bucket_by

    def setup(self, stage: str | None = None) -> None:
        if self._dataset is None:
            self._dataset = StressTestSet(
                self.base,
                self.injected_length_s,
                self.distractor_split,
                self.placement,
                self.seed,
                limit=self.limit,
            )

    @property
    def dataset(self) -> StressTestSet:
        self.setup("test")
        assert self._dataset is not None
        return self._dataset

    def test_dataloader(self) -> DataLoader:
        return _loader(self.dataset, self.base, self.batch_size, None)

    def bucket_names(self, split: str) -> list[str]:
        return self.base.bucket_names(split)

    def bucket_edges(self, split: str) -> list[float]:
        return self.base.bucket_edges(split)

    def summary(self) -> dict[str, Any]:
        """:meth:`StressTestSet.summary` of the lengthened test set."""
        return self.dataset.summary()
