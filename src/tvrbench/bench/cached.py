"""The cached-feature protocol (``protocol: cached_features``; a FAST PROTOCOL, see
:mod:`tvrbench.features`): the shared starting backbone runs once per split, its features are
cached under ``<cache_root>/features`` and every method trains head-only on them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class CachedSetup:
    """The protocol's shared inputs: the feature DataModule, its files, the identity of the
    backbone they came from, and one test row of the video DataModule (token ids, frames) for
    the cost measurements, which run on the full module."""

    datamodule: Any
    paths: dict[str, str]
    backbone_id: str
    sample: dict[str, torch.Tensor]


def cached_setup(
    datamodule,
    clip: str,
    clip_checkpoint: str | None,
    cache_root: Path,
    device: torch.device,
    seed: int,
) -> CachedSetup:
    """Extract (or reuse) the starting backbone's features of every split and build the
    :class:`~tvrbench.features.CachedFeatureDataModule` (batch sizes as ``datamodule``'s)."""
    from tvrbench.data.datamodule import collate_batch
    from tvrbench.features import (
        SPLITS,
        CachedFeatureDataModule,
        backbone_identity,
        extract_features,
    )
    from tvrbench.retrieval import load_backbone

    # The same starting weights every method's module gets (RetrievalModule.__init__).
    backbone = load_backbone(clip, clip_checkpoint).requires_grad_(False)
    backbone_id = backbone_identity(backbone)
    backbone.to(device)
    out = cache_root / "features"
    paths: dict[str, str] = {}
    for split in SPLITS:
        t0 = time.perf_counter()
        path = extract_features(
            backbone, datamodule, split, out, batch_size=datamodule.eval_batch_size
        )
        paths[split] = str(path)
        print(f"cached features of {split}: {path} ({time.perf_counter() - t0:.1f} s)")
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    test = datamodule.dataset("test")
    if len(test) == 0:
        raise RuntimeError("the test split is empty: nothing to evaluate")
    row = collate_batch([test[0]], max_frames=datamodule.sampling.max_frames)
    sample = {k: row[k] for k in ("input_ids", "attention_mask", "frames", "frame_mask")}
    cached_dm = CachedFeatureDataModule(
        train_path=paths["train"],
        val_path=paths["val"],
        test_path=paths["test"],
        batch_size=datamodule.batch_size,
        eval_batch_size=datamodule.eval_batch_size,
        num_workers=0,  # in-memory tensors: workers only add start-up time
        seed=seed,
    )
    return CachedSetup(cached_dm, paths, backbone_id, sample)
