"""``DiDeMoDataModule``: paragraph-to-video retrieval batches for every method (SPEC §3).

What happens at ``setup``, per split:

1. annotations and split list are read (:func:`tvrbench.data.annotations.load_split`), listed
   videos without a file are counted as missing;
2. every video is probed once through the frame cache (:class:`tvrbench.data.cache.FrameCache`),
   decoding the misses in a process pool (every usable CPU) with a progress bar, so that
   durations (for the length buckets) and unreadable files are known before training; under DDP
   each rank decodes its share of the list (:func:`probe_sharded`; ``tvrbench cache-frames``
   does all of it beforehand, on CPU machines); unreadable files are skipped
   (``on_bad_video="skip"``, listed in the ``bad_videos.csv`` manifest together with the missing
   ones) or stop the setup (``"error"``);
3. the paragraphs are tokenised once (padded / truncated to ``max_words``);
4. length buckets are computed (given edges, or equal-count quantiles of the split).

Batches (docs/CONTRACTS.md): ``input_ids`` / ``attention_mask`` LongTensor ``[B, L]``,
``frames`` uint8 ``[B, N, S, S, 3]`` zero-padded to ``max_frames`` (normalised on the device by
:func:`tvrbench.data.video.prepare_frames`, from ``RetrievalModule.on_after_batch_transfer``),
``frame_mask`` BoolTensor ``[B, N]``, ``index`` / ``bucket`` LongTensor ``[B]``,
``duration_s`` FloatTensor ``[B]``, ``video`` list[str] (the name as listed in the split).

Evaluation under DDP: Lightning wraps the evaluation loaders in a ``DistributedSampler``, which
pads the dataset by repeating samples so that every rank gets the same number. ``index`` is the
sample's position in its split's dataset; after gathering, keep one row per index
(:func:`tvrbench.retrieval.deduplicate_indices`) to score each query exactly once.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tvrbench.data import buckets as bk
from tvrbench.data.annotations import SPLITS, SplitAnnotations, VideoAnnotation, load_split
from tvrbench.data.cache import FrameCache, VideoInfo
from tvrbench.data.video import READERS, SamplingConfig

log = logging.getLogger(__name__)

BAD_VIDEO_POLICIES = ("skip", "error")
MANIFEST_FIELDS = ("video", "split", "reason")
_STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


class DataSetupError(RuntimeError):
    """The data of a split cannot be used as configured (message names the split and why)."""


#: Most DataLoader workers ``num_workers: auto`` starts per process: past ~8 workers a cache-hit
#: uint8 pipeline feeds one GPU (benchmarks/input_pipeline.py), and each worker holds its own
#: prefetched batches in shared memory.
MAX_AUTO_WORKERS = 8


def per_device_batch_size(global_batch_size: int, world_size: int) -> int:
    """The batch each of ``world_size`` processes loads so that together they make the global
    contrastive batch; a remainder is a one-line error.

    >>> per_device_batch_size(64, 8)
    8
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if global_batch_size % world_size:
        raise DataSetupError(
            f"batch_size {global_batch_size} is the global batch and does not split evenly over "
            f"{world_size} training processes (devices x nodes); use a multiple of {world_size}"
        )
    return global_batch_size // world_size


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def auto_num_workers(local_processes: int = 1) -> int:
    """``num_workers: auto``: the usable CPUs shared among the node's ``local_processes``
    training processes, one CPU left to each process itself, between 0 and
    :data:`MAX_AUTO_WORKERS`."""
    per_process = usable_cpus() // max(1, local_processes)
    return max(0, min(MAX_AUTO_WORKERS, per_process - 1))


# ------------------------------------------------------------------------------------- probe


def _init_probe_worker() -> None:
    torch.set_num_threads(1)


def _probe_one(job: tuple[int, str, SamplingConfig, str, str]) -> tuple[int, VideoInfo]:
    i, path, sampling, cache_dir, reader = job
    info, _ = FrameCache(cache_dir).get_or_decode(path, sampling, reader)
    return i, info


