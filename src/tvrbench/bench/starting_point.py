"""What every method of a run starts from: the data folder (real DiDeMo or the built-in synthetic
set, generated once) and the CLIP weights (a real checkpoint, checked before any decoding, or the
tiny CLIP pretrained once on the synthetic training split and cached)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tvrbench.bench.config import BenchConfigError


def check_clip_available(clip: str) -> None:
    """Fail fast, before any decoding, when a real CLIP's weights or tokenizer are missing."""
    if clip == "tiny":
        return
    from tvrbench.backbone import load_clip_model, load_tokenizer

    load_tokenizer(clip)
    load_clip_model(clip)


def data_root(didemo_root: str | None, cache_root: Path, seed: int, synth_videos: int) -> Path:
    """``didemo_root`` (checked), or the synthetic set under ``<cache_root>/synth-<seed>-<n>``."""
    if didemo_root is not None:
        if not Path(didemo_root).is_dir():
            raise BenchConfigError(f"didemo_root {didemo_root}: no such folder")
        return Path(didemo_root)
    from tvrbench.data.synth import generate

    root = cache_root / f"synth-{seed}-{synth_videos}"
    generate(root, videos=synth_videos, seed=seed)  # reuses a complete earlier output
    return root


def pretrained_tiny_clip(
    datamodule, cache_root: Path, minutes: float, seed: int, accelerator: str = "cpu"
) -> str:
    """The tiny CLIP pretrained on the TRAINING split's (frame, sentence) pairs, cached under
    ``<cache_root>/pretrain/<key>.pt`` (see :mod:`tvrbench.bench.pretrain`)."""
    from tvrbench.bench import pretrain as pt

    datamodule.setup("fit")
    ds = datamodule.dataset("train")
    config = pt.PretrainConfig(minutes=minutes, max_words=datamodule.max_words, seed=seed)
    identity = {
        "root": str(Path(datamodule.root).resolve()),
        "videos": [v.video for v in ds.videos],
        "sampling": repr(ds.sampling),
    }
    out_path = cache_root / "pretrain" / f"tiny-clip-{pt.cache_key(config, identity)}.pt"
    if out_path.exists():
        return str(out_path)
    frames, times_s, moments = [], [], []
    for i, video in enumerate(ds.videos):
        clip_frames = ds.load_frames(i)  # (n, S, S, 3) uint8
        frames.append(clip_frames)
        times_s.append(_frame_times_s(ds, i, len(clip_frames)))
        moments.append(video.moments)
    print(f"pretraining the tiny CLIP on {len(frames)} training videos -> {out_path}")
    path = pt.pretrain_tiny_clip(
        frames, times_s, moments, out_path, config, accelerator=accelerator
    )
    return str(path)


def _frame_times_s(ds, i: int, n: int) -> np.ndarray:
    """Sample times (s) of item ``i``'s ``n`` frames: the sampler's targets for its duration."""
    from tvrbench.data.video import sample_times

    times = np.asarray(sample_times(float(ds.durations_s[i]), ds.sampling), dtype=np.float64)
    if len(times) != n:
        raise RuntimeError(f"{ds.videos[i].video}: {n} frames but {len(times)} sample times")
    return times
