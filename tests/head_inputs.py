"""Random inputs shared by the head tests (imported by test modules, not a test itself)."""

from __future__ import annotations

from typing import Any

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


#: Every method on the tiny CLIP at test sizes: name → its model section (module class path and
#: ``init_args``, the head as ``{class_path, init_args}``), as a method config writes it.
TINY_METHODS: dict[str, dict[str, Any]] = {
    "meanp": {"head": ("baselines.meanp.MeanPHead", {})},
    "xpool": {"head": ("baselines.xpool.XPoolHead", {})},
    "centerclip": {
        "class_path": "baselines.centerclip.CenterCLIPModule",
        "head": ("baselines.meanp.MeanPHead", {}),
        "init_args": {"num_segments": 2, "start_block": 2},
    },
    "xclip": {"head": ("baselines.xclip.XCLIPHead", {"max_words": 16, "max_frames": 8})},
    "glscl": {"head": ("baselines.glscl.GLSCLHead", {"max_frames": 8, "ffn_dim": 64})},
    "glccl": {"head": ("tvrbench.glccl.GLCCLHead", {"max_words": 16, "max_frames": 8})},
}


def tiny_model_section(name: str, **overrides: Any) -> dict[str, Any]:
    """Method ``name``'s model section on the tiny CLIP; each override goes to the head where the
    head class takes it (``mask_padding``, ``max_frames``, ...), else to the module."""
    from tvrbench.methods import accepted_arguments, class_of

    spec = TINY_METHODS[name]
    head_path, head_args = spec["head"]
    head_args = dict(head_args)
    module_args = {"clip": "tiny", **spec.get("init_args", {})}
    takes = accepted_arguments(class_of(head_path)) - {"dim"}
    for key, value in overrides.items():
        (head_args if key in takes else module_args)[key] = value
    return {
        "class_path": spec.get("class_path", "tvrbench.retrieval.RetrievalModule"),
        "init_args": {"head": {"class_path": head_path, "init_args": head_args}, **module_args},
    }


def tiny_method(name: str, seed: int = 0, **overrides: Any):
    """A freshly initialised module of method ``name`` on the tiny CLIP (seeded)."""
    from tvrbench.methods import build_module

    model = tiny_model_section(name, **overrides)
    torch.manual_seed(seed)
    return build_module(model)