def probe_videos(
    paths: list[Path],
    sampling: SamplingConfig,
    cache: FrameCache,
    reader: str = "auto",
    processes: int = 1,
    desc: str = "probe",
) -> list[VideoInfo]:
    """Duration, frame count or decode error of every video, decoding cache misses only.

    Misses are decoded in a pool of ``processes`` processes (in this process when 1 or only one
    miss), with a tqdm progress bar; results land in the cache.
    """
    from tqdm.auto import tqdm

    infos: list[VideoInfo | None] = [cache.info(p, sampling) for p in paths]
    misses = [i for i, info in enumerate(infos) if info is None]
    if misses:
        jobs = [(i, str(paths[i]), sampling, str(cache.root), reader) for i in misses]
        bar = tqdm(total=len(jobs), desc=f"decode {desc}", unit="video", leave=False)
        if processes > 1 and len(jobs) > 1:
            ctx = get_context("fork" if "fork" in _start_methods() else None)
            with ctx.Pool(min(processes, len(jobs)), initializer=_init_probe_worker) as pool:
                for i, info in pool.imap_unordered(_probe_one, jobs):
                    infos[i] = info
                    bar.update()
        else:
            for job in jobs:
                i, info = _probe_one(job)
                infos[i] = info
                bar.update()
        bar.close()
    return [info for info in infos if info is not None]


#: How long a rank may wait at the decode barrier. Every rank decodes its own shard, so the wait is
#: only the imbalance between shards, but raw 720p DiDeMo takes hours to decode and one slow
#: rank (long videos, a busy node) can lag far past torch.distributed's 30-minute default.
DECODE_BARRIER_TIMEOUT_S = 6 * 3600

_BARRIER_GROUPS: dict[int, Any] = {}


def decode_barrier() -> None:
    """Wait for every rank (no-op outside torch.distributed), with
    :data:`DECODE_BARRIER_TIMEOUT_S` instead of the process group's default timeout.

    A separate gloo group (created once, collectively, by the first call on every rank) carries
    the barrier, so its timeout does not change the training group's, and it works over NCCL
    and gloo alike.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return
    from datetime import timedelta

    group = _BARRIER_GROUPS.get(DECODE_BARRIER_TIMEOUT_S)
    if group is None:
        group = dist.new_group(backend="gloo", timeout=timedelta(seconds=DECODE_BARRIER_TIMEOUT_S))
        _BARRIER_GROUPS[DECODE_BARRIER_TIMEOUT_S] = group
    dist.barrier(group=group)


@dataclass(frozen=True)
class DecodeShard:
    """Which part of a video list this process decodes (one process: all of it).

    Attributes:
        rank, world_size: global rank and number of processes.
        local_rank, local_world_size: rank on this node and processes on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1


def probe_sharded(
    paths: list[Path],
    sampling: SamplingConfig,
    cache: FrameCache,
    reader: str,
    processes: int,
    shard: DecodeShard,
    desc: str = "probe",
) -> list[VideoInfo]:
    """:func:`probe_videos` with the decoding spread over the ranks; every rank returns every
    video's info.

    1. Rank ``r`` decodes ``paths[r::world_size]`` into the cache; :func:`decode_barrier`.
    2. Entries still missing (a cache folder that is not shared between nodes) are split among
       the ranks of each node the same way; barrier (instant when the cache is shared).
    3. Every rank reads all infos from the cache (hits only).
    """
    if shard.world_size <= 1:
        return probe_videos(paths, sampling, cache, reader, processes, desc=desc)
    probe_videos(paths[shard.rank :: shard.world_size], sampling, cache, reader, processes, desc)
    decode_barrier()
    missing = [p for p in paths if cache.info(p, sampling) is None]
    if missing:
        mine = missing[shard.local_rank :: shard.local_world_size]
        probe_videos(mine, sampling, cache, reader, processes, desc)
    decode_barrier()
    return probe_videos(paths, sampling, cache, reader, processes, desc=desc)


def _start_methods() -> list[str]:
    import multiprocessing

    return multiprocessing.get_all_start_methods()


def count_truncated(tokenizer: Any, texts: list[str], max_words: int) -> int:
    """How many texts need more than ``max_words`` tokens (start and end tokens counted)."""
    if not texts:
        return 0
    ids = tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    return sum(len(x) > max_words for x in ids)


# ------------------------------------------------------------------------------------ dataset


