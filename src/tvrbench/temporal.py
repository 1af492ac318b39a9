"""The seqTransf temporal encoder shared by GLCCL, X-CLIP and GLSCL (SPEC §2.4-§2.6).

``v_j = Transformer(f_j + p_j) + f_j`` over a video's frame embeddings ``[B, N, D]``.

Two initialisations (:func:`initialise_temporal`):

* ``identity``: every block starts as the identity (zero last projection of each residual
  branch), positions ``p ~ N(0, 0.02²)``;
* ``clip_text``: the reference's (CLIP4Clip's seqTransf, used by GLCCL, X-CLIP and GLSCL): block
  ``i`` is a copy of CLIP's text-transformer layer ``i`` (``i < layers``), the frame positions are
  the first ``max_frames`` rows of CLIP's text position embedding (77 rows, so N ≤ 77). The text
  tower's causal mask is not used: frames attend to every real frame.

Either way the blocks are the official ones' (``module_cross.py``): QuickGELU in the MLP and
LayerNorm epsilon 1e-12 (:data:`TEMPORAL_ACTIVATION`, :data:`TEMPORAL_LN_EPS`).
"""

from __future__ import annotations

import copy
import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class TemporalShapeError(ValueError):
    """Frame count or width does not fit the temporal encoder (one-line message)."""


# ---------------------------------------------------------------------------------- blocks


