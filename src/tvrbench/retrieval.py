"""The shared retrieval base: a plain ``RetrievalHead`` per method and one LightningModule.

Every method is ``RetrievalModule`` subclass + its ``RetrievalHead``. The module owns the CLIP
backbone, training (symmetric InfoNCE on features all-gathered across DDP ranks, parameter groups,
warm-up + cosine schedule) and evaluation (gather every embedding, undo distributed-sampler
padding, full similarity matrix in memory-bounded chunks, metrics overall and per length bucket).
A head owns only what differs between methods: how a video and a text become scoring states, and
how a (text, video) pair is scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TINY, ClipBackbone, TextFeatures

State = dict[str, Tensor]


class RetrievalHead(nn.Module):
    """Method-specific scoring. See docs/CONTRACTS.md.

    Subclasses implement :meth:`video_state` and :meth:`score`; everything else has defaults.
    """

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → query-independent video state."""
        raise NotImplementedError

    def text_state(self, text: TextFeatures) -> State:
        """Text features → text state (tensors with leading dim Bt)."""
        return text.as_dict()

    def score(self, text: State, video: State) -> Tensor:
        """Unscaled similarity ``[Bt, Bv]``; block-separable over texts and videos."""
        raise NotImplementedError

    def extra_loss(self, text: State, video: State) -> Tensor | None:
        """An additional training loss on the batch (already weighted), or None."""
        return None

    def pair_bytes(self, text: State, video: State) -> int:
        """Peak working bytes per (text, video) pair while scoring; sizes the chunks."""
        return 4 * 8

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per (text, video) pair at scoring time, with the states cached."""
        return dim


def symmetric_infonce(logits: Tensor) -> Tensor:
    """½[CE(S) + CE(Sᵀ)] for a square ``[B, B]`` logit matrix whose diagonal holds the positives."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