class VideoTextDataset(Dataset):
    """One paragraph + one video per item (already probed, tokenised and bucketed).

    Items are dicts: ``input_ids``/``attention_mask`` ``[L]``, ``frames`` uint8 ``[n, S, S, 3]``,
    ``index``, ``bucket``, ``duration_s``, ``video``. :func:`collate_batch` pads them (uint8).
    """

    def __init__(
        self,
        videos: list[VideoAnnotation],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        durations_s: list[float],
        num_frames: list[int],
        bucket_ids: list[int],
        sampling: SamplingConfig,
        cache_dir: str,
        reader: str,
        frames: list[np.ndarray] | None = None,
    ) -> None:
        self.videos = videos
        self.input_ids = input_ids  # (V, L)
        self.attention_mask = attention_mask  # (V, L)
        self.durations_s = durations_s
        self.num_frames = num_frames
        self.bucket_ids = bucket_ids
        self.sampling = sampling
        self.cache_dir = cache_dir
        self.reader = reader
        self.frames = frames  # in memory when the split is small

    def __len__(self) -> int:
        return len(self.videos)

    def load_frames(self, i: int) -> np.ndarray:
        """uint8 ``[n, S, S, 3]`` frames of item ``i`` (memory, else cache, else decode)."""
        if self.frames is not None:
            return self.frames[i]
        path = self.videos[i].path
        assert path is not None
        cache = FrameCache(self.cache_dir)
        frames = cache.load_frames(path, self.sampling)  # a hit: one key, one .npy read
        if frames is not None:
            return frames
        info, frames = cache.get_or_decode(path, self.sampling, self.reader)
        if frames is None:
            raise DataSetupError(f"{path.name}: became unreadable after setup ({info.error})")
        return frames

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "frames": torch.from_numpy(np.ascontiguousarray(self.load_frames(i))),
            "index": i,
            "bucket": self.bucket_ids[i],
            "duration_s": self.durations_s[i],
            "video": self.videos[i].video,
        }


def collate_batch(samples: list[dict[str, Any]], max_frames: int) -> dict[str, Any]:
    """Stack items into a batch of docs/CONTRACTS.md: frames stay uint8 ``[B, N, S, S, 3]``,
    zero-padded to ``max_frames`` and contiguous (1 byte a value across the host and
    ``/dev/shm``; :func:`~tvrbench.data.video.prepare_frames` normalises them on the device)."""
    b = len(samples)
    size = samples[0]["frames"].shape[1]
    frames = torch.zeros(b, max_frames, size, size, 3, dtype=torch.uint8)  # (B, N, S, S, 3)
    frame_mask = torch.zeros(b, max_frames, dtype=torch.bool)  # (B, N)
    for j, s in enumerate(samples):
        n = min(len(s["frames"]), max_frames)
        frames[j, :n] = s["frames"][:n]
        frame_mask[j, :n] = True
    return {
        "input_ids": torch.stack([s["input_ids"] for s in samples]).long(),
        "attention_mask": torch.stack([s["attention_mask"] for s in samples]).long(),
        "frames": frames,
        "frame_mask": frame_mask,
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
        "bucket": torch.tensor([s["bucket"] for s in samples], dtype=torch.long),
        "duration_s": torch.tensor([s["duration_s"] for s in samples], dtype=torch.float32),
        "video": [s["video"] for s in samples],
    }


class _Collate:
    """Picklable collate function (DataLoader workers)."""

    def __init__(self, max_frames: int) -> None:
        self.max_frames = max_frames

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_batch(samples, self.max_frames)


# --------------------------------------------------------------------------------- datamodule


