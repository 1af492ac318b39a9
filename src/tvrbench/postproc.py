"""Inference-time post-processing of a finished similarity matrix: DSL and QB-Norm.

Two test-time re-scorings that many published numbers use, often unstated (equations, defaults
and sources in ``../shared/POSTPROC.md``). Neither changes the model; the benchmark reports them
as separate columns, **none / DSL / QB-Norm**, never combined.

Notation: ``sim[i, j]`` = similarity of text i to video j, ``[Nt, Nv]``, on the **cosine scale**
(the module's unscaled similarity; the suite's defaults below assume it). t2v ranks row i over j,
v2t ranks column j over i; every function returns a float64 ``[Nt, Nv]`` matrix ranked the same
way as its input (rows for t2v, columns for v2t).

* **DSL** (dual softmax, CAMoE; :func:`dual_softmax`): ``Ŝ = Nt · S ⊙ softmax(λS)``, the softmax
  over the *texts* (axis 0) for t2v and over the *videos* (axis 1) for v2t (EMCL's form).
  Default λ = 100 (cosine scale; = softmax over ``100 · cos``, i.e. logit-scale λ = 1).
  Transductive: each query's prior depends on every other test query.
* **QB-Norm** with the dynamic inverted softmax (Bogolin et al., CVPR 2022;
  :func:`querybank_normalise`, :func:`qbnorm`): with a bank ``B [Nb, Nv]`` of training queries
  scored against the same test gallery, ``A = {j : #{b : j ∈ top-k(B[b])} ≥ θ}``; a query whose
  raw top-1 video is in ``A`` gets ``Ŝ[i, j] = exp(βS[i, j]) / Σ_b exp(βB[b, j])`` on its whole
  row, every other row stays raw. Defaults (official code): β = 20, k = 1, θ = 1. Rank rows only.
  v2t: queries = test videos, gallery = test texts, bank = training videos:
  ``Ŝ_v2t = QB(Sᵀ, B_vᵀ)ᵀ`` with ``B_v [Nt, Nb]`` = test texts × training videos.

Computed in float64 (``exp(βS − logsumexp_b βB)``: no overflow); ties in top-k and top-1 go to
the lower index. Bad input raises :class:`PostprocError` (one line naming the argument).
Pure functions of torch tensors: device and autograd follow the inputs; nothing is modified.

>>> import torch
>>> sim = torch.tensor([[0.9, 0.5], [0.8, 0.7]])
>>> text_to_video_ranks(sim).tolist()  # text 1 prefers video 0 ...
[1, 2]
>>> text_to_video_ranks(dual_softmax(sim, "t2v")).tolist()  # ... which prefers text 0 (DSL)
[1, 1]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from tvrbench.metrics import text_to_video_ranks, video_to_text_ranks

#: Post-processing choices, in report order.
POSTPROC_METHODS = ("none", "dsl", "qbnorm")
#: Display names.
POSTPROC_LABELS = {"none": "none", "dsl": "DSL", "qbnorm": "QB-Norm"}
DIRECTIONS = ("t2v", "v2t")


class PostprocError(ValueError):
    """An input of DSL / QB-Norm is unusable (the message names the argument and the problem)."""


@dataclass(frozen=True)
class DSLSettings:
    """DSL's one parameter: λ multiplies the cosine-scale similarity inside the softmax."""

    inverse_temperature: float = 100.0

    def record(self) -> dict[str, object]:
        return {"method": "dsl", **asdict(self), "scale": "cosine", "transductive": True}


@dataclass(frozen=True)
class QBNormSettings:
    """QB-Norm's parameters (official defaults): inverse temperature β on the cosine scale,
    top-k of each bank query, θ = bank top-k lists an item must occur in to be activated."""

    beta: float = 20.0
    k: int = 1
    theta: int = 1

    def record(self) -> dict[str, object]:
        return {"method": "qbnorm", **asdict(self), "scale": "cosine", "transductive": False}


