"""GLCCL: global-local cross-grained contrastive learning (SPEC §2.4).

Jing, Yang, Yang (arXiv 2605.17959; reference code JingXiaolun/GLCCL, modules/modeling_glccl.py).
CLIP4Clip with a seqTransf temporal encoder, then X-CLIP-style four-way scoring of every
(text, video) pair with text-guided pooling (GLIM):

* temporal encoder: ``v_j = Transformer(f_j + p_j) + f_j``;
* GLIM (parameter-free, τ = 5 on raw dot products): a sentence-guided video feature
  ``ṽ = Σ_j softmax_j(t·v_j/τ) v_j`` and, for every word i, a word-guided frame feature
  ``f̃_i = Σ_j softmax_j(w_i·v_j/τ) v_j``; both L2-normalised (hats);
* four scores, each pooled with ``softmax(·/0.01)`` followed by an identity-initialised matrix:
  video–sentence ``S_vs = (t̂ᵀ W_g) ṽ̂``, video–word ``S_vw``, sentence–frame ``S_sf`` and
  frame–word ``S_fw``; the score is their mean (unscaled; the module multiplies by s);
* CSC loss: the variance of the four scores across the components should be small on the
  positive pairs relative to the negatives (:func:`csc_loss`).

Decisions (the reference code leaves them implicit):

* **Words** are the text tower's outputs at every token position. With ``mask_padding=True``
  (default) the real tokens (``word_mask``, start and end tokens included — exactly the attention
  mask) are the words; padded positions take part in nothing. With ``mask_padding=False`` every
  position up to the text length takes part, padded ones included, and padded frames take part in
  the GLIM softmaxes, as in the reference code (its frame-mask line is commented out and it never
  masks words). The temporal encoder masks padded frames as keys in both modes (the reference
  does too).
* The "frames" of ``S_fw`` and ``S_sf`` are the L word-guided pooled features f̃_i, so every
  matrix of the word/frame poolings is L×L (``max_words``); a text shorter than ``max_words`` uses
  the leading ``[:L, :L]`` block (with masking, identical to padding it to ``max_words``).
* ``S_fw`` pools twice along each of two paths (over words per frame, then over frames; over
  frames per word, then over words). As in the reference code each of the four poolings has its
  own L×L matrix (``word_mat_weight``, ``word_frame_mat_weight``, ``word_frame_mat_weight2``,
  ``word_mat_weight2`` there).
* CSC denominator: the mean of the variance matrix over all B² entries with the diagonal set to
  zero (the reference's ``fill_diagonal_(0)`` then ``mean``), i.e. ``Σ_{i≠j} V_ij / B²``, clamped
  below by ``eps``. The loss is a ratio of variances, so it is the same on scaled and unscaled
  scores; the head computes it on the unscaled ones.
* Scoring runs in float32 (autocast off) even under mixed precision: the 0.01 softmax
  temperature multiplies rounding errors of bf16 cosines by 100.

Efficient scoring. The pooled features only ever enter through inner products, so the head never
materialises ``[Bt, Bv, L, D]``. One GEMM of the stacked text queries
``[t, w_1..w_L, t̂ᵀW_g, ŵ_1ᵀW_l..ŵ_Lᵀ W_l]`` (``[Bt, 2L+2, D]``) against all frames gives
``X [Bt, Bv, 2L+2, N]``; with the GLIM weights ``a`` (from ``t·v``) and ``b_i`` (from ``w_i·v``):
``t̂·ṽ ∝ Σ_j a_j t̂·v_j``, ``‖ṽ‖² = aᵀ G a`` with the per-video Gram matrix ``G = v vᵀ``,
``t̂·f̃_i ∝ Σ_j b_ij t̂·v_j``, ``(ŵ_iᵀ W_l) f̃_k = Σ_j b_kj (ŵ_iᵀ W_l)·v_j``. Per pair that is
``(2L+2)·N·D + (L+1)·N² + L²·N + 2·L³`` multiply-adds (:meth:`GLCCLHead.pair_flops`) instead of
the reference's ``≈ 2·L·N·D + L²·D``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.layers import TemporalHead, attention_pool, checked_temporal_init, masked_softmax
from tvrbench.retrieval import State
from tvrbench.temporal import TemporalEncoder, TemporalShapeError

NORM_EPS = 1e-12


class GLCCLShapeError(TemporalShapeError):
    """Inputs whose sizes exceed what the head was built for (max_words, max_frames)."""


# ------------------------------------------------------------------------------ helpers


def glim_pool(query: Tensor, frames: Tensor, frame_mask: Tensor | None, tau: float) -> Tensor:
    """GLIM text-guided pooling weights ``softmax_j(q·v_j / τ)`` (raw dot products).

    Args:
        query: ``[..., D]`` sentence or word embeddings (not normalised).
        frames: ``[Bv, N, D]`` temporally encoded frame features.
        frame_mask: ``[Bv, N]`` bool (True = real frame) or None (every frame counts).
        tau: softmax temperature.
    Returns:
        ``[..., Bv, N]`` weights; each row sums to 1 over the (real) frames.
    """
    logits = torch.einsum("...d,bnd->...bn", query, frames) / tau  # (..., Bv, N)
    return masked_softmax(logits, frame_mask, dim=-1)


def csc_loss(components: Tensor, eps: float = 1e-8) -> Tensor:
    """Cross-grained score consistency loss (unweighted).

    Args:
        components: ``[C, B, B]`` score matrices of one batch (C = 4 for GLCCL; positives on the
            diagonal).
        eps: lower bound of the denominator.
    Returns:
        scalar ``mean_i V_ii / max(eps, Σ_{i≠j} V_ij / B²)`` with ``V = var_C(components)``
        (unbiased, element-wise).
    """
    var = components.var(dim=0, unbiased=True)  # (B, B)
    eye = torch.eye(var.shape[0], dtype=torch.bool, device=var.device)
    diagonal = var.diagonal().mean()
    off_diagonal = var.masked_fill(eye, 0.0).mean()  # Σ_{i≠j} V_ij / B²
    return diagonal / off_diagonal.clamp_min(eps)


# ----------------------------------------------------------------------------------- head


class GLCCLHead(TemporalHead):
    """GLCCL's temporal encoder, GLIM pooling, four-way scoring and CSC loss.

    Args:
        dim: joint embedding width D.
        max_words: L, size of the word/frame pooling matrices (texts may be shorter).
        max_frames: positions of the temporal encoder.
        temporal_layers: blocks of the temporal encoder.
        temporal_init: ``"clip_text"`` (the reference default: at :meth:`attach`, blocks from
            CLIP's text layers 0..temporal_layers-1, positions from its text position embedding,
            so ``max_frames`` ≤ 77) or ``"identity"`` (every block the identity at first); see
            :func:`tvrbench.temporal.initialise_temporal`. A ``clip_text`` that does not fit the
            backbone falls back to ``identity``; the note in ``init_notes`` says so and why.
        tau: GLIM softmax temperature on raw dot products.
        pool_temperature: softmax temperature of the word/frame poolings.
        csc_weight: η, weight of the CSC loss (0 disables it).
        mask_padding: mask padded frames and padded word positions everywhere (default); False
            lets them take part in the GLIM softmaxes and word poolings as the reference does.
        use_temporal: apply the temporal encoder (False: v = f, for ablations).

    States: text ``sentence [Bt, D]``, ``words [Bt, L, D]``, ``word_mask [Bt, L]`` (as given by
    the backbone) plus derived ``queries [Bt, 2L+2, D]``, ``sentence_inv_norm [Bt]``,
    ``word_inv_norm [Bt, L]``; video ``frames [Bv, N, D]`` (temporal encoder output),
    ``frame_mask [Bv, N]``, ``gram [Bv, N, N]``.
    """

    scores_in_float32 = True  # its scoring upcasts to float32 with autocast off (SPEC §2.7)

    #: Reference methods of the ablation table (report): X-CLIP is GLCCL without GLIM and CSC
    #: (SPEC §2.5), so "X-CLIP → + GLIM → + CSC = GLCCL" with the ``glccl_*`` variants.
    ABLATION_BASELINES = ("xclip",)

    def __init__(
        self,
        dim: int,
        max_words: int = 32,
        max_frames: int = 64,
        temporal_layers: int = 4,
        temporal_init: str = "clip_text",
        tau: float = 5.0,
        pool_temperature: float = 0.01,
        csc_weight: float = 0.5,
        mask_padding: bool = True,
        use_temporal: bool = True,
    ) -> None:
        super().__init__()
        self.temporal_init = checked_temporal_init(temporal_init)
        self.dim, self.max_words, self.max_frames = dim, max_words, max_frames
        self.tau, self.pool_temperature = tau, pool_temperature
        self.csc_weight, self.mask_padding = csc_weight, mask_padding
        self.temporal = TemporalEncoder(dim, temporal_layers, max_frames) if use_temporal else None
        self._last_components: tuple[Tensor, Tensor, Tensor] | None = None

        def eye(n: int) -> nn.Parameter:
            return nn.Parameter(torch.eye(n))

        self.global_weight = eye(dim)  # W_g, S_vs
        self.local_weight = eye(dim)  # W_l, S_fw
        self.video_word_weight = eye(max_words)  # W_w, S_vw
        self.sentence_frame_weight = eye(max_words)  # W_sf, S_sf
        self.fw_word_weight = eye(max_words)  # S_fw: over words, per frame
        self.fw_frame_weight = eye(max_words)  # S_fw: over frames, per word
        self.fw_frame_weight2 = eye(max_words)  # S_fw: then over frames
        self.fw_word_weight2 = eye(max_words)  # S_fw: then over words

    # --------------------------------------------------------------------------- states

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → frames, mask and Gram matrix."""
        if frame_emb.shape[1] > self.max_frames:
            raise GLCCLShapeError(
                f"GLCCL head: {frame_emb.shape[1]} frames exceed max_frames={self.max_frames}"
            )
        frame_mask = frame_mask.bool()
        frames = self.temporal(frame_emb, frame_mask) if self.temporal is not None else frame_emb
        live = frames.masked_fill(~frame_mask[..., None], 0.0) if self.mask_padding else frames
        gram = live @ live.transpose(1, 2)  # (Bv, N, N)
        return {"frames": frames, "frame_mask": frame_mask, "gram": gram}

    def text_state(self, text: TextFeatures) -> State:
        """Text features → raw sentence/words/mask plus the stacked GEMM queries."""
        sentence, words, word_mask = text.sentence, text.words, text.word_mask.bool()
        if words.shape[1] > self.max_words:
            raise GLCCLShapeError(
                f"GLCCL head: {words.shape[1]} tokens exceed max_words={self.max_words}"
            )
        live = words.masked_fill(~word_mask[..., None], 0.0) if self.mask_padding else words
        sentence_norm = sentence.norm(dim=-1).clamp_min(NORM_EPS)  # (Bt,)
        word_norm = live.norm(dim=-1).clamp_min(NORM_EPS)  # (Bt, L)
        sentence_hat = sentence / sentence_norm[:, None]  # (Bt, D)
        word_hat = live / word_norm[..., None]  # (Bt, L, D)
        queries = torch.cat(
            [
                sentence[:, None],  # GLIM global logits
                live,  # GLIM local logits
                (sentence_hat @ self.global_weight)[:, None],  # S_vs
                word_hat @ self.local_weight,  # S_fw
            ],
            dim=1,
        )  # (Bt, 2L+2, D)
        return {
            "sentence": sentence,
            "words": words,
            "word_mask": word_mask,
            "queries": queries,
            "sentence_inv_norm": 1.0 / sentence_norm,
            "word_inv_norm": 1.0 / word_norm,
        }

    # -------------------------------------------------------------------------- scoring

    def score(self, text: State, video: State) -> Tensor:
        """Unscaled GLCCL score ``[Bt, Bv]``: the mean of the four components.

        When gradients are on, the components are kept until the next :meth:`extra_loss` on the
        very same state tensors, so a training step computes them once for InfoNCE and CSC.
        """
        components = self.score_components(text, video)  # (4, Bt, Bv)
        self._last_components = None
        if components.requires_grad:
            self._last_components = (text["queries"], video["frames"], components)
        return components.mean(0)

    def score_components(self, text: State, video: State) -> Tensor:
        """``[4, Bt, Bv]``: S_vs, S_vw, S_sf, S_fw (unscaled), without any per-pair Python loop
        and without materialising ``[Bt, Bv, L, D]``."""
        device_type = text["queries"].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            return self._components(text, video)

    def _components(self, text: State, video: State) -> Tensor:
        dtype = torch.promote_types(text["queries"].dtype, torch.float32)
        queries = text["queries"].to(dtype)
        frames, gram = video["frames"].to(dtype), video["gram"].to(dtype)
        bt, k, d = queries.shape
        bv, n, _ = frames.shape
        length = (k - 2) // 2
        temp = self.pool_temperature

        word_mask = text["word_mask"] if self.mask_padding else None  # (Bt, L)
        frame_mask = video["frame_mask"][None, :, None, :] if self.mask_padding else None

        x = (queries.reshape(bt * k, d) @ frames.reshape(bv * n, d).t()).view(bt, k, bv, n)
        x = x.transpose(1, 2)  # (Bt, Bv, 2L+2, N): rows t, w_1..w_L, t̂W_g, ŵ_1W_l..ŵ_LW_l

        glim = masked_softmax(x[:, :, : length + 1] / self.tau, frame_mask)  # (Bt, Bv, L+1, N)
        sq_norm = ((glim @ gram[None]) * glim).sum(-1)  # (Bt, Bv, L+1): ‖ṽ‖², ‖f̃_i‖²
        inv_norm = sq_norm.clamp_min(NORM_EPS**2).rsqrt()  # (Bt, Bv, L+1)
        a, b = glim[:, :, 0], glim[:, :, 1:]  # (Bt, Bv, N), (Bt, Bv, L, N)
        inv_g, inv_l = inv_norm[:, :, 0], inv_norm[:, :, 1:]  # (Bt, Bv), (Bt, Bv, L)
        t_inv = text["sentence_inv_norm"].to(dtype)[:, None]  # (Bt, 1)
        w_inv = text["word_inv_norm"].to(dtype)[:, None]  # (Bt, 1, L)

        # S_vs = (t̂ᵀ W_g) ṽ / ‖ṽ‖
        s_vs = (a * x[:, :, length + 1]).sum(-1) * inv_g  # (Bt, Bv)

        # S_vw: u_i = ŵ_i · ṽ̂ = Σ_j a_j (w_i·v_j) / (‖w_i‖ ‖ṽ‖)
        u = (x[:, :, 1 : length + 1] @ a[..., None]).squeeze(-1)  # (Bt, Bv, L)
        u = u * w_inv * inv_g[..., None]
        wm = word_mask[:, None, :] if word_mask is not None else None  # (Bt, 1, L)
        s_vw = attention_pool(u, self.video_word_weight[:length, :length], temp, wm)

        # S_sf: r_i = t̂ · f̃̂_i = Σ_j b_ij (t·v_j) / (‖t‖ ‖f̃_i‖)
        r = (b @ x[:, :, 0, :, None]).squeeze(-1) * inv_l * t_inv[..., None]  # (Bt, Bv, L)
        s_sf = attention_pool(r, self.sentence_frame_weight[:length, :length], temp, wm)

        # S_fw: M_ik = (ŵ_iᵀ W_l) f̃̂_k = Σ_j (ŵ_iᵀ W_l · v_j) b_kj / ‖f̃_k‖
        m = (x[:, :, length + 2 :] @ b.transpose(-1, -2)) * inv_l[:, :, None, :]  # (Bt,Bv,L,L)
        s_fw = self._frame_word(m, word_mask, length)
        return torch.stack([s_vs, s_vw, s_sf, s_fw])  # (4, Bt, Bv)

    def _frame_word(self, m: Tensor, word_mask: Tensor | None, length: int) -> Tensor:
        """``m [Bt, Bv, L(words i), L(frames k)]`` → S_fw ``[Bt, Bv]``."""
        temp, sl = self.pool_temperature, slice(0, length)
        mask4 = word_mask[:, None, None, :] if word_mask is not None else None  # (Bt, 1, 1, L)
        mask3 = word_mask[:, None, :] if word_mask is not None else None  # (Bt, 1, L)
        per_frame = attention_pool(m.transpose(-1, -2), self.fw_word_weight[sl, sl], temp, mask4)
        per_word = attention_pool(m, self.fw_frame_weight[sl, sl], temp, mask4)  # (Bt, Bv, L)
        frames_then = attention_pool(per_frame, self.fw_frame_weight2[sl, sl], temp, mask3)
        words_then = attention_pool(per_word, self.fw_word_weight2[sl, sl], temp, mask3)
        return 0.5 * (frames_then + words_then)

    # ----------------------------------------------------------------------------- loss

    def extra_loss(self, text: State, video: State) -> Tensor | None:
        """η · CSC loss on the batch's ``[B, B]`` component scores (None when η = 0; zero for a
        batch of one, which has no negatives)."""
        last, self._last_components = self._last_components, None
        if self.csc_weight == 0:
            return None
        if last is not None and last[0] is text["queries"] and last[1] is video["frames"]:
            components = last[2]  # computed by score() on these states in this step
        else:
            components = self.score_components(text, video)  # (4, B, B)
        if components.shape[1] != components.shape[2]:
            raise GLCCLShapeError(
                f"GLCCL CSC loss needs a square batch, got {tuple(components.shape[1:])}"
            )
        if components.shape[1] < 2:
            return components.sum() * 0.0
        return self.csc_weight * csc_loss(components)

    # ------------------------------------------------------------------------------ cost

    def pair_bytes(self, text: State, video: State) -> int:
        """Upper bound of the per-pair working set of :meth:`score` (every intermediate counted
        as if nothing were freed): GEMM output and its transposed copy ``2(2L+2)N``, GLIM
        logits/masking/softmax/Gram products ``5(L+1)N``, the ``M`` matrix and its two poolings
        ``16L²`` (scaled, masked, softmaxed, mixed and multiplied copies), vectors ``24L + 4N``.
        """
        length = text["queries"].shape[1] // 2 - 1
        n = video["frames"].shape[1]
        elements = 2 * (2 * length + 2) * n + 5 * (length + 1) * n + 16 * length**2
        elements += 24 * length + 4 * n
        return 4 * elements  # float32

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair with cached states (softmax/exp not counted).

        GEMM of the 2L+2 queries with the N frames ``(2L+2)·N·D``; pooled-feature norms through
        the Gram matrix ``(L+1)·(N² + N)``; S_vs ``N``; u and r ``2·L·N``; M ``L²·N``; S_vw and
        S_sf poolings ``2·(L² + L)``; S_fw first poolings ``2·(L³ + L²)``, second ``2·(L² + L)``.
        """
        lw, n, d = num_words, num_frames, dim
        total = (2 * lw + 2) * n * d
        total += (lw + 1) * (n * n + n)
        total += n + 2 * lw * n + lw * lw * n
        total += 2 * (lw * lw + lw)
        total += 2 * (lw**3 + lw * lw) + 2 * (lw * lw + lw)
        return total

    # --------------------------------------------------------------------------- reference

    def reference_score(self, text: State, video: State) -> Tensor:
        """The plain scorer of :func:`glccl_reference_scores` (a Python loop over words, pooled
        features materialised), averaged over the four components: ``[Bt, Bv]``."""
        return glccl_reference_scores(self, text, video).mean(0)

    @staticmethod
    def reference_pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair of :func:`glccl_reference_scores` (softmax/exp not counted).

        GLIM logits and pooled features for the sentence and every word ``2·(L+1)·N·D``, their
        normalisation ``(L+1)·D``, S_vs ``D``, u and r ``2·L·D``, M ``L²·D``, the L×L poolings
        ``2·(L² + L)`` (S_vw, S_sf), ``2·(L³ + L²)`` and ``2·(L² + L)`` (S_fw).
        """
        lw, n, d = num_words, num_frames, dim
        total = 2 * (lw + 1) * n * d + (lw + 1) * d + d + 2 * lw * d + lw * lw * d
        total += 2 * (lw * lw + lw) + 2 * (lw**3 + lw * lw) + 2 * (lw * lw + lw)
        return total