class QuickGELU(nn.Module):
    """``x · σ(1.702 x)``, CLIP's activation (transformers' ``quick_gelu``)."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


#: Activations a block can use, by their transformers ``hidden_act`` names.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,  # exact (erf) GELU, PyTorch's and transformers' "gelu"
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
}


#: LayerNorm epsilon of the temporal blocks: the official ``module_cross.py`` of X-CLIP, GLSCL and
#: GLCCL (CLIP4Clip's) builds its blocks from ``until_module.LayerNorm`` (TF style, eps 1e-12),
#: not CLIP's 1e-5, even when their weights are copied from CLIP's text layers.
TEMPORAL_LN_EPS = 1e-12
#: MLP activation of the temporal blocks: the official blocks use QuickGELU whatever the
#: initialisation.
TEMPORAL_ACTIVATION = "quick_gelu"


def make_activation(name: str) -> nn.Module:
    """The activation module called ``name`` (a key of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FrameSelfAttention(nn.Module):
    """Multi-head self-attention over frames with padded frames masked as keys.

    Parameters are laid out as ``nn.MultiheadAttention``'s (``in_proj_weight [3D, D]`` = q, k, v
    stacked, ``in_proj_bias [3D]``, ``out_proj``) so that checkpoints of the earlier
    ``nn.TransformerEncoderLayer`` blocks load unchanged. Attention is computed explicitly (not
    with SDPA) so FLOP counters see it; scale ``1/sqrt(D / heads)``.

    Args:
        dim: width D.
        num_heads: attention heads (must divide D); a plain attribute, so it can be changed after
            construction (the weights do not depend on it).
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention: {num_heads} heads do not divide width {dim}")
        self.dim, self.num_heads = dim, num_heads
        # Creation order and initialisation follow nn.MultiheadAttention exactly, so the same
        # seed gives the same weights as the earlier implementation.
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """``x [B, N, D]``, ``key_mask [B, N]`` bool (True = real frame) → ``[B, N, D]``.

        A row whose keys are all masked attends uniformly instead of producing NaN.
        """
        b, n, d = x.shape
        h = self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        q, k, v = qkv.view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # 3 × (B, H, N, D/H)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)  # (B, H, N, N)
        logits = logits.masked_fill(~key_mask[:, None, None, :], torch.finfo(logits.dtype).min)
        out = logits.softmax(dim=-1) @ v  # (B, H, N, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class TemporalBlock(nn.Module):
    """Pre-LN residual attention block, CLIP's layout (``transformers.CLIPEncoderLayer``):
    ``x + attn(LN₁ x)``, then ``x + fc₂(act(fc₁(LN₂ x)))``. No dropout.

    Names follow ``nn.TransformerEncoderLayer`` (``norm1``, ``self_attn``, ``norm2``,
    ``linear1``, ``linear2``) for checkpoint compatibility; the CLIP names map as
    layer_norm1 → norm1, q/k/v_proj → self_attn.in_proj, self_attn.out_proj → self_attn.out_proj,
    layer_norm2 → norm2, mlp.fc1 → linear1, mlp.fc2 → linear2.

    Args:
        dim: width D.
        num_heads: attention heads.
        hidden: MLP width (4 D).
        activation: a key of :data:`ACTIVATIONS`.
        eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden: int,
        activation: str = TEMPORAL_ACTIVATION,
        eps: float = TEMPORAL_LN_EPS,
    ) -> None:
        super().__init__()
        self.self_attn = FrameSelfAttention(dim, num_heads)
        self.linear1 = nn.Linear(dim, hidden)
        self.linear2 = nn.Linear(hidden, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.activation_name = activation
        self.activation = make_activation(activation)

    def set_activation(self, name: str) -> None:
        """Switch the MLP activation (no parameters involved)."""
        self.activation = make_activation(name)
        self.activation_name = name

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """``x [B, N, D]``, ``key_mask [B, N]`` bool (True = real) → ``[B, N, D]``."""
        x = x + self.self_attn(self.norm1(x), key_mask)
        return x + self.linear2(self.activation(self.linear1(self.norm2(x))))


class TemporalTransformer(nn.Module):
    """A stack of :class:`TemporalBlock` (``layers``), no final norm."""

    def __init__(self, block: TemporalBlock, num_layers: int) -> None:
        super().__init__()
        # Deep copies, as nn.TransformerEncoder makes them: every block starts from the same
        # weights (those that matter differ after clip_text initialisation or the first step).
        self.layers = nn.ModuleList(copy.deepcopy(block) for _ in range(num_layers))
        #: Activation checkpointing of every block while training with gradients: a block keeps
        #: only its input and runs again in the backward pass (non-reentrant).
        self.checkpoint_blocks = False

    @property
    def blocks(self) -> list[TemporalBlock]:
        """The blocks, typed."""
        return cast(list[TemporalBlock], list(self.layers))

    def forward(self, x: Tensor, key_mask: Tensor) -> Tensor:
        """``x [B, N, D]``, ``key_mask [B, N]`` bool (True = real) → ``[B, N, D]``."""
        checkpointed = self.checkpoint_blocks and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if checkpointed:
                x = cast(Tensor, checkpoint(layer, x, key_mask, use_reentrant=False))
            else:
                x = layer(x, key_mask)
        return x


# --------------------------------------------------------------------------------- encoder


def default_heads(dim: int) -> int:
    """``max(1, D // 64)``, lowered to the largest divisor of D not above it."""
    heads = max(1, dim // 64)
    while dim % heads:
        heads -= 1
    return heads


class TemporalEncoder(nn.Module):
    """CLIP4Clip "seqTransf": ``v_j = Transformer(f_j + p_j) + f_j``.

    Pre-LN residual attention blocks in CLIP's layout (:class:`TemporalBlock`; no dropout, no
    final norm), width D, ``max(1, D // 64)`` heads (the largest divisor of D not above it; 8 at
    D = 512, as CLIP's text tower), learned frame position embeddings, padded frames masked as
    attention keys (their own outputs are computed but carry no information into real frames).

    Construction gives the ``identity`` initialisation: the last projection of each residual
    branch (attention ``out_proj`` and the MLP's ``linear2``) starts at zero, so every block is
    the identity and ``v = 2 f + p`` with small ``p`` (std 0.02): the direction of the CLIP
    frame features, so training starts from meanP-like, text-guided pooling of the CLIP features.
    The zero-initialised projections receive gradient from the first step, the other block
    weights from the second. :func:`initialise_temporal` with ``clip_text`` instead copies CLIP's
    text layers and positions (the reference).

    Args:
        dim: feature width D.
        layers: number of transformer blocks.
        max_frames: number of learned positions (N must not exceed it).
        activation: MLP activation (``quick_gelu``, as the official blocks and CLIP's text
            layers; ``clip_text`` initialisation adopts the text layers' own).
    """

    def __init__(
        self,
        dim: int,
        layers: int = 4,
        max_frames: int = 64,
        activation: str = TEMPORAL_ACTIVATION,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_frames = max_frames
        self.position = nn.Embedding(max_frames, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        block = TemporalBlock(dim, default_heads(dim), 4 * dim, activation)
        self.transformer = TemporalTransformer(block, layers)
        for layer in self.transformer.blocks:
            for proj in (layer.self_attn.out_proj, layer.linear2):
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)

    def forward(self, frame_emb: Tensor, frame_mask: Tensor) -> Tensor:
        """``frame_emb [B, N, D]``, ``frame_mask [B, N]`` (True = real) → ``[B, N, D]``."""
        n = frame_emb.shape[1]
        if n > self.max_frames:
            raise TemporalShapeError(
                f"temporal encoder: {n} frames exceed max_frames={self.max_frames}"
            )
        x = frame_emb + self.position.weight[:n]  # (B, N, D)
        y = self.transformer(x, frame_mask.bool())  # (B, N, D)
        return y + frame_emb


# -------------------------------------------------------------------------- initialisation

TEMPORAL_INITS = ("identity", "clip_text")
IDENTITY_NOTE = "temporal encoder: identity initialisation"


def _clip_text_misfit(encoder: TemporalEncoder, text_model: Any, text_config: Any) -> str | None:
    """Why CLIP's text tower cannot seed ``encoder`` (None when it can)."""
    width = int(text_config.hidden_size)
    n_text = len(text_model.encoder.layers)
    n_pos = int(text_model.embeddings.position_embedding.weight.shape[0])
    blocks = encoder.transformer.blocks
    n_layers = len(blocks)
    act = str(text_config.hidden_act)
    if width != encoder.dim:
        return f"CLIP text width {width} != D {encoder.dim}"
    if n_text < n_layers:
        return f"CLIP has {n_text} text layers, the encoder {n_layers}"
    if encoder.max_frames > n_pos:
        return f"max_frames {encoder.max_frames} > {n_pos} CLIP text positions"
    if width % int(text_config.num_attention_heads):
        return f"{text_config.num_attention_heads} CLIP text heads do not divide {width}"
    if act not in ACTIVATIONS:
        return f"CLIP text activation {act!r} is not supported"
    if int(text_config.intermediate_size) != blocks[0].linear1.out_features:
        return f"CLIP text MLP width {text_config.intermediate_size} != 4 D"
    return None


@torch.no_grad()
def copy_clip_text_layer(block: TemporalBlock, layer: Any, text_config: Any) -> None:
    """Make ``block`` compute what ``layer`` (a ``transformers`` ``CLIPEncoderLayer``) computes
    without a causal mask: weights copied, heads and activation adopted. The LayerNorm epsilon
    stays :data:`TEMPORAL_LN_EPS` (1e-12), as in the official blocks, which load CLIP's weights
    into ``until_module.LayerNorm`` modules (CLIP's own is 1e-5: a 4-7e-6 relative change)."""
    attn: Any = layer.self_attn
    block.norm1.load_state_dict(layer.layer_norm1.state_dict())
    block.norm2.load_state_dict(layer.layer_norm2.state_dict())
    block.norm1.eps = block.norm2.eps = TEMPORAL_LN_EPS
    block.self_attn.in_proj_weight.copy_(
        torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # (3D, D)
    )
    block.self_attn.in_proj_bias.copy_(
        torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])  # (3D,)
    )
    block.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
    block.self_attn.num_heads = int(text_config.num_attention_heads)
    mlp: Any = layer.mlp
    block.linear1.load_state_dict(mlp.fc1.state_dict())
    block.linear2.load_state_dict(mlp.fc2.state_dict())
    block.set_activation(str(text_config.hidden_act))


def initialise_temporal(encoder: TemporalEncoder, how: str, clip_model: nn.Module) -> str:
    """Initialise ``encoder`` as ``how`` says and return a one-line note for the results.

    ``identity``: as constructed (every block the identity at first). ``clip_text``: the reference
    initialisation: block i ← CLIP text layer i (i < layers; heads and activation too;
    LayerNorm epsilon stays 1e-12), positions ← the first ``max_frames`` rows of the text
    position embedding. It falls back to ``identity``, and the note says why, when the text
    width is not D, the text tower has fewer layers than the encoder, or ``max_frames`` exceeds
    the text positions.

    Args:
        encoder: a freshly constructed :class:`TemporalEncoder` (identity initialisation).
        how: ``"identity"`` or ``"clip_text"``.
        clip_model: the ``transformers.CLIPModel`` of the backbone.
    """
    if how not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init: {how!r} is not one of {', '.join(TEMPORAL_INITS)}")
    if how == "identity":
        return IDENTITY_NOTE
    model: Any = clip_model
    text_model, text_config = model.text_model, model.config.text_config
    misfit = _clip_text_misfit(encoder, text_model, text_config)
    if misfit is not None:
        return f"{IDENTITY_NOTE} (clip_text fell back: {misfit})"
    layers = encoder.transformer.blocks
    for block, layer in zip(layers, text_model.encoder.layers):
        copy_clip_text_layer(block, layer, text_config)
    with torch.no_grad():
        positions = text_model.embeddings.position_embedding.weight  # (77, D)
        encoder.position.weight.copy_(positions[: encoder.max_frames])
    return (
        f"temporal encoder: clip_text initialisation (blocks from CLIP text layers "
        f"0-{len(layers) - 1}, positions from text position rows 0-{encoder.max_frames - 1}; "
        f"{text_config.num_attention_heads} heads, {text_config.hidden_act})"
    )


__all__ = [
    "ACTIVATIONS",
    "TEMPORAL_ACTIVATION",
    "TEMPORAL_INITS",
    "TEMPORAL_LN_EPS",
    "FrameSelfAttention",
    "QuickGELU",
    "TemporalBlock",
    "TemporalEncoder",
    "TemporalShapeError",
    "copy_clip_text_layer",
    "initialise_temporal",
]
