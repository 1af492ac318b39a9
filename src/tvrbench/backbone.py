"""CLIP backbone shared by every method (SPEC §1).

One loading path for everything: a Hugging Face hub id (``openai/clip-vit-base-patch32``), a
local directory written by ``save_pretrained``, or ``"tiny"`` — a small random CLIP built in code
with an offline word-level tokenizer (vocabulary: :mod:`tvrbench.vocabulary`), used by the tests
and by the built-in synthetic benchmark.

Hub conventions: a hub id is resolved like ``transformers`` resolves it, from the Hugging Face
cache and, when online, from the Hub. With ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set,
nothing is downloaded (``local_files_only=True`` is passed explicitly: ``huggingface_hub`` reads
those variables once, at import, so one set later in the process would otherwise be ignored).
Weights that cannot be found raise :class:`BackboneNotFoundError`, one line naming where they
were looked for and the ``hf download <id>`` command that puts them there. A loaded model is in
training mode, like a freshly built one (``from_pretrained`` returns it in evaluation mode).

Outputs (D = projection width):

* text: sentence embedding ``[B, D]`` (projected end-of-text token), word embeddings ``[B, L, D]``
  (final layer norm at every position, then the text projection) and the word mask ``[B, L]``;
* video: frame embeddings ``[B, N, D]`` (projected class token of every frame); padded frames are
  not encoded and come back as zeros.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tvrbench.vocabulary import PUNCTUATION, TINY_WORDS

TINY = "tiny"
REAL_CLIP = "openai/clip-vit-base-patch32"
BOS, EOS, PAD, UNK = "<|startoftext|>", "<|endoftext|>", "<|pad|>", "<|unk|>"
LOGIT_SCALE_MAX = 100.0
#: CLIP's input layers, by their ``transformers`` parameter-name prefixes: the token and position
#: embeddings of the text tower; the class embedding, patch convolution, position embedding and
#: pre-LayerNorm of the vision tower. The official X-CLIP, GLCCL, CLIP4Clip and CenterCLIP
#: training scripts freeze exactly these at ``--freeze_layer_num 0`` (everything not in a
#: residual block, the final norms, the projections or the logit scale; e.g. X-CLIP
#: main_xclip.py lines 443-459).
CLIP_INPUT_LAYERS = (
    "text_model.embeddings.token_embedding.",
    "text_model.embeddings.position_embedding.",
    "vision_model.embeddings.class_embedding",
    "vision_model.embeddings.patch_embedding.",
    "vision_model.embeddings.position_embedding.",
    "vision_model.pre_layrnorm.",  # transformers' spelling of CLIP's ln_pre
)
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's spelling of a true variable
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


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
    """Words of the synthetic DiDeMo-format generator (the tiny tokenizer's vocabulary,
    :data:`tvrbench.vocabulary.TINY_WORDS`)."""
    return list(TINY_WORDS)


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
        return AutoTokenizer.from_pretrained(name_or_path, **hub_kwargs())
    except (OSError, ValueError) as err:
        raise BackboneNotFoundError(_missing_message(name_or_path, "tokenizer", err)) from err


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


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value, now."""
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in OFFLINE_VARIABLES)


def hub_kwargs() -> dict[str, Any]:
    """``from_pretrained`` keywords for the hub: ``local_files_only=True`` only when offline."""
    return {"local_files_only": True} if hub_offline() else {}


def _hub_cache() -> str:
    """The Hugging Face cache folder in use (``huggingface_hub`` fixes it at import)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return os.environ.get("HF_HUB_CACHE") or "~/.cache/huggingface/hub"


def _missing_message(name_or_path: str, what: str, err: BaseException | None = None) -> str:
    """One line: what was missing, where it was looked for, how to put it there."""
    is_dir = Path(name_or_path).is_dir()
    hub_id = name_or_path if not is_dir and _HUB_ID.match(name_or_path) else REAL_CLIP
    if hub_offline():
        flags = [v for v in OFFLINE_VARIABLES if os.environ.get(v, "").strip().upper() in _TRUE]
        online = f"offline ({'/'.join(flags)} set, nothing downloaded)"
    else:
        online = "then on the Hub (no such repository, or no connection)"
    local = "in that local directory" if is_dir else "for a local directory of that name"
    cause = f" [{type(err).__name__}]" if err is not None else ""
    message = (
        f"CLIP {what} not found for {name_or_path!r}: looked {local} and for the hub id in the "
        f"Hugging Face cache ({_hub_cache()}), {online}{cause}. Put them there with "
        f"`hf download {hub_id}` on a machine with internet (then copy the cache), or pass a "
        f"directory written by `CLIPModel.save_pretrained` and the tokenizer's `save_pretrained`."
    )
    return " ".join(message.split())


def load_clip_model(name_or_path: str, attn_implementation: str = "sdpa"):
    """Load a ``CLIPModel``: ``"tiny"`` (built in code), a local directory, or a hub id (the
    local cache, and the Hub when not offline). The model comes back in training mode."""
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
        model = CLIPModel.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, **hub_kwargs()
        )
    except (OSError, ValueError) as err:
        raise BackboneNotFoundError(_missing_message(name_or_path, "weights", err)) from err
    # from_pretrained returns the model in eval mode; a backbone that is fine-tuned must start in
    # training mode like every other module (Lightning switches modes for validation itself).
    return model.train()


VIT_B32_TEXT = dict(
    vocab_size=49408,
    hidden_size=512,
    intermediate_size=2048,
    num_hidden_layers=12,
    num_attention_heads=8,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=512,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=1,
)
VIT_B32_VISION = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    image_size=224,
    patch_size=32,
    hidden_act="quick_gelu",
    projection_dim=512,
)
_SAVED_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")


def build_vit_b32_model(seed: int = 0, attn_implementation: str = "sdpa"):
    """A random-initialised ``CLIPModel`` with the exact ViT-B/32 architecture, in memory
    (about 151 M parameters; see :func:`build_vit_b32_random` for the sizes)."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config=VIT_B32_TEXT, vision_config=VIT_B32_VISION, projection_dim=512)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return CLIPModel(config)


