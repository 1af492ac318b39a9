"""Random inputs shared by the head tests (imported by test modules, not a test itself)."""

from __future__ import annotations

import importlib

import torch

from tvrbench.backbone import TextFeatures


def text_features(sentence: torch.Tensor) -> TextFeatures:
    """Text features carrying only a sentence embedding ``[Bt, D]`` (one word: itself)."""
    bt = sentence.shape[0]
    return TextFeatures(
        sentence=sentence, words=sentence[:, None], word_mask=torch.ones(bt, 1, dtype=torch.bool)
    )


def random_text(bt: int, length: int, d: int, seed: int) -> TextFeatures:
    """Text features ``sentence [Bt, D]``, ``words [Bt, L, D]`` with random real lengths (the
    first text full; at least 2 tokens, as CLIP's start and end), padded words zeroed."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (bt,), generator=g)
    lengths[0] = length
    word_mask = torch.arange(length)[None, :] < lengths[:, None]  # (Bt, L)
    words = torch.randn(bt, length, d, generator=g) * word_mask[..., None]
    return TextFeatures(torch.randn(bt, d, generator=g), words, word_mask)


def random_frames(bv: int, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[Bv, N, D]`` frames with random real lengths (the first video full), padding zeroed,
    and the ``[Bv, N]`` frame mask."""
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(bv, n, d, generator=g)
    lengths = torch.randint(1, n + 1, (bv,), generator=g)
    lengths[0] = n
    mask = torch.arange(n)[None, :] < lengths[:, None]  # (Bv, N)
    return frames * mask[..., None], mask


#: Every method on the tiny CLIP at test sizes: name → (module class path, constructor kwargs).
TINY_METHODS = {
    "meanp": ("baselines.meanp.MeanPModule", {}),
    "xpool": ("baselines.xpool.XPoolModule", {}),
    "centerclip": ("baselines.centerclip.CenterCLIPModule", {"num_segments": 2, "start_block": 2}),
    "xclip": ("baselines.xclip.XCLIPModule", {"max_words": 16, "max_frames": 8}),
    "glscl": ("baselines.glscl.GLSCLModule", {"max_frames": 8, "ffn_dim": 64}),
    "glccl": ("tvrbench.glccl.GLCCLModule", {"max_words": 16, "max_frames": 8}),
}


def tiny_method(name: str, seed: int = 0, **overrides):
    """A freshly initialised module of method ``name`` on the tiny CLIP (seeded)."""
    class_path, kwargs = TINY_METHODS[name]
    module_name, cls_name = class_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    torch.manual_seed(seed)
    return cls(clip="tiny", **{**kwargs, **overrides})
