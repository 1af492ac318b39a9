"""Pretraining of the tiny CLIP on frame–sentence pairs: the built-in stand-in for pretrained CLIP.

Real runs start every method from the same pretrained CLIP. The built-in synthetic benchmark uses
a tiny random CLIP, which would otherwise have to learn vision and language from scratch inside
each method's short budget. So, once per dataset, the tiny CLIP is trained contrastively on single
(frame, sentence) pairs drawn from the TRAINING split: every description is paired with a frame
sampled inside its annotated moment (``times``, 5-second chunks). The state dict is cached and
shared by every method and every later run (``RetrievalModule(clip_checkpoint=...)``).
No validation or test data is touched.

The optimisation is a :class:`TinyClipPretraining` LightningModule fitted by a Lightning
``Trainer`` (device, gradient clipping, time and step budgets, seeding); checkpointing and logging
are off, so the only files written are the state dict and its ``.json`` meta.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tvrbench.atomic import atomic_torch_save, atomic_write_json
from tvrbench.backbone import TINY, ClipBackbone, load_tokenizer
from tvrbench.data.video import normalize_frames
from tvrbench.retrieval import symmetric_infonce, warmup_cosine

CHUNK_S = 5.0  # DiDeMo's annotation unit


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the tiny-CLIP pretraining (all part of the cache key).

    Attributes:
        minutes: wall-clock budget of the optimisation (Trainer ``max_time``).
        max_steps: upper bound on optimizer steps (Trainer ``max_steps``).
        batch_size: (frame, sentence) pairs drawn per step, before keeping one pair per sentence.
        lr: peak AdamW learning rate (warm-up 5 %, cosine decay over max_steps).
        weight_decay: AdamW weight decay.
        max_words: token length (as the DataModule).
        seed: seed of the model init and the pair order.
    """

    minutes: float = 2.0
    max_steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    max_words: int = 32
    seed: int = 0


@dataclass(frozen=True)
class MomentPair:
    """One training pair: frame ``frame`` of video ``video`` and sentence ``sentence``."""

    video: int
    frame: int
    sentence: str


def moment_frame_indices(times_s: np.ndarray, chunk_pairs: Sequence[Sequence[int]]) -> list[int]:
    """Indices of the sampled frames that fall inside a description's moment.

    The moment is the annotators' consensus: the most common ``(start, end)`` chunk pair
    (ties → the first), covering ``[5·start, 5·(end + 1))`` seconds.

    Args:
        times_s: ``[n]`` sample times of the video's frames, seconds.
        chunk_pairs: the annotators' ``[start, end]`` chunk indices.
    """
    pairs = [tuple(int(x) for x in p) for p in chunk_pairs]
    start, end = max(pairs, key=pairs.count) if pairs else (0, 0)
    lo_s, hi_s = CHUNK_S * start, CHUNK_S * (end + 1)
    return [int(i) for i in np.flatnonzero((times_s >= lo_s) & (times_s < hi_s))]


def build_pairs(
    frame_times_s: Sequence[np.ndarray], moments: Sequence[Sequence[tuple[str, Sequence]]]
) -> list[MomentPair]:
    """Every (frame inside the moment, sentence) pair of every video, in a fixed order."""
    pairs: list[MomentPair] = []
    for v, (times_s, video_moments) in enumerate(zip(frame_times_s, moments)):
        for sentence, chunk_pairs in video_moments:
            for f in moment_frame_indices(np.asarray(times_s), chunk_pairs):
                pairs.append(MomentPair(v, f, sentence))
    return pairs


