"""Batches in the contract's format for modules on the tiny CLIP (imported by test modules, not a
test itself)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: The tiny CLIP's frame side (pixels) and its special token ids.
IMAGE_SIZE = 32
PAD, START, END = 0, 2, 3


def tiny_batch(
    bsz: int,
    n_frames: int,
    seed: int = 0,
    vocab: int = 51,
    words: int = 8,
    word_lengths: Sequence[int] | None = None,
    frame_lengths: Sequence[int] | None = None,
    uint8: bool = False,
) -> dict[str, torch.Tensor]:
    """A seeded batch of ``bsz`` paragraphs and videos.

    Tokens ``input_ids [B, L]``: start, random ids in ``[4, vocab)``, end at each text's length,
    zero padding after it (``attention_mask`` 1 up to the length). Frames: ``uint8`` ``[B, N, S,
    S, 3]`` as the loader yields them, else normalised float ``[B, N, 3, S, S]`` as the module
    sees them after ``on_after_batch_transfer``; padded frames zero. Lengths: as given, else drawn
    (texts of 3 to ``words`` tokens; videos of 1 to ``n_frames`` frames, the first video full).
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (bsz, words), generator=g)
    if word_lengths is None:
        lengths = torch.randint(3, words + 1, (bsz,), generator=g)
    else:
        lengths = torch.tensor(word_lengths)[:bsz]
    pos = torch.arange(words)[None, :]
    ids[:, 0] = START
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, END), ids)
    ids = torch.where(pos >= lengths[:, None], torch.full_like(ids, PAD), ids)
    if frame_lengths is None:
        n_real = torch.randint(1, n_frames + 1, (bsz,), generator=g)
        n_real[0] = n_frames
    else:
        n_real = torch.tensor(frame_lengths)[:bsz]
    frame_mask = torch.arange(n_frames)[None, :] < n_real[:, None]  # (B, N)
    s = IMAGE_SIZE
    if uint8:
        shape = (bsz, n_frames, s, s, 3)
        frames = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
    else:
        frames = torch.randn(bsz, n_frames, 3, s, s, generator=g)
    return {
        "input_ids": ids,
        "attention_mask": (pos < lengths[:, None]).long(),
        "frames": frames * frame_mask[..., None, None, None],
        "frame_mask": frame_mask,
        "index": torch.arange(bsz),
        "bucket": torch.zeros(bsz, dtype=torch.long),
    }
