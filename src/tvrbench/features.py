"""The cached-feature protocol: a FAST PROTOCOL for head-only training and evaluation.

The CLIP backbone is frozen and run once per split: :func:`extract_features` stores the frame
embeddings ``[n, N, D]`` and the text features (sentence ``[n, D]``, words ``[n, L, D]``) in fp16,
with the masks, dataset indices, length buckets, durations and video names, in one ``.pt`` file
(written atomically). :class:`CachedFeatureDataModule` then serves batches from those files with
the keys ``sentence, words, attention_mask, frame_emb, frame_mask, index, bucket, duration_s,
video``; :class:`tvrbench.retrieval.RetrievalModule` recognises them
(``batch_text_state``/``batch_video_state``) and skips decoding and both CLIP towers, so a method's
head trains and evaluates in a fraction of the time.

What the protocol is and is not:

* the backbone never changes, so train a method with ``freeze_backbone=True`` (head-only; the
  logit scale stays frozen too). Results are **not comparable to fine-tuned numbers** (every
  published DiDeMo figure fine-tunes CLIP end to end); they compare heads on equal, frozen
  features;
* a method whose video embedding is not per-frame CLIP cannot use it: CenterCLIP clusters tokens
  inside the vision transformer (it overrides ``frame_embeddings``), so
  :func:`check_cached_protocol` raises :class:`CachedFeaturesUnsupportedError` for it, and so does
  :class:`CachedFeatureDataModule` when attached to such a module;
* features are stored in fp16 (half the disk and memory; scores agree with the full path to fp16
  rounding, ~1e-3 relative).

A file is keyed by the backbone's weights (a SHA-1 of its state dict: its checkpoint identity)
and the data settings (dataset root, tokenizer, max_words, frame sampling, buckets, limits) plus
the split's content (video names, token ids, durations, buckets): :func:`extract_features` reuses
a file whose key matches and rewrites one whose key does not.

Use it

* in the benchmark: ``tvrbench bench --config configs/bench/didemo.yaml --config
  configs/bench/cached_features.yaml`` (``protocol: cached_features``; results are labelled);
* with ``tvrbench fit``: extract the features of a data config with the backbone the method will
  start from, then train on them head-only::

      tvrbench extract-features --config configs/data/synthetic.yaml --clip tiny \
          --out_dir features/synth        # [--clip_checkpoint clip.pt]
      tvrbench fit --config configs/method/xpool.yaml --model.freeze_backbone true \
          --data tvrbench.features.CachedFeatureDataModule \
          --data.train_path features/synth/features-train-<key>.pt \
          --data.val_path features/synth/features-val-<key>.pt --trainer.max_epochs 20

  (the command prints the exact file names; the module's ``clip``/``clip_checkpoint`` must be the
  ones given to ``extract-features``, which :class:`CachedFeatureDataModule` checks);
* from Python: ``extract_features(ClipBackbone.from_pretrained("tiny"), datamodule, "train",
  "features/")`` for each split, then ``CachedFeatureDataModule(train_path=..., val_path=...,
  test_path=...)``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from tvrbench.atomic import atomic_torch_save
from tvrbench.backbone import ClipBackbone

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Keys of a cached batch (what :class:`CachedFeatureDataModule` yields).
BATCH_KEYS = (
    "sentence",
    "words",
    "attention_mask",
    "frame_emb",
    "frame_mask",
    "index",
    "bucket",
    "duration_s",
    "video",
)
_PER_SAMPLE = BATCH_KEYS[:-1]


class CachedFeaturesError(ValueError):
    """A cached-feature file is missing, malformed, or does not fit the module or split."""


class CachedFeaturesUnsupportedError(CachedFeaturesError):
    """The method's video embedding cannot come from cached per-frame CLIP features."""


# ------------------------------------------------------------------------------- identity


