"""Operations shared by the heads of X-CLIP, GLSCL and GLCCL (SPEC §2.4-§2.6).

* :func:`masked_softmax`: a softmax over the real positions only (padding gets weight 0);
* :func:`attention_pool`: X-CLIP's "attention over similarity matrices" (AOSM) pooling
  ``Σ_i x_i [softmax(x/τ) W]_i``, used by X-CLIP and GLCCL for every word/frame pooling;
* :class:`TemporalHead`: a head with an optional seqTransf temporal encoder that the
  :class:`~tvrbench.retrieval.RetrievalModule` initialises once from its CLIP backbone
  (:meth:`TemporalHead.attach`, as ``temporal_init`` says; :mod:`tvrbench.temporal`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from tvrbench.backbone import ClipBackbone
from tvrbench.retrieval import RetrievalHead
from tvrbench.temporal import TEMPORAL_INITS, TemporalEncoder, initialise_temporal

TEMPORAL_OFF_NOTE = "temporal encoder: off (use_temporal=False)"


def masked_softmax(logits: Tensor, mask: Tensor | None, dim: int = -1) -> Tensor:
    """Softmax along ``dim`` over the positions where ``mask`` is True (weight exactly 0
    elsewhere). ``mask`` broadcasts against ``logits``; None means every position counts.

    An all-masked row comes out uniform instead of NaN (callers never use such rows).

    >>> masked_softmax(torch.zeros(3), torch.tensor([True, True, False])).tolist()
    [0.5, 0.5, 0.0]
    """
    if mask is None:
        return logits.softmax(dim=dim)
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min).softmax(dim=dim)


def attention_pool(
    x: Tensor, weight: Tensor, temperature: float, mask: Tensor | None = None
) -> Tensor:
    """X-CLIP-style pooling along the last axis: ``Σ_i x_i [softmax(x/temperature) W]_i`` with
    ``[pW]_i = Σ_k p_k W_ki``.

    Args:
        x: ``[..., L]`` similarities.
        weight: ``[L, L]`` learnable matrix.
        temperature: softmax temperature.
        mask: bool, broadcastable to ``x``; masked positions get no softmax weight and are left
            out of the sum (None: every position counts).
    Returns:
        ``[...]`` pooled similarity.
    """
    probs = masked_softmax(x / temperature, mask)  # (..., L)
    mixed = probs @ weight  # (..., L)
    if mask is not None:
        mixed = mixed * mask
    return (x * mixed).sum(-1)


def checked_temporal_init(how: str) -> str:
    """``how`` if it names a temporal initialisation (:data:`tvrbench.temporal.TEMPORAL_INITS`),
    else a one-line ValueError."""
    if how not in TEMPORAL_INITS:
        raise ValueError(f"temporal_init: {how!r} is not one of {', '.join(TEMPORAL_INITS)}")
    return how


class TemporalHead(RetrievalHead):
    """A head whose ``temporal`` (a :class:`~tvrbench.temporal.TemporalEncoder`, or None when
    ``use_temporal=False``) is initialised from the backbone once the module has built both.

    Subclasses set ``self.temporal`` and ``self.temporal_init`` (``"clip_text"``: blocks and
    positions from CLIP's text tower, the reference's; ``"identity"``; see
    :func:`tvrbench.temporal.initialise_temporal`) in their constructor.
    """

    temporal: TemporalEncoder | None
    temporal_init: str

    def attach(self, backbone: ClipBackbone) -> list[str]:
        """Initialise the temporal encoder from ``backbone``'s CLIP as ``temporal_init`` says; the
        one note says how (a ``clip_text`` that does not fit the backbone falls back to
        ``identity``, and the note says why)."""
        if self.temporal is None:
            return [TEMPORAL_OFF_NOTE]
        return [initialise_temporal(self.temporal, self.temporal_init, backbone.clip)]


__all__ = [
    "TEMPORAL_OFF_NOTE",
    "TemporalHead",
    "attention_pool",
    "checked_temporal_init",
    "masked_softmax",
]
