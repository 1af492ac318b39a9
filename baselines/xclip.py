"""X-CLIP: cross-grained contrast with attention over similarity matrices (SPEC §2.5).

Ma, Xu, Sun, Yan, Zhang, Ji (ACM MM 2022, arXiv 2207.07285; reference code xuguohai/X-CLIP,
modules/modeling_xclip.py). CLIP4Clip with a seqTransf temporal encoder and four cross-grained
scores, each aggregated by "attention over similarity matrices" (AOSM):

* features: sentence t, words w_1..w_L (every token position), original CLIP frames f_1..f_N,
  temporally encoded frames ``v_j = Transformer(f_j + p_j) + f_j``; hats are L2 normalisations;
* video vector ``v̄ = normalise(masked mean_j normalise(v_j))``, one per video; the frame axis of
  S_sf and S_fw is the ORIGINAL CLIP frames ``f̂_j``, not ``v_j``;
* AOSM along an axis of similarities ``x``: ``Σ_k x_k [softmax(x/0.01) W]_k`` with
  ``[aW]_k = Σ_m a_m W_mk`` and a learnable, identity-initialised square W;
* ``S_vs = (t̂ᵀW_g) v̄``; ``S_vw`` = AOSM over words of ``u_i = ŵ_iᵀ v̄`` (W_1, L×L);
  ``S_sf`` = AOSM over frames of ``r_j = t̂ᵀ f̂_j`` (W_2, N×N); ``S_fw`` from
  ``M_ij = (ŵ_iᵀ W_l) f̂_j`` (L×N): per frame over words (W_3, L×L) → ``c [N]``, per word over
  frames (W_4, N×N) → ``d [L]``, then ``½(AOSM_frames(c; W_5) + AOSM_words(d; W_6))`` (W_5 N×N,
  W_6 L×L). The score is the mean of the four, unscaled (the module multiplies by s).

Decisions (the reference code leaves them implicit):

* **Padding.** With ``mask_padding=True`` (default) padded word positions (``word_mask`` False;
  start and end tokens are real, exactly the attention mask) and padded frames take part in no
  softmax and no sum. With ``mask_padding=False`` every position joins every softmax and sum, as
  in the reference (its AOSM masks nothing). A padded frame here is a zero vector (the backbone
  skips padded frames), so its cosines are 0; the reference encodes an all-zero image instead.
  The mean giving ``v̄`` and the temporal encoder's attention keys are masked in both modes (the
  reference masks both).
* **Sizes.** W_1, W_3, W_6 are built for ``max_words``, W_2, W_4, W_5 for ``max_frames``; a shorter
  text or video uses the leading block of each matrix (with masking, identical to padding it).
  Longer inputs are an error, and so is loading a checkpoint built for other sizes.
* Scoring runs in float32 with autocast off, even under mixed precision: the 0.01 temperature
  multiplies the rounding errors of bf16 cosines by 100.

Fast scoring. The states cache every per-item product: ``t̂``, ``ŵ``, ``t̂ᵀW_g``, ``ŵᵀW_l`` per
text, ``f̂`` and ``v̄`` per video. A block of pairs then needs four GEMMs (``t̂W_g·v̄``, ``ŵ·v̄``,
``t̂·f̂``, ``ŵW_l·f̂``; the last gives M ``[Bt, Bv, L, N]``) and six batched AOSM poolings, with no
Python loop over pairs, words or frames: ``(L+1)(N+1)·D + L·N·(L+N) + 2·L·N + 2(L²+N²) + 2(L+N)``
multiply-adds per pair (:meth:`XCLIPHead.pair_flops`), the same order as SPEC's count of the
reference (:meth:`XCLIPHead.reference_pair_flops`, ≈ 2.70 M at L = N = 64, D = 512).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.layers import TemporalHead, attention_pool, checked_temporal_init
from tvrbench.retrieval import State
from tvrbench.temporal import TemporalEncoder, TemporalShapeError

# Parameter name → (symbol, the size it is built for): the head's learnable score matrices.
MATRICES: dict[str, tuple[str, str]] = {
    "global_weight": ("W_g", "dim"),
    "local_weight": ("W_l", "dim"),
    "video_word_weight": ("W_1", "max_words"),
    "sentence_frame_weight": ("W_2", "max_frames"),
    "fw_word_weight": ("W_3", "max_words"),
    "fw_frame_weight": ("W_4", "max_frames"),
    "fw_frame_weight2": ("W_5", "max_frames"),
    "fw_word_weight2": ("W_6", "max_words"),
}


class XCLIPShapeError(TemporalShapeError):
    """Inputs whose sizes exceed what the head was built for (max_words, max_frames)."""


class XCLIPCheckpointError(RuntimeError):
    """A state dict whose score matrices were built for other max_words/max_frames (or D)."""


class XCLIPHead(TemporalHead):
    """X-CLIP's temporal encoder, video vector and four AOSM-aggregated scores.

    Args:
        dim: joint embedding width D.
        max_words: L, size of W_1, W_3, W_6 (texts may be shorter; a checkpoint is tied to it).
        max_frames: N, size of W_2, W_4, W_5 and positions of the temporal encoder.
        temporal_layers: blocks of the temporal encoder (reference code 4; paper §3.1 says 3).
        temporal_init: ``"clip_text"`` (the reference: blocks and positions from CLIP's text
            tower, at :meth:`attach`) or ``"identity"``; see
            :func:`tvrbench.temporal.initialise_temporal`.
        pool_temperature: softmax temperature of every AOSM pooling (on cosines).
        mask_padding: padded words and frames take part in nothing (default); False lets them
            join every AOSM softmax and sum, as the reference does.
        use_temporal: apply the temporal encoder (False: v = f, for ablations).

    States: text ``sentence_hat [Bt, D]`` (t̂), ``word_hat [Bt, L, D]`` (ŵ), ``word_mask [Bt, L]``,
    ``sentence_query [Bt, D]`` (t̂ᵀW_g), ``word_query [Bt, L, D]`` (ŵᵀW_l); video
    ``frames_hat [Bv, N, D]`` (f̂, the original CLIP frames), ``frame_mask [Bv, N]``,
    ``video_vector [Bv, D]`` (v̄). All float32.
    """

    scores_in_float32 = True  # its scoring upcasts to float32 with autocast off (SPEC §2.7)

    #: Published DiDeMo text→video (paper Tab. 4, ViT-B/32; no R@10 or MdR published).
    PUBLISHED_DIDEMO_T2V = {
        "R@1": 45.2,
        "R@5": 74.0,
        "R@10": None,
        "MdR": None,
        "MnR": 14.6,
        "source": "X-CLIP (Ma et al., ACM MM 2022) Tab. 4, ViT-B/32",
        "protocol": "paragraph-to-video, 31 s, 64 frames, 20 epochs, checkpoint chosen on val",
    }

    def __init__(
        self,
        dim: int,
        max_words: int = 32,
        max_frames: int = 64,
        temporal_layers: int = 4,
        temporal_init: str = "clip_text",
        pool_temperature: float = 0.01,
        mask_padding: bool = True,
        use_temporal: bool = True,
    ) -> None:
        super().__init__()
        self.temporal_init = checked_temporal_init(temporal_init)
        self.dim, self.max_words, self.max_frames = dim, max_words, max_frames
        self.pool_temperature, self.mask_padding = pool_temperature, mask_padding
        self.temporal = TemporalEncoder(dim, temporal_layers, max_frames) if use_temporal else None
        sizes = {"dim": dim, "max_words": max_words, "max_frames": max_frames}
        for name, (_, size) in MATRICES.items():
            self.register_parameter(name, nn.Parameter(torch.eye(sizes[size])))

    # --------------------------------------------------------------------------- states

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → f̂, mask and v̄."""
        if frame_emb.shape[1] > self.max_frames:
            raise XCLIPShapeError(
                f"X-CLIP head: {frame_emb.shape[1]} frames exceed max_frames={self.max_frames}"
            )
        frame_mask = frame_mask.bool()
        temporal = self.temporal(frame_emb, frame_mask) if self.temporal is not None else frame_emb
        with torch.autocast(device_type=frame_emb.device.type, enabled=False):
            frames_hat = F.normalize(frame_emb.float(), dim=-1)  # (Bv, N, D)
            weights = frame_mask.float()[..., None]  # (Bv, N, 1)
            mean = (F.normalize(temporal.float(), dim=-1) * weights).sum(1)  # (Bv, D)
            mean = mean / weights.sum(1).clamp_min(1.0)
            video_vector = F.normalize(mean, dim=-1)  # (Bv, D)
        return {"frames_hat": frames_hat, "frame_mask": frame_mask, "video_vector": video_vector}

    def text_state(self, text: TextFeatures) -> State:
        """Text features → t̂, ŵ, mask and the two projected queries t̂ᵀW_g, ŵᵀW_l."""
        if text.words.shape[1] > self.max_words:
            raise XCLIPShapeError(
                f"X-CLIP head: {text.words.shape[1]} tokens exceed max_words={self.max_words}"
            )
        with torch.autocast(device_type=text.words.device.type, enabled=False):
            sentence_hat = F.normalize(text.sentence.float(), dim=-1)  # (Bt, D)
            word_hat = F.normalize(text.words.float(), dim=-1)  # (Bt, L, D)
            return {
                "sentence_hat": sentence_hat,
                "word_hat": word_hat,
                "word_mask": text.word_mask.bool(),
                "sentence_query": sentence_hat @ self.global_weight,  # (Bt, D)
                "word_query": word_hat @ self.local_weight,  # (Bt, L, D)
            }

    # -------------------------------------------------------------------------- scoring

    def score(self, text: State, video: State) -> Tensor:
        """Unscaled X-CLIP score ``[Bt, Bv]``: the mean of the four components (float32)."""
        return self.score_components(text, video).mean(0)

    def score_components(self, text: State, video: State) -> Tensor:
        """``[4, Bt, Bv]``: S_vs, S_vw, S_sf, S_fw (unscaled), float32 with autocast off."""
        with torch.autocast(device_type=text["word_hat"].device.type, enabled=False):
            return self._components(text, video)

    def _components(self, text: State, video: State) -> Tensor:
        sentence_hat = text["sentence_hat"].float()  # (Bt, D)
        word_hat, word_query = text["word_hat"].float(), text["word_query"].float()  # (Bt, L, D)
        frames_hat = video["frames_hat"].float()  # (Bv, N, D)
        video_vector = video["video_vector"].float()  # (Bv, D)
        bt, length, d = word_hat.shape
        bv, n, _ = frames_hat.shape
        temp = self.pool_temperature
        words, frames = slice(0, length), slice(0, n)  # leading blocks of the matrices

        word_mask = frame_mask = None
        if self.mask_padding:
            word_mask = text["word_mask"][:, None, :]  # (Bt, 1, L)
            frame_mask = video["frame_mask"][None, :, :]  # (1, Bv, N)
        flat_frames = frames_hat.reshape(bv * n, d).t()  # (D, Bv·N)

        s_vs = text["sentence_query"].float() @ video_vector.t()  # (Bt, Bv)

        u = (word_hat.reshape(bt * length, d) @ video_vector.t()).view(bt, length, bv)
        u = u.transpose(1, 2)  # (Bt, Bv, L): ŵ_i · v̄
        s_vw = attention_pool(u, self.video_word_weight[words, words], temp, word_mask)

        r = (sentence_hat @ flat_frames).view(bt, bv, n)  # (Bt, Bv, N): t̂ · f̂_j
        s_sf = attention_pool(r, self.sentence_frame_weight[frames, frames], temp, frame_mask)

        m = (word_query.reshape(bt * length, d) @ flat_frames).view(bt, length, bv, n)
        m = m.transpose(1, 2)  # (Bt, Bv, L, N): M_ij = (ŵ_iᵀ W_l) f̂_j
        words_mask4 = word_mask[:, :, None, :] if word_mask is not None else None  # (Bt,1,1,L)
        frames_mask4 = frame_mask[:, :, None, :] if frame_mask is not None else None  # (1,Bv,1,N)
        c = attention_pool(  # (Bt, Bv, N): per frame, over words
            m.transpose(-1, -2), self.fw_word_weight[words, words], temp, words_mask4
        )
        d_word = attention_pool(m, self.fw_frame_weight[frames, frames], temp, frames_mask4)
        frames_then = attention_pool(c, self.fw_frame_weight2[frames, frames], temp, frame_mask)
        words_then = attention_pool(d_word, self.fw_word_weight2[words, words], temp, word_mask)
        s_fw = 0.5 * (frames_then + words_then)  # (Bt, Bv)
        return torch.stack([s_vs, s_vw, s_sf, s_fw])  # (4, Bt, Bv)

    def reference_score(self, text: State, video: State) -> Tensor:
        """The plain scorer of :func:`xclip_reference_scores`, averaged: ``[Bt, Bv]``."""
        return xclip_reference_scores(self, text, video).mean(0)

    # ------------------------------------------------------------------------- checkpoints

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Refuse, in one line, a state dict whose matrices were built for other sizes (torch
        would list every mismatch, temporal encoder included, over many lines)."""
        found: dict[str, int] = {}
        mismatched: list[str] = []
        for name, (symbol, size) in MATRICES.items():
            saved = state_dict.get(prefix + name)
            if saved is None:
                continue
            found.setdefault(size, int(saved.shape[0]))
            expected = tuple(getattr(self, name).shape)
            if tuple(saved.shape) != expected:
                mismatched.append(f"{symbol} {tuple(saved.shape)} (expected {expected})")
        if mismatched:
            built = ", ".join(f"{k}={v}" for k, v in found.items() if k != "dim")
            mine = f"max_words={self.max_words}, max_frames={self.max_frames}"
            raise XCLIPCheckpointError(
                f"X-CLIP checkpoint built for {built} (dim={found.get('dim')}), this model for "
                f"{mine} (dim={self.dim}): found {', '.join(mismatched)}; rebuild the model "
                "with the checkpoint's max_words/max_frames"
            )
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ------------------------------------------------------------------------------ cost

    def pair_bytes(self, text: State, video: State) -> int:
        """Upper bound of the per-pair working set of :meth:`score`, every intermediate
        counted as if nothing were freed (autograd keeps most of them in training):

        M from its GEMM ``L·N``; each of its two poolings up to 7 copies of ``L·N`` (scaled,
        masked, softmaxed, made contiguous for the matmul, mixed, masked, multiplied); the four
        vectors u, r, c, d and their poolings ``8(L+N)`` twice over (GEMM outputs, pooled
        copies); the four scores, their stack and mean ``16``.
        """
        length, n = text["word_hat"].shape[1], video["frames_hat"].shape[1]
        elements = 15 * length * n + 16 * (length + n) + 16
        return 4 * elements  # float32

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per pair of :meth:`score` with cached states (softmax/exp not counted).

        GEMMs: S_vs ``D``, u ``L·D``, r ``N·D``, M ``L·N·D`` (together ``(L+1)(N+1)·D``);
        AOSM mixing ``[softmax·W]``: S_vw ``L²``, S_sf ``N²``, c ``N·L²``, d ``L·N²``, then
        ``N² + L²``; the pooled sums ``Σ x·mixed``: ``L + N`` for S_vw/S_sf, ``2·L·N`` for c and d,
        ``N + L`` for the last two.
        """
        lw, n, d = num_words, num_frames, dim
        gemms = (lw + 1) * (n + 1) * d
        mixing = lw * n * (lw + n) + 2 * (lw * lw + n * n)
        sums = 2 * lw * n + 2 * (lw + n)
        return gemms + mixing + sums

    @staticmethod
    def reference_pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """SPEC §2.5's per-pair count of the reference: ``L·N·D + (L+N)·D + L·N·(L+N) +
        2(L² + N²) + D`` (M, u and r, the per-frame/per-word mixings, the other four mixings,
        S_vs)."""
        lw, n, d = num_words, num_frames, dim
        return lw * n * d + (lw + n) * d + lw * n * (lw + n) + 2 * (lw * lw + n * n) + d


