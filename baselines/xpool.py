"""X-Pool (SPEC §2.2; Gorti et al., CVPR 2022): text-conditioned attention pooling of frames.

For a text t and the frames f_1..f_N of a video (reference: layer6ai-labs/xpool,
modules/transformer.py):

    x_j = LN1(f_j),  q = W_q LN1(t) + b_q,  k_j = W_k x_j + b_k,  v_j = W_v x_j + b_v
    α_hj = softmax_j(q_h · k_hj / sqrt(d_h))          (per head h, padded frames masked)
    o = W_o concat_h(Σ_j α_hj v_hj) + b_o
    a = LN2(o),  r = a + Dropout(W_l a + b_l),  z = LN3(r)
    score(t, v) = cos(t, z)

Every projection starts as the identity with a zero bias; LN1 is shared by text and frames.

Exact, fast scoring. The reference applies ``W_o`` and ``W_l`` (two D×D products) to every
(text, video) pair. Both move to the per-video side because the attention output is a weighted sum
of frames with Σ_j α_hj = 1 for every head:

* ``W_o`` is linear: ``o = Σ_h Σ_j α_hj U_hj`` with ``U_hj = W_o[:, h] v_hj + b_o/H`` computed
  once per frame (v's bias rides along inside v; b_o is shared out over the H heads);
* centring is linear too: ``o − μ = Σ α C_hj`` with ``C_hj = U_hj − mean_d(U_hj)``; LN2 then only
  scales by the per-pair 1/σ: ``a = γ2 ⊙ (o − μ)/σ + β2``;
* hence ``a + W_l a + b_l = (Σ α R_hj)/σ + β2 + W_l β2 + b_l`` with ``R_hj = (I + W_l)(γ2 ⊙ C_hj)``,
  again once per frame. In training the dropout sits on the ``W_l`` branch only, which is then
  recovered as ``Σ α R − γ2 ⊙ (o − μ)``.

Per pair what remains is O(N·D) (logits and two pooled sums, as batched matrix products) plus O(D)
element-wise work (the LN statistics, the residual, LN3 and the cosine), instead of O(D²). The
pooled ``[Bt, Bv, D]`` tensors exist only per chunk (``tvrbench.chunking.chunked_score``).
:meth:`XPoolHead.reference_score` is the plain computation, laid out as the reference repository
computes it, the yardstick of the tests and of ``benchmarks/scoring.py``; to run it from the states
alone they also carry the raw sentence and frame embeddings.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.retrieval import RetrievalHead, State


class XPoolHead(RetrievalHead):
    """X-Pool's cross-modal attention pooling and cosine scoring.

    Args:
        dim: joint embedding width D.
        num_heads: attention heads (D must be divisible by it; paper: 1).
        dropout: dropout on the residual branch ``W_l a`` (active in training only; paper: 0.3).

    States:
        video: ``keys [Bv, H, N, D/H]``, ``values [Bv, H, N, 2D]`` (first D: ``C = U − mean(U)``
        with ``U = W_o v + b_o/H``; last D: ``(I + W_l)(γ2 ⊙ C)``), ``frame_mask [Bv, N]`` and,
        for :meth:`reference_score` only, ``frame_emb [Bv, N, D]`` (raw, padding zeroed).
        text: ``sentence [Bt, D]`` (unit vector), ``query [Bt, H, D/H]`` (scale folded in) and,
        for :meth:`reference_score` only, ``sentence_emb [Bt, D]`` (raw: LN1 is not exactly
        scale-invariant, its ε sees the norm).
    """

    def __init__(self, dim: int, num_heads: int = 1, dropout: float = 0.3) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"X-Pool: embedding width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.layer_norm1 = nn.LayerNorm(dim)
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.linear_proj = nn.Linear(dim, dim)
        self.layer_norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Identity weights and zero biases for every projection; LayerNorms at (1, 0)."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj, self.linear_proj):
            nn.init.eye_(lin.weight)
            nn.init.zeros_(lin.bias)
        for ln in (self.layer_norm1, self.layer_norm2, self.layer_norm3):
            ln.reset_parameters()

    # ----------------------------------------------------------------------------- states

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → keys, folded values, mask."""
        bv, n, d = frame_emb.shape
        h, hd = self.num_heads, self.head_dim
        mask = frame_mask.bool()
        raw = frame_emb.where(mask.unsqueeze(-1), 0.0)  # (Bv, N, D): non-finite padding → 0
        x = self.layer_norm1(raw)  # (Bv, N, D)
        keys = self.k_proj(x).view(bv, n, h, hd).transpose(1, 2).contiguous()  # (Bv, H, N, hd)
        v = self.v_proj(x).view(bv, n, h, hd)  # (Bv, N, H, hd)
        w_o = self.out_proj.weight.view(d, h, hd)  # (D, H, hd): column block of each head
        # Σ_h Σ_j α_hj = H, so b_o/H per (head, frame) adds up to b_o after pooling.
        u = torch.einsum("bnhe,dhe->bhnd", v, w_o) + self.out_proj.bias / h  # (Bv, H, N, D)
        centred = u - u.mean(dim=-1, keepdim=True)  # (Bv, H, N, D)
        scaled = centred * self.layer_norm2.weight  # (Bv, H, N, D) = diag(γ2) C
        mixed = scaled + scaled @ self.linear_proj.weight.t()  # (Bv, H, N, D) = (I + W_l) γ2 C
        values = torch.cat([centred, mixed], dim=-1)  # (Bv, H, N, 2D)
        # frame_emb: for the reference only
        return {"keys": keys, "values": values, "frame_mask": mask, "frame_emb": raw}

    def text_state(self, text: TextFeatures) -> State:
        """``sentence [Bt, D]`` (normalised, for the cosine), ``query [Bt, H, D/H]`` and the raw
        ``sentence_emb [Bt, D]`` (for the reference)."""
        t = text.sentence
        q = self.q_proj(self.layer_norm1(t)) / math.sqrt(self.head_dim)  # (Bt, D)
        query = q.view(t.shape[0], self.num_heads, self.head_dim)  # (Bt, H, hd)
        return {"sentence": F.normalize(t, dim=-1), "query": query, "sentence_emb": t}

    # ----------------------------------------------------------------------------- scoring

    def attention_weights(self, query: Tensor, keys: Tensor, frame_mask: Tensor) -> Tensor:
        """Softmax over frames for every (text, video, head).

        Args:
            query: ``[Bt, H, hd]`` (already scaled by 1/sqrt(hd)).
            keys: ``[Bv, H, N, hd]``.
            frame_mask: ``[Bv, N]`` bool.
        Returns:
            ``[Bv, Bt, H·N]`` weights; padded frames get exactly 0. (A video without any real
            frame would get uniform weights over its padding — finite, never NaN.)
        """
        bt, h, hd = query.shape
        bv, _, n, _ = keys.shape
        k = keys.transpose(0, 1).reshape(h, bv * n, hd)  # (H, Bv·N, hd)
        logits = torch.bmm(k, query.permute(1, 2, 0)).view(h, bv, n, bt)  # (H, Bv, N, Bt)
        pad = ~frame_mask.view(1, bv, n, 1)
        logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
        weights = logits.softmax(dim=2)  # (H, Bv, N, Bt)
        return weights.permute(1, 3, 0, 2).reshape(bv, bt, h * n)  # (Bv, Bt, H·N)

    def pooled(self, text: State, video: State) -> Tensor:
        """``z_{v|t}`` for every pair: ``[Bv, Bt, D]`` (the reference's layout)."""
        d = self.dim
        weights = self.attention_weights(text["query"], video["keys"], video["frame_mask"])
        bv, bt, hn = weights.shape
        values = video["values"].reshape(bv, hn, 2 * d)  # (Bv, H·N, 2D)
        pooled = torch.bmm(weights, values)  # (Bv, Bt, 2D)
        o_c = pooled[..., :d]  # (Bv, Bt, D) = o − mean(o), o = W_o(Σ α v) + b_o
        y = pooled[..., d:]  # (Bv, Bt, D) = (I + W_l) diag(γ2) (o − mean(o))
        ln2 = self.layer_norm2
        var = torch.linalg.vector_norm(o_c, dim=-1, keepdim=True).square() / d  # (Bv, Bt, 1)
        inv_sigma = torch.rsqrt(var + ln2.eps)  # (Bv, Bt, 1): LN2's 1/σ
        shift = self.linear_proj(ln2.bias)  # (D,) = W_l β2 + b_l
        if self.training and self.dropout.p > 0:
            g_oc = o_c * ln2.weight  # (Bv, Bt, D) = γ2 ⊙ (o − μ)
            a = g_oc * inv_sigma + ln2.bias  # (Bv, Bt, D) = LN2(o)
            lin = (y - g_oc) * inv_sigma + shift  # (Bv, Bt, D) = W_l a + b_l
            residual = a + self.dropout(lin)
        else:
            # a + W_l a + b_l in one pass: (Bv, Bt, D)
            residual = torch.addcmul(ln2.bias + shift, y, inv_sigma)
        return self.layer_norm3(residual)  # (Bv, Bt, D)

    def score(self, text: State, video: State) -> Tensor:
        """``[Bt, Bv]`` cosine between each sentence and its text-conditioned video embedding."""
        z = self.pooled(text, video)  # (Bv, Bt, D)
        t = text["sentence"]  # (Bt, D), unit norm
        dots = torch.bmm(z.transpose(0, 1), t.unsqueeze(-1)).squeeze(-1)  # (Bt, Bv)
        norms = torch.linalg.vector_norm(z, dim=-1).t()  # (Bt, Bv)
        return dots / norms.clamp_min(1e-12)

    def pair_bytes(self, text: State, video: State) -> int:
        # Per pair: logits, softmax and its re-laid-out copy (3·H·N); the pooled [2D] block, the
        # residual, LN3's output and the product in the cosine (5·D). Training keeps LN2's output,
        # the W_l branch and the dropout mask alive for autograd (≈ 5·D more).
        h, n = video["keys"].shape[1], video["keys"].shape[2]
        per_pair = 3 * h * n + (10 if self.training else 5) * self.dim
        return video["values"].element_size() * per_pair

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per (text, video) pair with both states cached (evaluation path).

        logits Σ_h N·(D/H) = N·D; pooling into [o − μ, (I + W_l)γ2(o − μ)]: 2·N·D; LN2's
        variance D; residual (addcmul) D; LN3 statistics 2·D and affine 2·D; cosine (dot and
        norm) 2·D; softmax ~N. Total 3·N·D + 8·D + N.
        """
        return 3 * num_frames * dim + 8 * dim + num_frames

    # --------------------------------------------------------------------------- reference

    def reference_score(self, text: State, video: State) -> Tensor:
        """X-Pool scores ``[Bt, Bv]`` laid out as the reference repository computes them.

        Materialises the pooled ``[Bv, Bt, D]`` for all pairs of the call at once and applies
        ``W_o`` and ``W_l`` per pair, from the raw ``sentence_emb [Bt, D]``, ``frame_emb
        [Bv, N, D]`` and ``frame_mask [Bv, N]`` entries of the states (nothing folded). Memory
        grows as Bv·Bt·D: for tests and benchmarks, on blocks of a gallery.
        """
        text_emb, frame_emb = text["sentence_emb"], video["frame_emb"]
        bt, d = text_emb.shape
        bv, n, _ = frame_emb.shape
        h, hd = self.num_heads, self.head_dim
        t = self.layer_norm1(text_emb)  # (Bt, D)
        f = self.layer_norm1(frame_emb)  # (Bv, N, D)
        q = self.q_proj(t).reshape(bt, h, hd).permute(1, 2, 0)  # (H, hd, Bt)
        k = self.k_proj(f).reshape(bv, n, h, hd).permute(0, 2, 1, 3)  # (Bv, H, N, hd)
        v = self.v_proj(f).reshape(bv, n, h, hd).permute(0, 2, 3, 1)  # (Bv, H, hd, N)
        logits = (k @ q) / math.sqrt(hd)  # (Bv, H, N, Bt)
        pad = ~video["frame_mask"].bool()[:, None, :, None]
        logits = logits.masked_fill(pad, torch.finfo(logits.dtype).min)
        weights = F.softmax(logits, dim=2)  # (Bv, H, N, Bt)
        attention = (v @ weights).permute(0, 3, 1, 2).reshape(bv, bt, d)  # (Bv, Bt, D)
        o = self.layer_norm2(self.out_proj(attention))  # (Bv, Bt, D)
        out = self.layer_norm3(o + self.dropout(self.linear_proj(o)))  # (Bv, Bt, D)
        t_hat, out_hat = F.normalize(text_emb, dim=-1), F.normalize(out, dim=-1)
        return torch.einsum("td,vtd->tv", t_hat, out_hat)  # (Bt, Bv)

    @staticmethod
    def reference_pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair of :meth:`reference_score`: logits N·D, pooling N·D, ``W_o``
        D², LN2 4·D, ``W_l`` D², residual D, LN3 4·D, cosine 3·D, softmax ~N."""
        return 2 * dim * dim + 2 * num_frames * dim + 12 * dim + num_frames


__all__ = ["XPoolHead"]