def build_vit_b32_random(
    directory: str | Path, tokenizer: str | Path, seed: int = 0, overwrite: bool = False
) -> Path:
    """Write a random-initialised ``CLIPModel`` with the exact ViT-B/32 architecture
    (``openai/clip-vit-base-patch32``: text 512 wide, 12 layers, 8 heads, MLP 2048, 77 positions,
    vocabulary 49408; vision 768 wide, 12 layers, 12 heads, MLP 3072, 224 px, 32-px patches;
    projection 512) and the real CLIP tokenizer to ``directory`` with ``save_pretrained``, so that
    ``ClipBackbone.from_pretrained(str(directory))`` loads it through the real path.

    For real-architecture tests without the pretrained weights (about 600 MB on disk, float32).
    An existing complete folder is reused unless ``overwrite``; a new one is written under a
    temporary name and moved into place, so an interrupted call leaves no half-written folder.

    Args:
        directory: destination folder.
        tokenizer: a folder with the CLIP BPE files (``vocab.json`` + ``merges.txt``) or a saved
            CLIP tokenizer, e.g. the project's ``shared/clip-tokenizer``.
        seed: seed of the random initialisation.
        overwrite: rewrite even if ``directory`` already holds a complete model.
    Returns:
        ``directory`` as a ``Path``.
    """
    directory = Path(directory)
    if not overwrite and all((directory / name).is_file() for name in _SAVED_FILES):
        return directory
    tok = load_tokenizer(str(tokenizer))
    model = build_vit_b32_model(seed)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


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
        """Build from ``"tiny"``, a local directory or a hub id (see :func:`load_clip_model`), in
        training mode. ``eager_attention`` makes attention visible to FLOP counters (SDPA is
        not)."""
        impl = "eager" if eager_attention else "sdpa"
        return cls(load_clip_model(name_or_path, attn_implementation=impl))

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Turn transformers' gradient checkpointing of every CLIP layer (text and vision
        towers) on or off, non-reentrant. A checkpointed layer keeps only its input for the
        backward pass and runs again there; it checkpoints whoever calls it (CenterCLIP's own
        vision path included) while the model is training with gradients enabled."""
        clip = self.clip
        if enabled:
            kwargs = {"use_reentrant": False}
            if hasattr(clip, "activation_checkpointing_enable"):  # transformers >= 5.x names
                clip.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                clip.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        elif hasattr(clip, "activation_checkpointing_disable"):
            clip.activation_checkpointing_disable()
        else:
            clip.gradient_checkpointing_disable()

    @property
    def activation_checkpointing(self) -> bool:
        """Whether the CLIP layers are checkpointed."""
        return any(
            bool(getattr(m, "gradient_checkpointing", False))
            for m in self.clip.modules()
            if m is not self.clip
        )

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
        """``exp(logit_scale)`` (scalar). Not clamped here: as in the official code, the
        parameter itself is clamped after each optimizer step (:meth:`clamp_logit_scale_`), so
        the gradient at the cap is the plain one, not zero."""
        return self.clip.logit_scale.exp()

    @torch.no_grad()
    def clamp_logit_scale_(self) -> None:
        """Clamp the logit-scale parameter in place to at most ``ln 100`` (the official code's
        ``torch.clamp_(clip.logit_scale.data, max=np.log(100))`` after ``optimizer.step()``)."""
        self.clip.logit_scale.clamp_(max=math.log(LOGIT_SCALE_MAX))

    def freeze_input_layers(self) -> list[str]:
        """Freeze :data:`CLIP_INPUT_LAYERS` (``requires_grad=False``); returns the names frozen."""
        frozen = []
        for name, param in self.clip.named_parameters():
            if name.startswith(CLIP_INPUT_LAYERS):
                param.requires_grad_(False)
                frozen.append(name)
        return frozen

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