def backbone_identity(backbone: ClipBackbone) -> str:
    """SHA-1 of the backbone's state dict (names, dtypes, shapes and values): its checkpoint
    identity, independent of where the weights came from."""
    digest = hashlib.sha1()
    for name, tensor in sorted(backbone.clip.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_settings(datamodule: Any, split: str) -> dict[str, Any]:
    """The data settings a cached split depends on (JSON-serialisable)."""
    sampling = datamodule.sampling
    return {
        "root": str(Path(datamodule.root).resolve()),
        "video_dir": str(Path(datamodule.video_dir).resolve()),
        "tokenizer": str(datamodule.tokenizer_name),
        "max_words": int(datamodule.max_words),
        "sample_fps": float(sampling.sample_fps),
        "max_frames": int(sampling.max_frames),
        "clip_seconds": sampling.clip_seconds,
        "image_size": int(sampling.image_size),
        "bucket_by": datamodule.bucket_by,
        "bucket_edges_s": datamodule.bucket_edges_s,
        "num_buckets": int(datamodule.num_buckets),
        "limit": datamodule.limits.get(split),
    }


def _split_digest(dataset: Any) -> str:
    """SHA-1 of a split's content: video names, token ids, masks, durations and buckets."""
    digest = hashlib.sha1()
    digest.update(json.dumps([v.video for v in dataset.videos]).encode())
    digest.update(dataset.input_ids.long().contiguous().numpy().tobytes())
    digest.update(dataset.attention_mask.long().contiguous().numpy().tobytes())
    digest.update(json.dumps([float(d) for d in dataset.durations_s]).encode())
    digest.update(json.dumps([int(b) for b in dataset.bucket_ids]).encode())
    return digest.hexdigest()


def feature_key(backbone_id: str, settings: dict[str, Any], split: str, content: str) -> str:
    """Cache key of one split's features (16 hex digits)."""
    payload = json.dumps(
        {
            "format": FORMAT_VERSION,
            "backbone": backbone_id,
            "settings": settings,
            "split": split,
            "content": content,
        },
        sort_keys=True,
    )
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- extraction


def _stored_key(path: Path) -> str | None:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # unreadable or truncated: recompute
        return None
    return data.get("key") if isinstance(data, dict) else None


def _to_fp16(x: Tensor, what: str, path: Path) -> Tensor:
    half = x.detach().to("cpu", torch.float16)
    if not torch.isfinite(half[torch.isfinite(x.detach().cpu())]).all():
        raise CachedFeaturesError(f"{path}: {what} overflows fp16 (|value| > 65504)")
    return half


@torch.no_grad()
def extract_features(
    backbone: ClipBackbone,
    datamodule: Any,
    split: str,
    out_path: str | Path,
    batch_size: int = 32,
    force: bool = False,
) -> Path:
    """Run the frozen backbone once over a split and store its features (fp16) in one file.

    Args:
        backbone: the CLIP backbone (frozen; used in eval mode on its current device).
        datamodule: a :class:`tvrbench.data.datamodule.DiDeMoDataModule` (set up here if needed).
        split: ``"train"``, ``"val"`` or ``"test"``.
        out_path: a ``.pt`` file, or a folder that receives ``features-{split}-{key}.pt``.
        batch_size: videos per backbone batch.
        force: recompute even when a file with the same key exists.
    Returns:
        The file. It holds ``sentence [n, D]``, ``words [n, L, D]``, ``frame_emb [n, N, D]``
        (fp16), ``attention_mask [n, L]``, ``frame_mask [n, N]`` (bool), ``index``, ``bucket``
        (long ``[n]``), ``duration_s`` (float ``[n]``), ``video`` (list of names),
        ``bucket_names``, ``key``, ``backbone`` (identity), ``settings`` and ``split``.
    """
    if split not in SPLITS:
        raise CachedFeaturesError(f"unknown split {split!r}; expected one of {SPLITS}")
    from tvrbench.data.datamodule import collate_batch
    from tvrbench.data.video import prepare_frames

    datamodule.setup_split(split)
    dataset = datamodule.dataset(split)
    backbone_id = backbone_identity(backbone)
    settings = data_settings(datamodule, split)
    key = feature_key(backbone_id, settings, split, _split_digest(dataset))
    out = Path(out_path)
    path = out if out.suffix == ".pt" else out / f"features-{split}-{key}.pt"
    if path.exists() and not force:
        if _stored_key(path) == key:
            log.info("cached features of %s are up to date: %s", split, path)
            return path
        log.info("cached features at %s have another key: recomputing", path)

    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=datamodule.num_workers,
        collate_fn=functools.partial(collate_batch, max_frames=datamodule.sampling.max_frames),
    )
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    parts: dict[str, list[Any]] = {k: [] for k in BATCH_KEYS}
    try:
        for batch in loader:
            ids = batch["input_ids"].to(device)
            attention = batch["attention_mask"].to(device)
            frame_mask = batch["frame_mask"].to(device)
            text = backbone.encode_text(ids, attention)
            frames = prepare_frames(batch["frames"].to(device), frame_mask)  # (B, N, 3, S, S)
            frame_emb = backbone.encode_frames(frames, frame_mask)
            parts["sentence"].append(_to_fp16(text.sentence, "sentence embedding", path))
            parts["words"].append(_to_fp16(text.words, "word embeddings", path))
            parts["frame_emb"].append(_to_fp16(frame_emb, "frame embeddings", path))
            parts["attention_mask"].append(batch["attention_mask"].bool())
            parts["frame_mask"].append(batch["frame_mask"].bool())
            for k in ("index", "bucket", "duration_s"):
                parts[k].append(batch[k])
            parts["video"].extend(batch["video"])
    finally:
        backbone.train(was_training)
    n = len(dataset)
    data: dict[str, Any] = {k: torch.cat(v) for k, v in parts.items() if k != "video"}
    data["video"] = list(parts["video"])
    if sorted(data["index"].tolist()) != list(range(n)):
        raise CachedFeaturesError(f"{path}: extraction of {split} did not see every sample once")
    data.update(
        format=FORMAT_VERSION,
        key=key,
        backbone=backbone_id,
        settings=settings,
        split=split,
        bucket_names=list(datamodule.bucket_names(split)),
    )
    atomic_torch_save(data, path)
    log.info("stored %d %s samples' features in %s", n, split, path)
    return path


