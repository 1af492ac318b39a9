"""Pretraining of the tiny CLIP on frame–sentence pairs: the built-in stand-in for pretrained CLIP.

Real runs start every method from the same pretrained CLIP. The built-in synthetic benchmark uses
a tiny random CLIP, which would otherwise have to learn vision and language from scratch inside
each method's short budget. So, once per dataset, the tiny CLIP is trained contrastively on single
(frame, sentence) pairs drawn from the TRAINING split: every description is paired with a frame
sampled inside its annotated moment (``times``, 5-second chunks). The state dict is cached and
shared by every method and every later run (``RetrievalModule(clip_checkpoint=...)``).
No validation or test data is touched.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from tvrbench.backbone import TINY, ClipBackbone, load_tokenizer
from tvrbench.data.video import normalize_frames
from tvrbench.retrieval import symmetric_infonce, warmup_cosine

CHUNK_S = 5.0  # DiDeMo's annotation unit


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the tiny-CLIP pretraining (all part of the cache key).

    Attributes:
        minutes: wall-clock budget of the optimisation loop.
        max_steps: upper bound on optimizer steps.
        batch_size: (frame, sentence) pairs per step.
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


def pretrain_tiny_clip(
    frames: Sequence[np.ndarray],
    frame_times_s: Sequence[np.ndarray],
    moments: Sequence[Sequence[tuple[str, Sequence]]],
    out_path: str | Path,
    config: PretrainConfig | None = None,
    progress: bool = True,
) -> Path:
    """Train the tiny CLIP contrastively on (frame, sentence) pairs and save its state dict.

    Args:
        frames: per training video, uint8 ``[n, S, S, 3]`` sampled frames.
        frame_times_s: per video, ``[n]`` sample times in seconds.
        moments: per video, its ``(description, times)`` pairs.
        out_path: where the ``CLIPModel`` state dict is written (atomically).
        config: settings; defaults to :class:`PretrainConfig`.
        progress: show a progress bar.
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
    torch.manual_seed(config.seed)
    backbone = ClipBackbone.from_pretrained(TINY).train()
    tokenizer = load_tokenizer(TINY)
    sentences = sorted({p.sentence for p in pairs})
    sentence_id = {s: i for i, s in enumerate(sentences)}
    tokens = tokenizer(
        sentences,
        padding="max_length",
        truncation=True,
        max_length=config.max_words,
        return_tensors="pt",
    )
    pair_video = torch.tensor([p.video for p in pairs])
    pair_frame = torch.tensor([p.frame for p in pairs])
    pair_sentence = torch.tensor([sentence_id[p.sentence] for p in pairs])

    optimizer = torch.optim.AdamW(
        backbone.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    warmup = max(1, int(0.05 * config.max_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, config.max_steps, warmup)
    )
    generator = torch.Generator().manual_seed(config.seed)
    deadline = time.monotonic() + 60.0 * config.minutes
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, desc="pretrain tiny CLIP", unit="step")
    step, order, cursor = 0, torch.randperm(len(pairs), generator=generator), 0
    while step < config.max_steps and time.monotonic() < deadline:
        if cursor + config.batch_size > len(order):
            order, cursor = torch.randperm(len(pairs), generator=generator), 0
        batch = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        # One pair per sentence text in the batch: identical sentences would be false negatives.
        _, first = np.unique(pair_sentence[batch].numpy(), return_index=True)
        batch = batch[torch.from_numpy(np.sort(first))]
        images = np.stack([frames[v][f] for v, f in zip(pair_video[batch], pair_frame[batch])])
        pixels = normalize_frames(torch.from_numpy(images))  # (B, 3, S, S)
        ids = tokens.input_ids[pair_sentence[batch]]
        mask = tokens.attention_mask[pair_sentence[batch]]
        image_emb = torch.nn.functional.normalize(backbone.encode_images(pixels), dim=-1)
        text_emb = torch.nn.functional.normalize(backbone.encode_text(ids, mask).sentence, dim=-1)
        loss = symmetric_infonce(backbone.logit_scale() * text_emb @ image_emb.t())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    if bar is not None:
        bar.close()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(f".tmp{os.getpid()}")
    torch.save(backbone.clip.state_dict(), tmp)
    os.replace(tmp, out_path)
    meta: dict[str, object] = {"steps": step, "pairs": len(pairs), "final_loss": float(loss.item())}
    meta["config"] = asdict(config)
    meta["chance_loss"] = math.log(config.batch_size)
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
    return out_path