def check_methods(methods: list[str] | tuple[str, ...] | str, what: str = "postproc") -> list[str]:
    """``"none,dsl"`` or ``["dsl", "none"]`` → known names in :data:`POSTPROC_METHODS` order."""
    items = [methods] if isinstance(methods, str) else list(methods)
    names = {n.strip().lower() for item in items for n in str(item).split(",") if n.strip()}
    unknown = sorted(names - set(POSTPROC_METHODS))
    if unknown:
        raise PostprocError(
            f"{what}: unknown post-processing {', '.join(unknown)} (choose from "
            f"{', '.join(POSTPROC_METHODS)})"
        )
    if not names:
        raise PostprocError(f"{what}: empty list (choose from {', '.join(POSTPROC_METHODS)})")
    return [m for m in POSTPROC_METHODS if m in names]


def _checked(x: Tensor, name: str) -> Tensor:
    """``x`` as a finite, non-empty, 2-D float64 tensor."""
    if not isinstance(x, Tensor):
        raise PostprocError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or 0 in x.shape:
        raise PostprocError(f"{name}: expected a non-empty 2-D matrix, got shape {tuple(x.shape)}")
    if x.is_complex() or x.dtype == torch.bool:
        raise PostprocError(f"{name}: expected real numbers, got {x.dtype}")
    x = x.detach().double()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        row, col = (int(v) for v in (~finite).nonzero()[0])
        raise PostprocError(
            f"{name}: {int((~finite).sum())} non-finite entries (NaN or inf); first at "
            f"[{row}, {col}] = {float(x[row, col])}"
        )
    return x


def _positive(value: float, name: str) -> float:
    value = float(value)
    if not value > 0 or value == float("inf"):
        raise PostprocError(f"{name} must be a positive finite number, got {value}")
    return value


def _direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise PostprocError(f"direction must be 't2v' or 'v2t', got {direction!r}")
    return direction


def dual_softmax(
    sim: Tensor,
    direction: str = "t2v",
    inverse_temperature: float = DSLSettings.inverse_temperature,
) -> Tensor:
    """DSL re-scoring of a whole ``[Nt, Nv]`` similarity matrix (cosine scale).

    t2v: ``Nt · S ⊙ softmax_axis0(λS)`` (each video's prior over the texts; rank the rows);
    v2t: ``Nt · S ⊙ softmax_axis1(λS)`` (each text's prior over the videos; rank the columns).
    Several captions per video: apply it to the whole matrix, before any regrouping.

    Args:
        sim: ``[Nt, Nv]`` similarities, texts × videos.
        direction: ``"t2v"`` or ``"v2t"``.
        inverse_temperature: λ (100 on the cosine scale = softmax(100 · cos)).

    Returns:
        ``[Nt, Nv]`` float64, ranked like ``sim`` in ``direction``.
    """
    s = _checked(sim, "similarity")  # (Nt, Nv) float64
    lam = _positive(inverse_temperature, "DSL inverse_temperature")
    axis = 0 if _direction(direction) == "t2v" else 1
    prior = torch.softmax(lam * s, dim=axis)  # (Nt, Nv); softmax subtracts the max first
    return s.shape[0] * s * prior


def querybank_normalise(
    sim: Tensor,
    bank: Tensor,
    beta: float = QBNormSettings.beta,
    k: int = QBNormSettings.k,
    theta: int = QBNormSettings.theta,
) -> Tensor:
    """QB-Norm with the dynamic inverted softmax, queries in rows (rank the rows only).

    Args:
        sim: ``[Nq, Ng]`` test queries × gallery.
        bank: ``[Nb, Ng]`` bank queries × the same gallery (same checkpoint, similarity, scale).
        beta: inverse temperature β (20 on the cosine scale).
        k: top-k of each bank query that votes for the activation set.
        theta: votes an item needs to be activated (1 = the union of the bank's top-k).

    Returns:
        ``[Nq, Ng]`` float64: ``exp(βS[i] − logsumexp_b βB[:, j])`` for the queries whose raw
        top-1 item is activated, the raw row ``S[i]`` otherwise.
    """
    s = _checked(sim, "similarity")  # (Nq, Ng)
    b = _checked(bank, "query bank similarity")  # (Nb, Ng)
    if b.shape[1] != s.shape[1]:
        raise PostprocError(
            f"query bank similarity has {b.shape[1]} gallery columns, the similarity "
            f"{s.shape[1]}: the bank must be scored against the same gallery"
        )
    beta = _positive(beta, "QB-Norm beta")
    if int(k) != k or k < 1:
        raise PostprocError(f"QB-Norm k must be a positive integer, got {k}")
    if int(theta) != theta or theta < 1:
        raise PostprocError(f"QB-Norm theta must be a positive integer, got {theta}")
    b = b.to(s.device)
    n_gallery = s.shape[1]
    # Stable descending sort: among equal scores the lower index comes first.
    top = torch.sort(b, dim=1, descending=True, stable=True).indices[:, : int(k)]  # (Nb, k)
    votes = torch.bincount(top.flatten(), minlength=n_gallery)  # (Ng,)
    active = votes >= int(theta)  # (Ng,) the activation set A
    top1 = s.argmax(dim=1)  # (Nq,) first maximum = lower index on ties
    log_norm = torch.logsumexp(beta * b, dim=0)  # (Ng,)
    normalised = torch.exp(beta * s - log_norm[None, :])  # (Nq, Ng)
    return torch.where(active[top1][:, None], normalised, s)