# ------------------------------------------------------------------------------ reference


def glccl_reference_scores(head: GLCCLHead, text: State, video: State) -> Tensor:
    """The four GLCCL scores ``[4, Bt, Bv]`` computed plainly, as the reference code does:
    pooled features materialised per word (a Python loop over words, ``[Bt, Bv, L, D]``),
    normalised explicitly, every pooling written along its own axis. For tests and benchmarks
    (:meth:`GLCCLHead.reference_score` is their mean; its cost is
    :meth:`GLCCLHead.reference_pair_flops`).

    Uses only the raw ``sentence``, ``words``, ``word_mask``, ``frames`` and ``frame_mask``
    entries of the states and the head's parameters.
    """
    t, w = text["sentence"].float(), text["words"].float()  # (Bt, D), (Bt, L, D)
    v = video["frames"].float()  # (Bv, N, D)
    bt, length, _ = w.shape
    if head.mask_padding:
        wmask = text["word_mask"].bool()  # (Bt, L)
        fmask: Tensor | None = video["frame_mask"].bool()  # (Bv, N)
    else:
        wmask = torch.ones(bt, length, dtype=torch.bool, device=w.device)
        fmask = None
    temp = head.pool_temperature

    def normalize(x: Tensor) -> Tensor:  # a zero vector (zeroed padding) stays zero
        return x / x.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)

    def pooled(query: Tensor) -> Tensor:  # (Bt, D) → (Bt, Bv, D)
        weights = glim_pool(query, v, fmask, head.tau)  # (Bt, Bv, N)
        return torch.einsum("abn,bnd->abd", weights, v)

    def pool_along(x: Tensor, weight: Tensor, mask: Tensor, dim: int) -> Tensor:
        """Σ_i x_i [softmax_i(x/temp) W]_i along ``dim`` (mask broadcast to x)."""
        logits = (x / temp).masked_fill(~mask, float("-inf"))
        probs = logits.softmax(dim=dim).movedim(dim, -1)
        mixed = torch.einsum("...i,ij->...j", probs, weight).movedim(-1, dim)
        return torch.where(mask, x * mixed, torch.zeros_like(x)).sum(dim)

    w_l = slice(0, length)
    sentence_hat, word_hat = normalize(t), normalize(w)
    video_feat = normalize(pooled(t))  # (Bt, Bv, D)
    frame_feat = normalize(torch.stack([pooled(w[:, i]) for i in range(length)], dim=2))

    s_vs = torch.einsum("ad,abd->ab", sentence_hat @ head.global_weight, video_feat)

    mask_abl = wmask[:, None, :].expand(bt, v.shape[0], length)  # (Bt, Bv, L)
    u = torch.einsum("abd,ald->abl", video_feat, word_hat)
    s_vw = pool_along(u, head.video_word_weight[w_l, w_l], mask_abl, dim=2)

    r = torch.einsum("ad,abld->abl", sentence_hat, frame_feat)
    s_sf = pool_along(r, head.sentence_frame_weight[w_l, w_l], mask_abl, dim=2)

    m = torch.einsum("aid,abkd->abik", word_hat @ head.local_weight, frame_feat)  # (Bt,Bv,L,L)
    mask_ik = mask_abl[..., :, None] & mask_abl[..., None, :]  # (Bt, Bv, L, L)
    per_frame = pool_along(m, head.fw_word_weight[w_l, w_l], mask_ik, dim=2)  # over i → (.., k)
    per_word = pool_along(m, head.fw_frame_weight[w_l, w_l], mask_ik, dim=3)  # over k → (.., i)
    frames_then = pool_along(per_frame, head.fw_frame_weight2[w_l, w_l], mask_abl, dim=2)
    words_then = pool_along(per_word, head.fw_word_weight2[w_l, w_l], mask_abl, dim=2)
    s_fw = 0.5 * (frames_then + words_then)
    return torch.stack([s_vs, s_vw, s_sf, s_fw])


__all__ = [
    "GLCCLHead",
    "GLCCLShapeError",
    "TemporalEncoder",
    "csc_loss",
    "glccl_reference_scores",
    "glim_pool",
]
