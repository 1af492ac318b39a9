"""The seqTransf temporal encoder shared by GLCCL, X-CLIP and GLSCL (SPEC §2.4-§2.6).

``v_j = Transformer(f_j + p_j) + f_j`` over a video's frame embeddings ``[B, N, D]``.
"""

from __future__ import annotations

from torch import Tensor, nn


class TemporalShapeError(ValueError):
    """Frame count or width does not fit the temporal encoder (one-line message)."""


class TemporalEncoder(nn.Module):
    """CLIP4Clip "seqTransf": ``v_j = Transformer(f_j + p_j) + f_j``.

    A pre-LN ``nn.TransformerEncoder`` (``norm_first=True``, like CLIP's residual attention blocks
    that the reference uses; GELU, no dropout, no final norm), width D, ``max(1, D // 64)`` heads
    (the largest divisor of D not above it), learned frame position embeddings, padded frames
    masked as attention keys.

    Initialisation: the last projection of each residual branch (attention ``out_proj`` and the
    MLP's second linear) starts at zero, so every block is the identity at first and
    ``v = 2 f + p`` with small ``p`` (std 0.02): the same direction as the CLIP frame features,
    so training starts from meanP-like, text-guided pooling of the CLIP features and the
    temporal branch has to earn its contribution. (The reference instead copies the first layers
    of CLIP's text transformer, which has a different block layout in ``transformers``.) The
    zero-initialised projections receive gradient from the first step, the other block weights
    from the second.

    Args:
        dim: feature width D.
        layers: number of transformer blocks.
        max_frames: number of learned positions (N must not exceed it).
    """

    def __init__(self, dim: int, layers: int = 4, max_frames: int = 64) -> None:
        super().__init__()
        heads = max(1, dim // 64)
        while dim % heads:
            heads -= 1
        self.max_frames = max_frames
        self.position = nn.Embedding(max_frames, dim)
        nn.init.normal_(self.position.weight, std=0.02)
        block = nn.TransformerEncoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=4 * dim,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # enable_nested_tensor=False: the nested fast path zeroes padded positions in eval mode
        # only, which would make reference-mode scores differ between training and evaluation.
        self.transformer = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        for layer in self.transformer.layers:
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
        # Padded frames: masked as keys; their own outputs are computed but never used when the
        # head masks padding.
        y = self.transformer(x, src_key_padding_mask=~frame_mask.bool())  # (B, N, D)
        return y + frame_emb


TEMPORAL_INITS = ("identity", "clip_text")


def initialise_temporal(encoder: TemporalEncoder, how: str, clip_model: nn.Module) -> str:
    """Initialise ``encoder`` as ``how`` says and return a one-line note for the results.

    ``identity``: as constructed (every block the identity at first). ``clip_text``: the reference
    initialisation (blocks from CLIP's text layers 0..layers-1, positions from the text position
    embedding), falling back to ``identity`` with a note when the text tower does not fit.
    """
    if how not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init: {how!r} is not one of {', '.join(TEMPORAL_INITS)}")
    if how == "identity":
        return "temporal encoder: identity initialisation"
    raise NotImplementedError("temporal_init clip_text")
