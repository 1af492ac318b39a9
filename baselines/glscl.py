"""GLSCL: global-local semantic consistent learning (SPEC §2.6).

Zhang, Zeng, Gao, Song, Duan, Lyu, Shen (arXiv 2405.12710; reference code zchoi/GLSCL,
tvr/models/modeling.py). One text-guided global pooling plus query-independent local "concepts":

* temporal encoder (the shared seqTransf, :class:`tvrbench.temporal.TemporalEncoder`):
  ``v_j = TE(f_j + p_j) + f_j``;
* GIM, parameter-free (GLCCL's global GLIM with τ = 3): ``a_j = softmax_j(t·v_j / τ)`` on raw dot
  products over the real frames, ``ṽ = Σ_j a_j v_j``, ``S_g = cos(t, ṽ)``;
* SLIM: Q learnable queries (U[0, 1) init) and ONE 3-layer post-LN ``nn.TransformerDecoder``
  shared by both modalities turn an item's features into Q concepts:
  ``c^v = Dec(queries, memory v_1..v_N)``, ``c^t = Dec(queries, memory w_1..w_L)``, rows
  L2-normalised (``ĉ_q``). Concepts depend on one item only, so they live in the states and
  ``S_l = (1/Q) Σ_q ĉ^t_q · ĉ^v_q`` is one matrix product over a gallery;
* score for training and ranking ``S = S_g + λ·S_l`` (λ = 0.5; the module multiplies by s);
* losses on the all-gathered batch (paper names; the reference code's names are swapped):
  ``L_IDL = 2α · mean_{p≠q} max(0, G_pq − 0.9)`` with ``G = mean_b Ĉ^v_b Ĉ^vᵀ_b`` (video concepts
  only) and ``L_ICL = MSE(mean_b Ĉ^v_b, mean_b Ĉ^t_b) + β Σ_q (K_qq − 0.75)²`` with
  ``K = (1/Q) Σ_b Ĉ^v_b Ĉ^tᵀ_b`` over the matched pairs (b ↔ b).

Decisions:

* **Padding.** With ``mask_padding=True`` (default) SLIM's cross-attention ignores padded words and
  frames (``memory_key_padding_mask``); ``False`` is the reference (no memory mask: padded
  positions are attended to). GIM is masked in both modes: the reference multiplies the softmax
  over all N frames by the frame mask without renormalising, which only rescales ṽ, and the score
  is a cosine, so that is exactly a masked softmax. The temporal encoder masks padded frames as
  keys in both modes.
* **Left out:** the reference's ``weight_fc`` (Linear 2D→4D, ReLU, Linear 4D→1) runs on every
  (text, video) pair and its output is never used in the score or the loss; it is not built here
  (8D² + 4D multiply-adds per pair, see :meth:`GLSCLHead.reference_pair_flops`).
* **L_ICL's K** divides the batch sum by Q, not by B, as the reference does: its diagonal target
  0.75 then means a mean matched-concept cosine of 0.75·Q/B. Kept as the reference has it.
* **Precision.** Concept normalisation, the Gram matrices and all of the scoring run in float32
  with autocast off (SPEC §2.7); the decoder itself follows the surrounding autocast.

Fast scoring. With the per-video Gram matrix ``G_v = v vᵀ`` (``[N, N]``, cached in the state),
``t·ṽ = Σ_j a_j (t·v_j)`` reuses the GIM logits and ``‖ṽ‖² = aᵀ G_v a``, so a pair costs
``N·D + N² + 2N + Q·D`` multiply-adds (≈ 41 K at N = 64, Q = 8, D = 512) instead of forming ṽ
(``2·N·D + Q·D + 2D`` ≈ 71 K). :meth:`GLSCLHead.reference_score` is the plain version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.layers import TemporalHead, checked_temporal_init, masked_softmax
from tvrbench.retrieval import State
from tvrbench.temporal import TemporalEncoder, TemporalShapeError

NORM_EPS = 1e-12


class GLSCLShapeError(TemporalShapeError):
    """Inputs that do not fit the head (frames beyond max_frames, a non-square loss batch)."""


def decoder_heads_for(dim: int, most: int = 8) -> int:
    """The largest divisor of ``dim`` not above ``most`` (8 heads at D = 512 and D = 64)."""
    heads = max(1, min(most, dim))
    while dim % heads:
        heads -= 1
    return heads


def padding_mask(real: Tensor) -> Tensor:
    """``real [B, M]`` (True = real) → key padding mask ``[B, M]`` (True = ignore).

    An item with no real position keeps all of its positions (an all-ignored row would make the
    attention NaN); a real batch never has one.
    """
    return ~real & real.any(dim=1, keepdim=True)


# ----------------------------------------------------------------------------------- losses


def inter_diversity_loss(video_concepts: Tensor, margin: float = 0.9) -> Tensor:
    """L_IDL before its weight 2α: ``mean_{p≠q} max(0, G_pq − margin)``.

    Args:
        video_concepts: ``[B, Q, D]`` L2-normalised concepts.
        margin: cosine above which two concepts are pushed apart.
    Returns:
        scalar; ``G = mean_b Ĉ_b Ĉ_bᵀ`` (``[Q, Q]``). Zero when Q = 1.
    """
    b, q, _ = video_concepts.shape
    gram = torch.einsum("bpd,bqd->pq", video_concepts, video_concepts) / b  # (Q, Q)
    if q < 2:
        return gram.sum() * 0.0
    off = ~torch.eye(q, dtype=torch.bool, device=gram.device)
    return (gram[off] - margin).clamp_min(0.0).mean()


def intra_consistency_loss(
    video_concepts: Tensor, text_concepts: Tensor, beta: float = 0.005, target: float = 0.75
) -> Tensor:
    """L_ICL: ``MSE(mean_b Ĉ^v_b, mean_b Ĉ^t_b) + β Σ_q (K_qq − target)²``.

    Args:
        video_concepts, text_concepts: ``[B, Q, D]`` L2-normalised; row b of each is a matched
            pair.
        beta: weight of the diagonal term.
        target: target of ``K_qq``.
    Returns:
        scalar; ``K = (1/Q) Σ_b Ĉ^v_b Ĉ^tᵀ_b`` (the reference divides by Q, not B), of which only
        the diagonal ``K_qq = (1/Q) Σ_b ĉ^v_bq · ĉ^t_bq`` enters.
    """
    q = video_concepts.shape[1]
    mse = F.mse_loss(video_concepts.mean(0), text_concepts.mean(0))  # over Q·D elements
    k_diag = (video_concepts * text_concepts).sum(dim=(0, 2)) / q  # (Q,)
    return mse + beta * (k_diag - target).square().sum()


# ------------------------------------------------------------------------------------- head


class GLSCLHead(TemporalHead):
    """GLSCL's temporal encoder, GIM, SLIM concepts, score and IDL/ICL losses.

    Args:
        dim: joint embedding width D.
        max_frames: positions of the temporal encoder.
        temporal_layers: blocks of the temporal encoder (reference: 4).
        temporal_init: ``"clip_text"`` (the reference: blocks and positions from CLIP's text
            tower, at :meth:`attach`) or ``"identity"``; see
            :func:`tvrbench.temporal.initialise_temporal`.
        num_queries: Q, learnable concept queries (reference: 8).
        decoder_layers: blocks of the shared concept decoder (reference: 3).
        decoder_heads: attention heads of the decoder (None: 8, or the largest divisor of D below).
        ffn_dim: decoder feed-forward width (published 2048 at D = 512, i.e. 4·D).
        dropout: decoder dropout (training only; reference: 0.1).
        tau: GIM softmax temperature on raw dot products (reference: 3).
        local_weight: λ, weight of S_l in the score (reference ``loss2_weight`` 0.5).
        idl_weight: α (L_IDL = 2α · mean of the hinge; reference 1e-4).
        idl_margin: L_IDL's cosine margin (0.9).
        icl_weight: weight of the whole L_ICL (the reference adds it unweighted: 1).
        icl_beta: β, weight of L_ICL's diagonal term (DiDeMo 0.005).
        icl_target: target of L_ICL's ``K_qq`` (0.75).
        mask_padding: mask padded words/frames in SLIM's cross-attention (False: the reference).
        use_temporal: apply the temporal encoder (False: v = f, for ablations).

    States: text ``sentence [Bt, D]`` (raw), ``sentence_inv_norm [Bt]``, ``concepts [Bt, Q, D]``;
    video ``frames [Bv, N, D]`` (temporal encoder output, padded frames zeroed), ``frame_mask
    [Bv, N]``, ``gram [Bv, N, N]`` and ``concepts [Bv, Q, D]``; all float32.
    """

    scores_in_float32 = True  # its scoring upcasts to float32 with autocast off (SPEC §2.7)

    #: How :meth:`reference_pair_flops` counts (read by ``benchmarks/scoring.py``).
    reference_note = (
        "the reference forms ṽ per pair (2·N·D + Q·D + 2·D); its unused per-pair weight_fc "
        "(8·D² + 4·D) and its per-block decoder re-runs are not counted"
    )

    #: Published DiDeMo text→video (paper Tab. II, ViT-B/32; no MdR published).
    PUBLISHED_DIDEMO_T2V = {
        "R@1": 46.7,
        "R@5": 75.0,
        "R@10": 82.9,
        "MdR": None,
        "MnR": 13.0,
        "source": "GLSCL (Zhang et al., arXiv 2405.12710) Tab. II, ViT-B/32",
        "protocol": "paragraph-to-video, 31 s, 64 frames, 5 epochs, checkpoint chosen on test",
    }

    def __init__(
        self,
        dim: int,
        max_frames: int = 64,
        temporal_layers: int = 4,
        temporal_init: str = "clip_text",
        num_queries: int = 8,
        decoder_layers: int = 3,
        decoder_heads: int | None = None,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        tau: float = 3.0,
        local_weight: float = 0.5,
        idl_weight: float = 1e-4,
        idl_margin: float = 0.9,
        icl_weight: float = 1.0,
        icl_beta: float = 0.005,
        icl_target: float = 0.75,
        mask_padding: bool = True,
        use_temporal: bool = True,
    ) -> None:
        super().__init__()
        self.temporal_init = checked_temporal_init(temporal_init)
        heads = decoder_heads if decoder_heads is not None else decoder_heads_for(dim)
        if dim % heads:
            raise ValueError(f"GLSCL: width {dim} is not divisible by {heads} decoder heads")
        self.dim, self.max_frames, self.num_queries = dim, max_frames, num_queries
        self.tau, self.local_weight = tau, local_weight
        self.idl_weight, self.idl_margin = idl_weight, idl_margin
        self.icl_weight, self.icl_beta, self.icl_target = icl_weight, icl_beta, icl_target
        self.mask_padding = mask_padding
        self.temporal = TemporalEncoder(dim, temporal_layers, max_frames) if use_temporal else None
        self.queries = nn.Parameter(torch.rand(num_queries, dim))  # U[0, 1), as the reference
        layer = nn.TransformerDecoderLayer(
            d_model=dim,
            nhead=heads,
            dim_feedforward=ffn_dim,
            dropout=dropout,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )
        # nn.TransformerDecoder deep-copies the layer: the blocks are identical at start.
        self.decoder = nn.TransformerDecoder(layer, decoder_layers)

    # --------------------------------------------------------------------------- states

    def concepts(self, memory: Tensor, real: Tensor) -> Tensor:
        """SLIM: ``memory [B, M, D]``, ``real [B, M]`` (True = real) → ``[B, Q, D]`` unit rows."""
        queries = self.queries.expand(memory.shape[0], -1, -1)  # (B, Q, D)
        pad = padding_mask(real) if self.mask_padding else None
        out = self.decoder(queries, memory, memory_key_padding_mask=pad)  # (B, Q, D)
        with torch.autocast(device_type=out.device.type, enabled=False):
            return F.normalize(out.float(), dim=-1, eps=NORM_EPS)

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → frames, mask, Gram, concepts."""
        if frame_emb.shape[1] > self.max_frames:
            raise GLSCLShapeError(
                f"GLSCL head: {frame_emb.shape[1]} frames exceed max_frames={self.max_frames}"
            )
        frame_mask = frame_mask.bool()
        frames = self.temporal(frame_emb, frame_mask) if self.temporal is not None else frame_emb
        concepts = self.concepts(frames, frame_mask)  # (Bv, Q, D)
        with torch.autocast(device_type=frames.device.type, enabled=False):
            live = frames.float().masked_fill(~frame_mask[..., None], 0.0)  # (Bv, N, D)
            gram = live @ live.transpose(1, 2)  # (Bv, N, N)
        return {"frames": live, "frame_mask": frame_mask, "gram": gram, "concepts": concepts}

    def text_state(self, text: TextFeatures) -> State:
        """Text features → raw sentence, its inverse norm and the text concepts."""
        concepts = self.concepts(text.words, text.word_mask.bool())  # (Bt, Q, D)
        sentence = text.sentence.float()
        inv_norm = 1.0 / sentence.norm(dim=-1).clamp_min(NORM_EPS)  # (Bt,)
        return {"sentence": sentence, "sentence_inv_norm": inv_norm, "concepts": concepts}

    # -------------------------------------------------------------------------- scoring

    def score(self, text: State, video: State) -> Tensor:
        """Unscaled ``S = S_g + λ·S_l``, ``[Bt, Bv]``, float32 with autocast off."""
        with torch.autocast(device_type=text["sentence"].device.type, enabled=False):
            s_g = self.global_score(text, video)  # (Bt, Bv)
            return s_g + self.local_weight * self.local_score(text, video)

    def global_score(self, text: State, video: State) -> Tensor:
        """GIM ``S_g = cos(t, ṽ)`` for every pair, ``[Bt, Bv]``, without forming ṽ."""
        t = text["sentence"].float()  # (Bt, D)
        frames, gram = video["frames"].float(), video["gram"].float()  # (Bv, N, D), (Bv, N, N)
        bv, n, d = frames.shape
        x = (frames.reshape(bv * n, d) @ t.t()).view(bv, n, -1)  # (Bv, N, Bt): t·v_j
        a = masked_softmax(x / self.tau, video["frame_mask"][:, :, None], dim=1)  # (Bv, N, Bt)
        dot = (a * x).sum(1)  # (Bv, Bt): t·ṽ
        sq_norm = ((gram @ a) * a).sum(1)  # (Bv, Bt): ‖ṽ‖² = aᵀ G a
        inv = sq_norm.clamp_min(NORM_EPS**2).rsqrt()  # (Bv, Bt)
        return (dot * inv).t() * text["sentence_inv_norm"].float()[:, None]  # (Bt, Bv)

    def local_score(self, text: State, video: State) -> Tensor:
        """SLIM ``S_l = (1/Q) Σ_q ĉ^t_q · ĉ^v_q``, ``[Bt, Bv]``: one matrix product."""
        c_t, c_v = text["concepts"].float(), video["concepts"].float()  # (Bt, Q, D), (Bv, Q, D)
        return (c_t.flatten(1) @ c_v.flatten(1).t()) / c_t.shape[1]  # (Bt, Bv)

    def reference_score(self, text: State, video: State) -> Tensor:
        """``S_g + λ·S_l`` written directly from SPEC §2.6, ``[Bt, Bv]``: per text, the pooled
        video feature ṽ of every video is formed and the cosine taken explicitly; S_l is a loop
        over the Q concepts. Uses ``sentence``, ``frames``, ``frame_mask`` and ``concepts``."""
        with torch.autocast(device_type=text["sentence"].device.type, enabled=False):
            t_all, frames = text["sentence"].float(), video["frames"].float()
            real = video["frame_mask"].bool()  # (Bv, N)
            c_t, c_v = text["concepts"].float(), video["concepts"].float()
            num_q = c_t.shape[1]
            rows = []
            for i in range(t_all.shape[0]):
                t = t_all[i]  # (D,)
                logits = (frames @ t) / self.tau  # (Bv, N)
                a = logits.masked_fill(~real, float("-inf")).softmax(dim=1)  # (Bv, N)
                pooled = (a[..., None] * frames).sum(1)  # (Bv, D): ṽ
                s_g = (pooled @ t) / (pooled.norm(dim=-1) * t.norm())  # (Bv,)
                s_l = torch.zeros_like(s_g)
                for q in range(num_q):
                    s_l = s_l + (c_v[:, q] * c_t[i, q]).sum(-1)  # (Bv,)
                rows.append(s_g + self.local_weight * s_l / num_q)
            return torch.stack(rows)  # (Bt, Bv)

    # ----------------------------------------------------------------------------- loss

    def extra_loss(self, text: State, video: State) -> Tensor | None:
        """``2α·L_IDL + icl_weight·L_ICL`` on the batch's concepts (row b of ``text`` matches row b
        of ``video``); None when both weights are 0."""
        if self.idl_weight == 0 and self.icl_weight == 0:
            return None
        c_t, c_v = text["concepts"], video["concepts"]  # (B, Q, D) each
        if c_t.shape[0] != c_v.shape[0]:
            raise GLSCLShapeError(
                f"GLSCL losses need matched pairs, got {c_t.shape[0]} texts and "
                f"{c_v.shape[0]} videos"
            )
        with torch.autocast(device_type=c_t.device.type, enabled=False):
            c_t, c_v = c_t.float(), c_v.float()
            idl = inter_diversity_loss(c_v, self.idl_margin)
            icl = intra_consistency_loss(c_v, c_t, self.icl_beta, self.icl_target)
            return 2.0 * self.idl_weight * idl + self.icl_weight * icl

    # ------------------------------------------------------------------------------ cost

    def pair_bytes(self, text: State, video: State) -> int:
        """Upper bound of the per-pair working set of :meth:`score`, every intermediate counted
        as if nothing were freed: the GIM logits, scaled, masked and softmaxed copies, ``G a``,
        ``(G a)·a`` and ``a·x`` (``7N``), plus ``16`` scalars (dot, norms, S_g, S_l, sum)."""
        n = video["frames"].shape[1]
        return 4 * (7 * n + 16)  # float32

    def pair_flops(self, num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair of :meth:`score` with cached states (softmax/exp not counted).

        GIM logits ``N·D``; ``t·ṽ = a·x`` ``N``; ``G a`` ``N²`` and ``(G a)·a`` ``N``; S_l ``Q·D``;
        the cosine scaling and ``S_g + λ·S_l`` ``3``. Total ``N·D + N² + 2N + Q·D + 3``
        (≈ 41 K at N = 64, Q = 8, D = 512; SPEC §2.6's "exactly N·D + N² + Q·D").
        """
        n, d, q = num_frames, dim, self.num_queries
        return n * d + n * n + 2 * n + q * d + 3

    def reference_pair_flops(self, num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair of the reference's scoring, without its unused ``weight_fc``:
        ṽ = Σ a_j v_j formed per pair ``2·N·D`` (logits and pooling), ‖ṽ‖ and t·ṽ ``2·D``, S_l
        ``Q·D``: ``2·N·D + Q·D + 2·D`` (≈ 70.7 K at N = 64, Q = 8, D = 512; 17.4 K at N = 12).

        What the reference really runs per pair is more: ``weight_fc`` (2D→4D→1, output unused)
        adds ``8·D² + 4·D`` (≈ 2.10 M at D = 512, 30× the score), and its evaluation re-runs the
        concept decoder for every 16 × 16 block of texts × videos, i.e. ``(c_t + c_v) / 16`` per
        pair with ``c = concept_flops`` of one item (≈ 24 M at L = N = 64, D = 512). Neither is
        counted here: we leave ``weight_fc`` out and cache the concepts per item.
        """
        n, d, q = num_frames, dim, self.num_queries
        return 2 * n * d + q * d + 2 * d

    def concept_flops(self, num_items: int) -> int:
        """Multiply-adds of SLIM for one item with ``num_items`` (M) memory positions.

        Per decoder layer: query self-attention ``4·Q·D² + 2·Q²·D`` (projections, scores,
        weighted sum), cross-attention ``2·Q·D² + 2·M·D² + 2·Q·M·D`` (query/output and
        key/value projections, scores, weighted sum), FFN ``2·Q·D·F``; with F = 4D that is
        SPEC's ``14·Q·D² + 2·M·D² + 2·Q·M·D + 2·Q²·D`` (≈ 63.5 M per layer, 0.19 G for 3 layers at
        Q = 8, M = 64, D = 512). LayerNorms, softmax and the final normalisation not counted.
        """
        q, m, d = self.num_queries, num_items, self.dim
        layers = list(self.decoder.layers)
        ffn = int(layers[0].linear1.out_features) if layers else 0
        per_layer = 6 * q * d * d + 2 * q * q * d + 2 * m * d * d + 2 * q * m * d + 2 * q * d * ffn
        return len(layers) * per_layer


__all__ = [
    "GLSCLHead",
    "GLSCLShapeError",
    "decoder_heads_for",
    "inter_diversity_loss",
    "intra_consistency_loss",
]