# ------------------------------------------------------------------------------ reference


def xclip_reference_scores(head: XCLIPHead, text: State, video: State) -> Tensor:
    """The four X-CLIP scores ``[4, Bt, Bv]`` written directly from SPEC §2.5's equations: every
    pair's similarity vectors and its full ``M [Bt, Bv, L, N]`` by einsum, ``W_g``/``W_l``
    applied here (not the cached queries), each AOSM spelled out along its own axis.

    Uses the ``sentence_hat``, ``word_hat``, ``word_mask``, ``frames_hat``, ``frame_mask`` and
    ``video_vector`` entries of the states and the head's matrices. For tests and benchmarks.
    """
    t_hat, w_hat = text["sentence_hat"].float(), text["word_hat"].float()  # (Bt,D), (Bt,L,D)
    f_hat, v_bar = video["frames_hat"].float(), video["video_vector"].float()  # (Bv,N,D), (Bv,D)
    bt, length, _ = w_hat.shape
    bv, n, _ = f_hat.shape
    if head.mask_padding:
        real_word = text["word_mask"].bool()  # (Bt, L)
        real_frame = video["frame_mask"].bool()  # (Bv, N)
    else:
        real_word = torch.ones(bt, length, dtype=torch.bool, device=w_hat.device)
        real_frame = torch.ones(bv, n, dtype=torch.bool, device=w_hat.device)
    temperature = head.pool_temperature

    def aosm(x: Tensor, weight: Tensor, real: Tensor) -> Tensor:
        """Σ_k x_k [softmax_k(x/τ) W]_k over the last axis, real positions only."""
        logits = torch.where(real, x / temperature, torch.full_like(x, float("-inf")))
        a = torch.softmax(logits, dim=-1)
        aw = torch.einsum("...m,mk->...k", a, weight)  # [aW]_k = Σ_m a_m W_mk
        return torch.where(real, x * aw, torch.zeros_like(x)).sum(-1)

    word_axis = real_word[:, None, :].expand(bt, bv, length)  # (Bt, Bv, L)
    frame_axis = real_frame[None, :, :].expand(bt, bv, n)  # (Bt, Bv, N)
    w1 = head.video_word_weight[:length, :length]
    w2 = head.sentence_frame_weight[:n, :n]
    w3, w4 = head.fw_word_weight[:length, :length], head.fw_frame_weight[:n, :n]
    w5, w6 = head.fw_frame_weight2[:n, :n], head.fw_word_weight2[:length, :length]

    s_vs = torch.einsum("ad,de,be->ab", t_hat, head.global_weight, v_bar)

    u = torch.einsum("ald,bd->abl", w_hat, v_bar)  # (Bt, Bv, L)
    s_vw = aosm(u, w1, word_axis)

    r = torch.einsum("ad,bjd->abj", t_hat, f_hat)  # (Bt, Bv, N)
    s_sf = aosm(r, w2, frame_axis)

    m = torch.einsum("aid,de,bje->abij", w_hat, head.local_weight, f_hat)  # (Bt, Bv, L, N)
    per_frame = aosm(  # c_j, over words i: (Bt, Bv, N)
        m.transpose(2, 3), w3, word_axis[:, :, None, :].expand(bt, bv, n, length)
    )
    per_word = aosm(m, w4, frame_axis[:, :, None, :].expand(bt, bv, length, n))  # d_i: (Bt,Bv,L)
    s_fw = 0.5 * (aosm(per_frame, w5, frame_axis) + aosm(per_word, w6, word_axis))
    return torch.stack([s_vs, s_vw, s_sf, s_fw])


__all__ = [
    "XCLIPCheckpointError",
    "XCLIPHead",
    "XCLIPShapeError",
    "xclip_reference_scores",
]