def qbnorm(
    sim: Tensor,
    bank: Tensor,
    direction: str = "t2v",
    settings: QBNormSettings = QBNormSettings(),
) -> Tensor:
    """QB-Norm of a texts × videos matrix in one direction.

    Args:
        sim: ``[Nt, Nv]`` similarities, texts × videos.
        bank: t2v: ``[Nb, Nv]`` bank texts (training queries) × test videos; v2t: ``[Nt, Nb]``
            test texts × bank videos (training videos).
        direction: ``"t2v"`` (rank rows) or ``"v2t"`` (rank columns).

    Returns:
        ``[Nt, Nv]`` float64, ranked like ``sim`` in ``direction``.
    """
    args = (settings.beta, settings.k, settings.theta)
    if _direction(direction) == "t2v":
        return querybank_normalise(sim, bank, *args)
    if isinstance(bank, Tensor) and isinstance(sim, Tensor) and bank.ndim == 2 and sim.ndim == 2:
        if bank.shape[0] != sim.shape[0]:
            raise PostprocError(
                f"v2t query bank similarity has {bank.shape[0]} rows, the similarity "
                f"{sim.shape[0]} texts: it must be [n_text, n_bank_videos]"
            )
    return querybank_normalise(sim.t(), bank.t(), *args).t()


def postprocessed_ranks(
    sim: Tensor,
    method: str,
    *,
    bank_t2v: Tensor | None = None,
    bank_v2t: Tensor | None = None,
    text_to_video: Tensor | None = None,
    v2t: str = "best-caption",
    dsl: DSLSettings = DSLSettings(),
    qb: QBNormSettings = QBNormSettings(),
) -> tuple[Tensor, Tensor | None]:
    """``(ranks_t2v [Nt], ranks_v2t [Nv] | None)`` of ``sim [Nt, Nv]`` after ``method``.

    ``text_to_video`` and ``v2t`` are those of :mod:`tvrbench.metrics`. QB-Norm needs
    ``bank_t2v``; without ``bank_v2t`` its v2t ranks are None (not computed).
    """
    if method == "none":
        ranks_t2v = text_to_video_ranks(sim, text_to_video)
        return ranks_t2v, video_to_text_ranks(sim, text_to_video, v2t=v2t)
    if method == "dsl":
        lam = dsl.inverse_temperature
        ranks_t2v = text_to_video_ranks(dual_softmax(sim, "t2v", lam), text_to_video)
        by_video = dual_softmax(sim, "v2t", lam)
        return ranks_t2v, video_to_text_ranks(by_video, text_to_video, v2t=v2t)
    if method == "qbnorm":
        if bank_t2v is None:
            raise PostprocError("QB-Norm needs a query bank similarity (bank_t2v)")
        ranks_t2v = text_to_video_ranks(qbnorm(sim, bank_t2v, "t2v", qb), text_to_video)
        if bank_v2t is None:
            return ranks_t2v, None
        by_video = qbnorm(sim, bank_v2t, "v2t", qb)
        return ranks_t2v, video_to_text_ranks(by_video, text_to_video, v2t=v2t)
    raise PostprocError(f"unknown post-processing {method!r} (choose from {POSTPROC_METHODS})")
