"""Random inputs shared by the head tests (imported by test modules, not a test itself)."""

from __future__ import annotations

import torch

from tvrbench.backbone import TextFeatures


def text_features(sentence: torch.Tensor) -> TextFeatures:
    """Text features carrying only a sentence embedding ``[Bt, D]`` (one word: itself)."""
    bt = sentence.shape[0]
    return TextFeatures(
        sentence=sentence, words=sentence[:, None], word_mask=torch.ones(bt, 1, dtype=torch.bool)
    )


def random_frames(bv: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Bv, N, D]`` frames with random real lengths (the first video full), padding zeroed,
    and the ``[Bv, N]`` frame mask."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(bv, n, d, generator=g)
    lengths = torch.randint(1, n + 1, (bv,), generator=g)
    lengths[0] = n
    mask = torch.arange(n)[None, :] < lengths[:, None]  # (Bv, N)
    return frames * mask[..., None], mask
