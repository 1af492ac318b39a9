"""CLIP backbone shared by every method (SPEC §1).

One loading path for everything: a Hugging Face hub id resolved from the local cache
(``openai/clip-vit-base-patch32``), a local directory written by ``save_pretrained``, or
``"tiny"`` — a small random CLIP built in code with an offline word-level tokenizer, used by the
tests and by the built-in synthetic benchmark.

Outputs (D = projection width):

* text: sentence embedding ``[B, D]`` (projected end-of-text token), word embeddings ``[B, L, D]``
  (final layer norm at every position, then the text projection) and the word mask ``[B, L]``;
* video: frame embeddings ``[B, N, D]`` (projected class token of every frame); padded frames are
  not encoded and come back as zeros.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

TINY = "tiny"
REAL_CLIP = "openai/clip-vit-base-patch32"
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
LOGIT_SCALE_MAX = 100.0
PUNCTUATION = [".", ",", "!", "?", "'", "-"]


class BackboneNotFoundError(FileNotFoundError):
    """CLIP weights or tokenizer files could not be found locally."""


@dataclass
class TextFeatures:
    """Per-text outputs of the text tower.

    Attributes:
        sentence: ``[B, D]`` projected end-of-text embedding.
        words: ``[B, L, D]`` projected embedding at every token position.
        word_mask: ``[B, L]`` bool, True for real tokens (start/end tokens included).
    """

    sentence: Tensor
    words: Tensor
    word_mask: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        return {"sentence": self.sentence, "words": self.words, "word_mask": self.word_mask}


# ----------------------------------------------------------------------------------- tokenizer


def default_vocabulary() -> list[str]:
    """Words of the synthetic DiDeMo-format generator (the tiny tokenizer's vocabulary)."""
    from tvrbench.data.synth import vocabulary

    return vocabulary()


def build_tiny_tokenizer(words: list[str] | None = None, max_length: int = 32):
    """A word-level tokenizer built offline: lower-cased, split on whitespace and punctuation,
    wrapped in start/end-of-text tokens, padded with a pad token. Unknown words map to ``<|unk|>``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(w.lower() for w in (default_vocabulary() if words is None else words)))
    punctuation = [p for p in PUNCTUATION if p not in words]
    vocab = {tok: i for i, tok in enumerate([PAD, UNK, BOS, EOS, *punctuation, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=max_length,
    )


def load_tokenizer(name_or_path: str = TINY):
    """Tokenizer for ``name_or_path``: ``"tiny"``, a directory, or a hub id in the local cache.

    A directory holding only ``vocab.json`` + ``merges.txt`` (the CLIP BPE files) loads as a
    ``CLIPTokenizer``.
    """
    if name_or_path == TINY:
        return build_tiny_tokenizer()
    from transformers import AutoTokenizer, CLIPTokenizer

    path = Path(name_or_path)
    try:
        if path.is_dir() and not (path / "tokenizer_config.json").exists():
            return CLIPTokenizer.from_pretrained(str(path))
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise BackboneNotFoundError(_missing_message(name_or_path, "tokenizer")) from err


# ------------------------------------------------------------------------------------- models


def build_tiny_clip(
    vocab_size: int,
    eos_token_id: int,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
    width: int = 64,
    layers: int = 2,
    heads: int = 2,
    projection_dim: int = 64,
    image_size: int = 32,
    patch_size: int = 8,
    max_words: int = 32,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """A small random-initialised ``CLIPModel`` (about 1 M parameters at the defaults)."""
    from transformers import CLIPConfig, CLIPModel

    text = dict(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=max_words,
        eos_token_id=eos_token_id,
        bos_token_id=bos_token_id,
        pad_token_id=pad_token_id,
        projection_dim=projection_dim,
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=projection_dim,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPModel(config)


def _missing_message(name_or_path: str, what: str) -> str:
    cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return (
        f"CLIP {what} not found for {name_or_path!r}: looked for a local directory of that name "
        f"and "
        f"for the hub id in the Hugging Face cache ({cache}), offline. Put them there with "
        f"`huggingface-cli download {REAL_CLIP}` on a machine with internet (then copy the cache), "
        f"or pass a directory written by `CLIPModel.save_pretrained` + the tokenizer's "
        f"`save_pretrained`."
    )


def load_clip_model(name_or_path: str, attn_implementation: str = "sdpa"):
    """Load a ``CLIPModel`` from a local directory or the local hub cache (never the network)."""
    from transformers import CLIPModel

    if name_or_path == TINY:
        tokenizer = build_tiny_tokenizer()
        return build_tiny_clip(
            vocab_size=len(tokenizer),
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            attn_implementation=attn_implementation,
        )
    try:
        return CLIPModel.from_pretrained(
            name_or_path, local_files_only=True, attn_implementation=attn_implementation
        )
    except (OSError, ValueError) as err:
        raise BackboneNotFoundError(_missing_message(name_or_path, "weights")) from err


# ----------------------------------------------------------------------------------- backbone


class ClipBackbone(nn.Module):
    """Wraps a ``transformers.CLIPModel`` and exposes the embeddings every method needs.

    Args:
        model: the CLIP model (see :func:`load_clip_model`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.clip: Any = model  # transformers.CLIPModel

    @classmethod
    def from_pretrained(cls, name_or_path: str = TINY, eager_attention: bool = False):
        """Build from ``"tiny"``, a local directory or a cached hub id. ``eager_attention`` makes
        attention visible to FLOP counters (SDPA is not)."""
        impl = "eager" if eager_attention else "sdpa"
        return cls(load_clip_model(name_or_path, attn_implementation=impl))

    def set_attention_implementation(self, impl: str) -> None:
        """Switch every sub-config to ``"eager"`` or ``"sdpa"`` in place (e.g. for FLOP counts)."""
        for cfg in (self.clip.config, self.clip.config.text_config, self.clip.config.vision_config):
            cfg._attn_implementation = impl

    @property
    def embed_dim(self) -> int:
        return int(self.clip.config.projection_dim)

    @property
    def image_size(self) -> int:
        return int(self.clip.config.vision_config.image_size)

    @property
    def max_words(self) -> int:
        return int(self.clip.config.text_config.max_position_embeddings)

    def logit_scale(self) -> Tensor:
        """``exp(logit_scale)`` clamped to at most 100 (scalar)."""
        return self.clip.logit_scale.exp().clamp(max=LOGIT_SCALE_MAX)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> TextFeatures:
        """Args: ``input_ids`` and ``attention_mask`` ``[B, L]``. Returns :class:`TextFeatures`."""
        out = self.clip.text_model(input_ids=input_ids, attention_mask=attention_mask)
        proj = self.clip.text_projection
        words = proj(out.last_hidden_state)  # (B, L, D)
        sentence = proj(out.pooler_output)  # (B, D)
        return TextFeatures(sentence=sentence, words=words, word_mask=attention_mask.bool())

    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """``[M, 3, H, W]`` normalised images → ``[M, D]`` projected class-token embeddings."""
        out = self.clip.vision_model(pixel_values=pixel_values)
        return self.clip.visual_projection(out.pooler_output)

    def encode_frames(self, frames: Tensor, frame_mask: Tensor) -> Tensor:
        """Encode every real frame; padded frames are skipped and returned as zeros.

        Args:
            frames: ``[B, N, 3, H, W]`` CLIP-normalised frames.
            frame_mask: ``[B, N]`` bool, True for real frames.
        Returns:
            ``[B, N, D]`` frame embeddings.
        """
        b, n = frame_mask.shape
        flat_mask = frame_mask.reshape(-1)
        emb = self.encode_images(frames.reshape(b * n, *frames.shape[2:])[flat_mask])  # (M, D)
        out = emb.new_zeros(b * n, emb.shape[-1])
        out[flat_mask] = emb
        return out.view(b, n, -1)