def cache_key(config: PretrainConfig, data_identity: dict) -> str:
    """A short hash of the config and the training data's identity."""
    blob = json.dumps({"config": asdict(config), "data": data_identity}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


WARMUP_FRAC = 0.05  # share of max_steps spent in linear warm-up
GRAD_CLIP_NORM = 1.0


class DistinctSentenceBatches(Sampler[list[int]]):
    """Batches of pair indices for ``num_batches`` steps, one pair per sentence text per batch.

    The pairs are walked in a random order (reshuffled once fewer than ``batch_size`` remain);
    each slice of ``batch_size`` keeps the first pair of every sentence it holds, since two pairs
    with the same text would be false negatives of each other in the contrastive loss. The
    order depends only on ``seed``, so every iteration yields the same batches.

    Args:
        pair_sentence: ``[P]`` sentence id of every pair.
        batch_size: pairs drawn per batch (a batch holds at most that many).
        num_batches: batches per iteration.
        seed: seed of the order.
    """

    def __init__(self, pair_sentence: Tensor, batch_size: int, num_batches: int, seed: int) -> None:
        self.pair_sentence = pair_sentence
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        n = len(self.pair_sentence)
        generator = torch.Generator().manual_seed(self.seed)
        order, cursor = torch.randperm(n, generator=generator), 0
        for _ in range(self.num_batches):
            if cursor + self.batch_size > n:
                order, cursor = torch.randperm(n, generator=generator), 0
            batch = order[cursor : cursor + self.batch_size]  # (b,)
            cursor += self.batch_size
            _, first = np.unique(self.pair_sentence[batch].numpy(), return_index=True)
            yield batch[torch.from_numpy(np.sort(first))].tolist()


class MomentPairDataset(Dataset):
    """(frame, tokenised sentence) pairs, fetched a whole batch at a time.

    Indexed by a LIST of pair indices (the DataLoader's ``sampler`` yields batches and
    ``batch_size=None``), so a batch is one stacking of frames rather than ``B`` collations.

    Args:
        frames: per video, uint8 ``[n, S, S, 3]`` frames.
        pairs: the pairs (see :func:`build_pairs`).
        input_ids: ``[T, W]`` token ids of the ``T`` distinct sentences.
        attention_mask: ``[T, W]`` their masks.
        sentence_id: sentence text → row of ``input_ids``.
    """

    def __init__(
        self,
        frames: Sequence[np.ndarray],
        pairs: Sequence[MomentPair],
        input_ids: Tensor,
        attention_mask: Tensor,
        sentence_id: dict[str, int],
    ) -> None:
        self.frames = frames
        self.pairs = pairs
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.pair_sentence = torch.tensor([sentence_id[p.sentence] for p in pairs])  # (P,)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, indices: list[int]) -> dict[str, Tensor]:  # type: ignore[override]
        """``{"frames": uint8 [B, S, S, 3], "input_ids": [B, W], "attention_mask": [B, W]}``."""
        images = np.stack([self.frames[self.pairs[i].video][self.pairs[i].frame] for i in indices])
        rows = self.pair_sentence[indices]  # (B,)
        return {
            "frames": torch.from_numpy(images),
            "input_ids": self.input_ids[rows],
            "attention_mask": self.attention_mask[rows],
        }


class TinyClipPretraining(L.LightningModule):
    """Contrastive (frame, sentence) training of a CLIP backbone: symmetric InfoNCE over a batch.

    Args:
        backbone: the CLIP to train (its ``clip`` state dict is what the pretraining saves).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay (on every parameter).
        max_steps: length of the schedule: linear warm-up over ``warmup_frac`` of it, then cosine
            decay to 0 (:func:`tvrbench.retrieval.warmup_cosine`).
        warmup_frac: share of ``max_steps`` spent warming up (at least one step).
    """

    def __init__(
        self,
        backbone: ClipBackbone,
        lr: float = 2e-3,
        weight_decay: float = 0.05,
        max_steps: int = 600,
        warmup_frac: float = WARMUP_FRAC,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_steps = max_steps
        self.warmup_steps = max(1, int(warmup_frac * max_steps))
        self.last_loss: Tensor | None = None
        self.last_batch_size = 0

    def model_step(self, batch: dict[str, Tensor]) -> Tensor:
        """Symmetric InfoNCE of a batch (see :class:`MomentPairDataset` for its layout)."""
        pixels = normalize_frames(batch["frames"])  # (B, 3, S, S)
        image_emb = torch.nn.functional.normalize(self.backbone.encode_images(pixels), dim=-1)
        text = self.backbone.encode_text(batch["input_ids"], batch["attention_mask"])
        text_emb = torch.nn.functional.normalize(text.sentence, dim=-1)  # (B, D)
        logits = self.backbone.logit_scale() * text_emb @ image_emb.t()  # (B, B)
        return symmetric_infonce(logits)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model_step(batch)
        self.last_loss = loss.detach()
        self.last_batch_size = int(batch["frames"].shape[0])
        self.log("train/loss", loss, prog_bar=True, logger=False, batch_size=self.last_batch_size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step: clamp the logit scale as the official code does."""
        self.backbone.clamp_logit_scale_()

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.backbone.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: warmup_cosine(s, self.max_steps, self.warmup_steps)
        )
        schedule = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": schedule}


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info lines (device summary, time limit) and its advice warnings
    (e.g. "few DataLoader workers": the frames are in memory, workers would only copy them)."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=PossibleUserWarning)
        # Lightning 2.6 on recent PyTorch, once per fit; nothing the caller can act on.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def pretrain_tiny_clip(
    frames: Sequence[np.ndarray],
    frame_times_s: Sequence[np.ndarray],
    moments: Sequence[Sequence[tuple[str, Sequence]]],
    out_path: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
    accelerator: str = "cpu",
) -> Path:
    """Train the tiny CLIP contrastively on (frame, sentence) pairs and save its state dict.

    Args:
        frames: per training video, uint8 ``[n, S, S, 3]`` sampled frames.
        frame_times_s: per video, ``[n]`` sample times in seconds.
        moments: per video, its ``(description, times)`` pairs.
        out_path: where the ``CLIPModel`` state dict is written (atomically); the meta
            (steps, pairs, final loss, chance loss, config) goes to ``out_path`` with ``.json``.
        config: settings; defaults to :class:`PretrainConfig`.
        progress: show Lightning's progress bar.
        accelerator: Lightning accelerator (``"cpu"``, ``"cuda"``, ``"auto"``, ...), one device.
    Returns:
        ``out_path``. An existing file is reused as is.
    """
    out_path = Path(out_path)
    if out_path.exists():
        return out_path
    config = config or PretrainConfig()
    pairs = build_pairs(frame_times_s, moments)
    if not pairs:
        raise ValueError("pretraining found no (frame, sentence) pair in the training split")
    L.seed_everything(config.seed, verbose=False)
    backbone = ClipBackbone.from_pretrained(TINY).train()
    tokenizer = load_tokenizer(TINY)
    sentences = sorted({p.sentence for p in pairs})
    tokens = tokenizer(
        sentences,
        padding="max_length",
        truncation=True,
        max_length=config.max_words,
        return_tensors="pt",
    )
    dataset = MomentPairDataset(
        frames,
        pairs,
        tokens.input_ids,
        tokens.attention_mask,
        {s: i for i, s in enumerate(sentences)},
    )
    batches = DistinctSentenceBatches(
        dataset.pair_sentence, config.batch_size, config.max_steps, config.seed
    )
    loader = DataLoader(dataset, sampler=batches, batch_size=None)
    module = TinyClipPretraining(
        backbone, lr=config.lr, weight_decay=config.weight_decay, max_steps=config.max_steps
    )
    with _quiet_lightning():
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=1,  # one pass of the sampler = max_steps batches
            max_steps=config.max_steps,
            max_time=timedelta(minutes=config.minutes),
            gradient_clip_val=GRAD_CLIP_NORM,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress,
            num_sanity_val_steps=0,
            default_root_dir=out_path.parent,
        )
        trainer.fit(module, train_dataloaders=loader)
    if module.last_loss is None:
        raise RuntimeError("pretraining ran no step (time budget too small?)")
    meta: dict[str, object] = {
        "steps": int(trainer.global_step),
        "pairs": len(pairs),
        "final_loss": float(module.last_loss.item()),
        "config": asdict(config),
        "chance_loss": math.log(config.batch_size),
        "final_batch_size": module.last_batch_size,
        "final_chance_loss": math.log(module.last_batch_size),
        "accelerator": accelerator,
    }
    # The meta first: the .pt's presence is what marks a finished pretraining.
    atomic_write_json(out_path.with_suffix(".json"), meta)
    atomic_torch_save(backbone.clip.cpu().state_dict(), out_path)
    return out_path