class DiDeMoDataModule(L.LightningDataModule):
    """DiDeMo (or the synthetic DiDeMo-format data) for paragraph-to-video retrieval.

    Args:
        root: dataset root (``{split}_data.json``, ``{split}_list.txt``, ``videos/``).
        video_dir: folder of the video files (default ``ROOT/videos``).
        tokenizer: ``"tiny"``, a tokenizer directory or a cached hub id
            (:func:`tvrbench.backbone.load_tokenizer`).
        max_words: tokens per paragraph, start and end tokens included (L).
        max_frames: frames per video at most (N); batches are padded to it.
        sample_fps: sampling rate (frames per second of video).
        clip_seconds: sample only the first seconds (31 = published protocol; None = whole video).
        image_size: frame side in pixels (224 for CLIP ViT-B/32, 32 for the tiny CLIP).
        reader: ``"auto"`` (decord, then PyAV), ``"decord"`` or ``"pyav"``.
        cache_dir: frame cache folder (default ``$TVRBENCH_CACHE`` or ``~/.cache/tvrbench/frames``).
        on_bad_video: ``"skip"`` (exclude, list in the manifest) or ``"error"`` (stop at setup).
        manifest_path: where ``bad_videos.csv`` goes (default: under the cache folder, one per
            dataset root).
        bucket_by: ``"duration"``, ``"sampled_span"``, ``"words"`` or ``"described_fraction"``
            (annotated seconds / decoded duration, :mod:`tvrbench.data.buckets`).
        bucket_edges_s: inner bucket edges (e.g. ``[18, 31, 54]``; fractions such as
            ``[0.25, 0.5]`` for ``"described_fraction"``); None for quantiles.
        num_buckets: number of equal-count buckets when no edges are given.
        batch_size: the GLOBAL training batch — the contrastive batch InfoNCE sees, as in the
            published recipes — split evenly across the training processes (devices × nodes):
            each process loads ``batch_size / world_size`` (:func:`per_device_batch_size`; a
            remainder is an error), and features are all-gathered before the loss.
        eval_batch_size: validation/test batch size per process (default: the per-process
            training batch); it does not change any metric.
        num_workers: DataLoader workers per process; ``"auto"``: the usable CPUs divided among
            the node's processes, at most 8 (:func:`auto_num_workers`). Decoding at setup does
            not use it: its pool takes the usable CPUs shared among the node's processes
            (:meth:`decode_processes`).
        train_limit, val_limit, test_limit: keep only the first videos of a split (smoke runs).
        seed: seed of the training shuffle.
        memory_limit_gb: keep a split's decoded frames in memory below this size.
    """

    def __init__(
        self,
        root: str,
        video_dir: str | None = None,
        tokenizer: str = "tiny",
        max_words: int = 32,
        max_frames: int = 64,
        sample_fps: float = 1.0,
        clip_seconds: float | None = 31.0,
        image_size: int = 224,
        reader: str = "auto",
        cache_dir: str | None = None,
        on_bad_video: str = "skip",
        manifest_path: str | None = None,
        bucket_by: str = "duration",
        bucket_edges_s: list[float] | None = None,
        num_buckets: int = 4,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int | Literal["auto"] = 0,
        train_limit: int | None = None,
        val_limit: int | None = None,
        test_limit: int | None = None,
        seed: int = 0,
        memory_limit_gb: float = 1.0,
    ) -> None:
        super().__init__()
        if reader not in READERS:
            raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
        if on_bad_video not in BAD_VIDEO_POLICIES:
            raise ValueError(
                f"on_bad_video must be one of {BAD_VIDEO_POLICIES}, got {on_bad_video!r}"
            )
        bk.bucket_unit(bucket_by)
        if bucket_edges_s is not None:
            bk.check_edges(bucket_edges_s)
        self.save_hyperparameters()
        self.root = Path(root)
        self.video_dir = Path(video_dir) if video_dir else self.root / "videos"
        self.tokenizer_name = tokenizer
        self.max_words = max_words
        self.sampling = SamplingConfig(sample_fps, max_frames, clip_seconds, image_size)
        self.reader = reader
        self.cache = FrameCache(cache_dir)
        self.on_bad_video = on_bad_video
        root_id = hashlib.sha1(str(self.root.resolve()).encode()).hexdigest()[:10]
        self.manifest_path = (
            Path(manifest_path)
            if manifest_path
            else self.cache.root / "manifests" / root_id / "bad_videos.csv"
        )
        self.bucket_by = bucket_by
        self.bucket_edges_s = bucket_edges_s
        self.num_buckets = num_buckets
        self.batch_size = batch_size
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.eval_batch_size_setting = eval_batch_size
        if num_workers != "auto" and (not isinstance(num_workers, int) or num_workers < 0):
            raise ValueError(f"num_workers must be an int >= 0 or 'auto', got {num_workers!r}")
        self.num_workers_setting = num_workers
        self.limits = {"train": train_limit, "val": val_limit, "test": test_limit}
        self.seed = seed
        self.memory_limit_gb = memory_limit_gb
        self._tokenizer: Any = None
        self._datasets: dict[str, VideoTextDataset] = {}
        self._annotations: dict[str, SplitAnnotations] = {}
        self._summaries: dict[str, dict[str, Any]] = {}
        self._edges: dict[str, list[float]] = {}
        self._bad: dict[str, list[dict[str, str]]] = {}

    # -------------------------------------------------------------------------------- setup

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from tvrbench.backbone import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_name)
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        """Prepare the splits of ``stage`` (all splits that have annotations when None)."""
        if stage is None:
            splits = tuple(s for s in SPLITS if (self.root / f"{s}_data.json").exists())
        else:
            splits = _STAGE_SPLITS.get(stage, ("test",))
        for split in splits:
            self.setup_split(split)

    def setup_split(self, split: str) -> None:
        """Prepare one split (``"train"``, ``"val"`` or ``"test"``); a no-op when done."""
        if split not in self._datasets:
            self._setup_split(split)

    @property
    def world_size(self) -> int:
        """Training processes (devices × nodes) of the attached trainer; 1 without one."""
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    @property
    def per_device_batch_size(self) -> int:
        """The training batch each process loads: ``batch_size / world_size``."""
        return per_device_batch_size(self.batch_size, self.world_size)

    @property
    def eval_batch_size(self) -> int:
        """Validation/test batch per process (default: the per-process training batch)."""
        return self.eval_batch_size_setting or self.per_device_batch_size

    @property
    def num_workers(self) -> int:
        """DataLoader workers per process (``"auto"`` resolved for this node)."""
        if self.num_workers_setting == "auto":
            trainer = self.trainer
            local = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
            return auto_num_workers(local)
        return int(self.num_workers_setting)

    def decode_processes(self) -> int:
        """Size of the decode pool: the usable CPUs shared among the node's training processes
        (each decodes its own shard at the same time), at least 1."""
        trainer = self.trainer
        local = int(getattr(trainer, "num_devices", 1) or 1) if trainer is not None else 1
        return max(1, usable_cpus() // max(1, local))

    def _probe(self, paths: list[Path], split: str) -> list[VideoInfo]:
        trainer = self.trainer
        shard = (
            DecodeShard()
            if trainer is None or trainer.world_size <= 1
            else DecodeShard(
                trainer.global_rank,
                trainer.world_size,
                trainer.local_rank,
                int(getattr(trainer, "num_devices", 1) or 1),
            )
        )
        return probe_sharded(
            paths, self.sampling, self.cache, self.reader, self.decode_processes(), shard, split
        )

    def _setup_split(self, split: str) -> None:
        ann = load_split(self.root, split, self.video_dir)
        videos = ann.videos
        limit = self.limits[split]
        if limit is not None:
            videos = videos[:limit]
        paths = [v.path for v in videos if v.path is not None]
        infos = self._probe(paths, split)
        bad = [(v, info.error) for v, info in zip(videos, infos) if info.error is not None]
        if bad and self.on_bad_video == "error":
            first_video, reason = bad[0]
            raise DataSetupError(
                f"{split}: {len(bad)} unreadable video(s) in {self.video_dir}; first: {reason} "
                "(on_bad_video='skip' excludes them and lists them in the manifest)"
            )
        good = [(v, info) for v, info in zip(videos, infos) if info.error is None]
        kept = [v for v, _ in good]
        durations = [float(info.duration_s or 0.0) for _, info in good]
        num_frames = [info.num_frames for _, info in good]

        tok = self.tokenizer
        paragraphs = [v.paragraph for v in kept]
        if paragraphs:
            enc = tok(
                paragraphs,
                padding="max_length",
                truncation=True,
                max_length=self.max_words,
                return_tensors="pt",
            )
            input_ids, attention_mask = enc["input_ids"].long(), enc["attention_mask"].long()
        else:
            input_ids = attention_mask = torch.zeros(0, self.max_words, dtype=torch.long)
        truncated = count_truncated(tok, paragraphs, self.max_words)

        values = bk.bucket_values(
            self.bucket_by,
            durations,
            [len(p.split()) for p in paragraphs],
            self.sampling.clip_seconds,
            annotated_s=[bk.annotated_seconds(v.times, d) for v, d in zip(kept, durations)],
        )
        edges = (
            bk.check_edges(self.bucket_edges_s)
            if self.bucket_edges_s is not None
            else bk.quantile_edges(values, self.num_buckets)
        )
        bucket_ids = bk.assign_buckets(values, edges).tolist()

        frames = None
        s = self.sampling.image_size
        total_bytes = sum(num_frames) * s * s * 3
        if total_bytes < self.memory_limit_gb * 1e9:
            frames = []
            for v in kept:
                assert v.path is not None
                info, arr = self.cache.get_or_decode(v.path, self.sampling, self.reader)
                if arr is None:
                    raise DataSetupError(f"{v.video}: unreadable on reload ({info.error})")
                frames.append(arr)

        self._annotations[split] = ann
        self._edges[split] = edges
        self._datasets[split] = VideoTextDataset(
            kept,
            input_ids,
            attention_mask,
            durations,
            num_frames,
            bucket_ids,
            self.sampling,
            str(self.cache.root),
            self.reader,
            frames,
        )
        self._bad[split] = [
            {"video": v.video, "split": split, "reason": str(reason)} for v, reason in bad
        ] + [
            {
                "video": name,
                "split": split,
                "reason": f"missing: no file for it in {self.video_dir}",
            }
            for name in ann.missing
        ]
        unit = bk.bucket_unit(self.bucket_by)
        self._summaries[split] = {
            "split": split,
            "videos": len(kept),
            "sentences": sum(len(v.sentences) for v in kept),
            "missing_videos": len(ann.missing),
            "unreadable_videos": len(bad),
            "names_without_extension": len(ann.names_without_extension),
            "truncated_paragraphs": truncated,
            "max_words": self.max_words,
            "clip_seconds": self.sampling.clip_seconds,
            "sample_fps": self.sampling.sample_fps,
            "bucket_by": self.bucket_by,
            "buckets": bk.bucket_table(values, edges, unit, durations, num_frames),
        }
        self._write_manifest()
        log.info(
            "%s: %d videos, %d missing, %d unreadable (manifest %s)",
            split,
            len(kept),
            len(ann.missing),
            len(bad),
            self.manifest_path,
        )

    def _write_manifest(self) -> None:
        rows = self.bad_videos()
        path = self.manifest_path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=MANIFEST_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    # ----------------------------------------------------------------------------- accessors

    def _require(self, split: str) -> None:
        if split not in self._datasets:
            raise DataSetupError(f"split {split!r} is not set up; call setup() for its stage first")

    def dataset(self, split: str) -> VideoTextDataset:
        self._require(split)
        return self._datasets[split]

    def annotations(self, split: str) -> SplitAnnotations:
        """The split's parsed annotations (incl. per-sentence moments and missing names)."""
        self._require(split)
        return self._annotations[split]

    def bucket_edges(self, split: str) -> list[float]:
        """Inner bucket edges of a split (seconds; words for ``bucket_by="words"``, fractions for
        ``"described_fraction"``)."""
        self._require(split)
        return list(self._edges[split])

    def bucket_names(self, split: str) -> list[str]:
        self._require(split)
        return bk.bucket_names(self._edges[split], bk.bucket_unit(self.bucket_by))

    def summary(self, split: str) -> dict[str, Any]:
        """Counts of a split (videos, sentences, missing, unreadable, ...) and its bucket table."""
        self._require(split)
        return dict(self._summaries[split])

    def bad_videos(self) -> list[dict[str, str]]:
        """Unreadable and missing videos of every split set up so far (video, split, reason)."""
        return [row for split in SPLITS for row in self._bad.get(split, [])]

    # ------------------------------------------------------------------------------- loaders

    def _loader(self, split: str, train: bool) -> DataLoader:
        ds = self.dataset(split)
        workers = self.num_workers
        per_device = self.per_device_batch_size
        kwargs: dict[str, Any] = dict(
            num_workers=workers,
            collate_fn=_Collate(self.sampling.max_frames),
            persistent_workers=workers > 0,
            # Page-locked batches copy to a GPU asynchronously and faster; only bytes (uint8
            # frames) are pinned, so the pinned pool stays small.
            pin_memory=self._on_cuda(),
        )
        if train:
            generator = torch.Generator().manual_seed(self.seed)
            return DataLoader(
                ds,
                batch_size=per_device,
                shuffle=True,
                generator=generator,
                drop_last=len(ds) >= 2 * self.batch_size,
                **kwargs,
            )
        return DataLoader(ds, batch_size=self.eval_batch_size, shuffle=False, **kwargs)

    def _on_cuda(self) -> bool:
        trainer = self.trainer
        if trainer is None:
            return False
        from lightning.pytorch.accelerators import CUDAAccelerator

        return isinstance(trainer.accelerator, CUDAAccelerator)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)