def load_features(path: str | Path) -> dict[str, Any]:
    """Load and validate a file written by :func:`extract_features`."""
    path = Path(path)
    if not path.is_file():
        raise CachedFeaturesError(f"{path}: no such cached-feature file (run extract_features)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CachedFeaturesError(f"{path}: not a readable cached-feature file ({err})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise CachedFeaturesError(f"{path}: not a cached-feature file of format {FORMAT_VERSION}")
    missing = [k for k in (*BATCH_KEYS, "bucket_names", "backbone") if k not in data]
    if missing:
        raise CachedFeaturesError(f"{path}: missing entries {missing}")
    n = len(data["video"])
    bad = [k for k in _PER_SAMPLE if data[k].shape[0] != n]
    if bad:
        raise CachedFeaturesError(f"{path}: entries {bad} do not have {n} rows")
    return data


# ------------------------------------------------------------------------------ serving


def check_cached_protocol(module: Any) -> None:
    """Raise :class:`CachedFeaturesUnsupportedError` for a module whose video embedding is not
    per-frame CLIP (it overrides ``frame_embeddings``, as CenterCLIP does)."""
    from tvrbench.retrieval import RetrievalModule

    hook = getattr(type(module), "frame_embeddings", None)
    if isinstance(module, RetrievalModule) and hook is not RetrievalModule.frame_embeddings:
        raise CachedFeaturesUnsupportedError(
            f"{type(module).__name__} computes its own video embedding inside the vision "
            "transformer (e.g. CenterCLIP's token clustering), so it cannot use cached per-frame "
            "CLIP features; train and evaluate it on DiDeMoDataModule instead"
        )


class CachedFeatureDataset(Dataset):
    """Samples of one cached split (dicts with :data:`BATCH_KEYS`)."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data["video"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: self.data[k][i] for k in BATCH_KEYS}


def collate_cached(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: tensors along a new batch dim, ``video`` as a list of names."""
    batch: dict[str, Any] = {k: torch.stack([s[k] for s in samples]) for k in _PER_SAMPLE}
    batch["video"] = [s["video"] for s in samples]
    return batch


class CachedFeatureDataModule(L.LightningDataModule):
    """Batches of cached features (FAST PROTOCOL: frozen backbone; see the module docstring).

    Args:
        train_path, val_path, test_path: files written by :func:`extract_features` (a split
            without a file has no loader).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size (default ``batch_size``).
        num_workers: DataLoader workers.
        seed: seed of the training shuffle.
        check_backbone: when attached to a trainer, require the module's backbone to be the one
            the features came from.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        test_path: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        check_backbone: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.paths = {"train": train_path, "val": val_path, "test": test_path}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.check_backbone = check_backbone
        self._data: dict[str, dict[str, Any]] = {}

    def setup(self, stage: str | None = None) -> None:
        """Load the files of every split that has one; check the attached module."""
        for split, path in self.paths.items():
            if path and split not in self._data:
                self._data[split] = load_features(path)
        trainer = getattr(self, "trainer", None)
        module = getattr(trainer, "lightning_module", None) if trainer is not None else None
        if module is not None:
            check_cached_protocol(module)
            self._check_module(module)

    def _check_module(self, module: Any) -> None:
        backbone = getattr(module, "backbone", None)
        if backbone is not None and any(p.requires_grad for p in backbone.parameters()):
            log.warning(
                "cached features: the backbone is not frozen; only its logit scale can learn "
                "(use freeze_backbone=True for the head-only protocol)"
            )
        if not self.check_backbone or backbone is None or not self._data:
            return
        identity = backbone_identity(backbone)
        for split, data in self._data.items():
            if data["backbone"] != identity:
                raise CachedFeaturesError(
                    f"{self.paths[split]}: features come from another backbone than "
                    f"{type(module).__name__}'s (extract them again with its backbone, or pass "
                    "check_backbone=False)"
                )

    def features(self, split: str) -> dict[str, Any]:
        """The loaded contents of a split's file."""
        if split not in self._data:
            if not self.paths.get(split):
                raise CachedFeaturesError(f"no cached-feature file for split {split!r}")
            self._data[split] = load_features(self.paths[split])  # type: ignore[arg-type]
        return self._data[split]

    def bucket_names(self, split: str) -> list[str]:
        """Length-bucket names of a split (as the DiDeMo DataModule named them)."""
        return list(self.features(split)["bucket_names"])

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = CachedFeatureDataset(self.features(split))
        if train:
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                shuffle=True,
                generator=torch.Generator().manual_seed(self.seed),
                drop_last=len(dataset) >= 2 * self.batch_size,
                num_workers=self.num_workers,
                collate_fn=collate_cached,
            )
        return DataLoader(
            dataset,
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_cached,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", train=False)


# ---------------------------------------------------------------------------------- CLI


def build_parser():
    """``tvrbench extract-features``: a DiDeMo data config (``--config configs/data/*.yaml``)
    and a backbone (``--clip``, ``--clip_checkpoint``) → one feature file per split."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from tvrbench.data.datamodule import DiDeMoDataModule

    parser = ArgumentParser(
        prog="tvrbench extract-features",
        description="Cache frozen-CLIP features of a dataset's splits (FAST PROTOCOL: head-only "
        "training with tvrbench.features.CachedFeatureDataModule; not comparable to fine-tuned "
        "numbers).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a configs/data/*.yaml file")
    parser.add_subclass_arguments(DiDeMoDataModule, "data", required=True)
    parser.add_argument("--clip", type=str, default="tiny", help="tiny | folder | cached hub id")
    parser.add_argument(
        "--clip_checkpoint", type=str | None, default=None, help="CLIP state dict (.pt) to load"
    )
    parser.add_argument("--out_dir", type=str, required=True, help="folder of the feature files")
    parser.add_argument("--splits", type=list[str], default=list(SPLITS))
    parser.add_argument("--batch_size", type=int, default=32, help="videos per backbone batch")
    parser.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda")
    parser.add_argument("--force", type=bool, default=False, help="recompute existing files")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tvrbench extract-features``; prints the files and a ``fit`` command."""
    import sys

    from tvrbench.data.datamodule import DataSetupError
    from tvrbench.device import resolve_device
    from tvrbench.retrieval import load_backbone

    parser = build_parser()
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    prog = "tvrbench extract-features"
    bad = [s for s in cfg.splits if s not in SPLITS]
    if bad:
        print(f"{prog}: --splits: unknown {bad}; expected some of {list(SPLITS)}", file=sys.stderr)
        return 2
    datamodule = parser.instantiate_classes(cfg).data
    try:
        backbone = load_backbone(cfg.clip, cfg.clip_checkpoint)
        backbone.requires_grad_(False).to(resolve_device(cfg.device))
        paths = {
            split: extract_features(
                backbone, datamodule, split, cfg.out_dir, batch_size=cfg.batch_size, force=cfg.force
            )
            for split in cfg.splits
        }
    except (CachedFeaturesError, DataSetupError, OSError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    for split, path in paths.items():
        print(f"{split}: {path}")
    model_args = "--model.freeze_backbone true"
    if cfg.clip_checkpoint:
        model_args += f" --model.clip_checkpoint {cfg.clip_checkpoint}"
    data_args = " ".join(f"--data.{split}_path {path}" for split, path in paths.items())
    print(
        "FAST PROTOCOL (frozen backbone; not comparable to fine-tuned numbers). Train a head:\n"
        f"  tvrbench fit --config configs/method/<method>.yaml --model.clip {cfg.clip} "
        f"{model_args} --data tvrbench.features.CachedFeatureDataModule {data_args}"
    )
    return 0


__all__ = [
    "BATCH_KEYS",
    "CachedFeatureDataModule",
    "CachedFeatureDataset",
    "CachedFeaturesError",
    "CachedFeaturesUnsupportedError",
    "backbone_identity",
    "check_cached_protocol",
    "collate_cached",
    "data_settings",
    "extract_features",
    "feature_key",
    "load_features",
    "main",
]
