"""Post-processing in a benchmark run: none / DSL / QB-Norm as separate result rows.

The post-processed rankings come from the very similarity matrix the test ranked
(``module.last_eval["similarity"]``, float32, cosine scale): no retraining, no second encoding of
the test set. DSL and QB-Norm are :mod:`tvrbench.postproc`'s functions with their official
defaults (../shared/POSTPROC.md). QB-Norm's query bank is the **training split**, one paragraph
per training video, encoded by the tested checkpoint (:func:`encode_query_bank`): its
paragraphs × the test videos for t2v, the test paragraphs × its videos for v2t. At most
``bank_max_queries`` training videos (a seeded sample) are used; the count is recorded.

Every result row carries ``postproc`` (``none``, ``dsl``, ``qbnorm``); a record's ``ranks`` (and
each length of ``stress_ranks``) keeps the ``none`` ranks at the top level and the others under
``"postproc": {method: {"ranks_t2v", "ranks_v2t"}}`` (:func:`with_postproc_ranks`,
:func:`ranks_view`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from tvrbench.device import evaluation_trainer
from tvrbench.postproc import (
    POSTPROC_LABELS,
    DSLSettings,
    PostprocError,
    QBNormSettings,
    check_methods,
    postprocessed_ranks,
)

State = dict[str, Tensor]
BANK_SOURCE = "training split, one paragraph per training video, encoded by the tested checkpoint"


@dataclass
class PostprocSettings:
    """What a run post-processes (``none`` is always reported).

    Args:
        methods: a subset of ``none, dsl, qbnorm``.
        bank_max_queries: QB-Norm bank size cap (training videos; None = the whole split).
        seed: seed of the bank's sample when the split is larger than the cap.
        dsl, qb: the methods' parameters (official defaults, cosine scale).
    """

    methods: list[str] = field(default_factory=lambda: ["none", "dsl", "qbnorm"])
    bank_max_queries: int | None = 1000
    seed: int = 0
    dsl: DSLSettings = field(default_factory=DSLSettings)
    qb: QBNormSettings = field(default_factory=QBNormSettings)

    def __post_init__(self) -> None:
        self.methods = check_methods(["none", *self.methods])
        if self.bank_max_queries is not None and self.bank_max_queries < 1:
            raise PostprocError(f"bank_max_queries: {self.bank_max_queries} (need >= 1 or null)")

    @property
    def needs_bank(self) -> bool:
        return "qbnorm" in self.methods

    def record(self, bank: QueryBank | None = None) -> dict[str, Any]:
        """Methods, parameters and (with QB-Norm) the bank's source and size: results.json."""
        out: dict[str, Any] = {"methods": list(self.methods)}
        if "dsl" in self.methods:
            out["dsl"] = self.dsl.record()
        if self.needs_bank:
            out["qbnorm"] = {
                **self.qb.record(),
                "bank_source": BANK_SOURCE,
                "bank_max_queries": self.bank_max_queries,
                "bank_queries": bank.n_queries if bank is not None else None,
            }
        return out


@dataclass
class QueryBank:
    """QB-Norm's bank: float32 states of training samples (CPU), row i = training sample
    ``index[i]``; ``text_state`` tensors ``[Nb, ...]``, ``video_state`` tensors ``[Nb, ...]``."""

    text_state: State
    video_state: State
    index: list[int]

    @property
    def n_queries(self) -> int:
        return len(self.index)


class QueryBankData(L.LightningDataModule):
    """The bank's samples as a test set: a seeded sample of at most ``max_queries`` training
    samples of ``base`` (a DiDeMo or cached-feature DataModule), in dataset order."""

    def __init__(self, base: Any, max_queries: int | None, seed: int) -> None:
        super().__init__()
        self.base, self.max_queries, self.seed = base, max_queries, seed
        self._loader: DataLoader | None = None

    def setup(self, stage: str | None = None) -> None:
        if self._loader is not None:
            return
        if hasattr(self.base, "setup_split"):
            self.base.setup_split("train")
        else:
            self.base.setup("fit")
        train = self.base.train_dataloader()  # only its dataset and collate function are used
        n = len(train.dataset)
        picks = list(range(n))
        if self.max_queries is not None and self.max_queries < n:
            generator = torch.Generator().manual_seed(self.seed)
            picks = sorted(torch.randperm(n, generator=generator)[: self.max_queries].tolist())
        self._loader = DataLoader(
            Subset(train.dataset, picks),
            batch_size=self.base.eval_batch_size,
            shuffle=False,
            num_workers=getattr(self.base, "num_workers", 0),
            collate_fn=train.collate_fn,
        )

    def test_dataloader(self) -> DataLoader:
        self.setup("test")
        assert self._loader is not None
        return self._loader

    def bucket_names(self, split: str) -> list[str]:
        return list(self.base.bucket_names("train"))


def encode_query_bank(
    module, datamodule, settings: PostprocSettings, device: torch.device, precision: Any
) -> QueryBank:
    """Encode the bank's training samples with ``module`` (its current, tested weights) through
    the module's own evaluation path (one device, ``precision`` as the test's; states kept in
    float32). ``module.last_eval`` is left as it was."""
    kept = module.last_eval
    trainer = evaluation_trainer(device, precision)
    trainer.test(
        module, datamodule=QueryBankData(datamodule, settings.bank_max_queries, settings.seed)
    )
    ev = module.last_eval
    module.last_eval = kept
    return QueryBank(
        text_state={k: v.detach().cpu() for k, v in ev["text_state"].items()},
        video_state={k: v.detach().cpu() for k, v in ev["video_state"].items()},
        index=ev["index"].tolist(),
    )


@torch.no_grad()
def bank_similarities(module, ev: Mapping[str, Any], bank: QueryBank) -> tuple[Tensor, Tensor]:
    """``(B_t2v [Nb, Nv], B_v2t [Nt, Nb])``: bank paragraphs × test videos and test paragraphs ×
    bank videos, scored like the test (the module's chunked similarity, float32, no autocast) on
    the module's device."""
    where = module.device  # wherever the caller placed the module (the measurement device)
    text = {k: v.to(where) for k, v in ev["text_state"].items()}
    video = {k: v.to(where) for k, v in ev["video_state"].items()}
    bank_text = {k: v.to(where) for k, v in bank.text_state.items()}
    bank_video = {k: v.to(where) for k, v in bank.video_state.items()}
    with torch.autocast(where.type, enabled=False):
        b_t2v = module.similarity(bank_text, video).float()  # (Nb, Nv)
        b_v2t = module.similarity(text, bank_video).float()  # (Nt, Nb)
    return b_t2v, b_v2t


@torch.no_grad()
def postproc_variants(
    module,
    ev: dict[str, Any],
    settings: PostprocSettings | None,
    bank: QueryBank | None = None,
) -> dict[str, dict[str, Any]]:
    """``{method: evaluation}``: ``ev`` itself for ``none``, and per other method a copy of it
    whose ``ranks_t2v`` / ``ranks_v2t`` come from the post-processed similarity."""
    variants: dict[str, dict[str, Any]] = {"none": ev}
    if settings is None or settings.methods == ["none"]:
        return variants
    sim = ev.get("similarity")
    if sim is None:
        raise RuntimeError("the evaluation kept no similarity matrix to post-process")
    was_training = module.training
    module.eval()
    try:
        for method in settings.methods:
            if method == "none":
                continue
            b_t2v = b_v2t = None
            if method == "qbnorm":
                if bank is None:
                    raise RuntimeError("QB-Norm needs the query bank (encode_query_bank)")
                b_t2v, b_v2t = bank_similarities(module, ev, bank)
            t2v, v2t = postprocessed_ranks(
                sim, method, bank_t2v=b_t2v, bank_v2t=b_v2t, dsl=settings.dsl, qb=settings.qb
            )
            assert v2t is not None  # the bench always has the video bank
            variants[method] = {**ev, "ranks_t2v": t2v.cpu(), "ranks_v2t": v2t.cpu()}
    finally:
        module.train(was_training)
    return variants


def with_postproc_ranks(
    record: dict[str, Any], variants: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """A ``none`` rank record plus ``"postproc": {method: {"ranks_t2v", "ranks_v2t"}}``."""
    others = {
        m: {"ranks_t2v": v["ranks_t2v"].tolist(), "ranks_v2t": v["ranks_v2t"].tolist()}
        for m, v in variants.items()
        if m != "none"
    }
    return {**record, "postproc": others} if others else record


def ranks_view(entry: Mapping[str, Any] | None, method: str) -> Mapping[str, Any] | None:
    """The rank entry of one post-processing: ``entry`` itself for ``none``; else ``entry`` with
    that method's ranks (None when the record has none for it). Per-length entries
    (``{length: entry}``, the controlled-length layout) are viewed one by one."""
    if entry is None or method == "none":
        return entry
    if "ranks_t2v" not in entry and "postproc" not in entry:
        views = {k: ranks_view(v, method) for k, v in entry.items() if isinstance(v, Mapping)}
        kept = {k: v for k, v in views.items() if v is not None}
        return kept or None
    ranks = (entry.get("postproc") or {}).get(method)
    if ranks is None:
        return None
    return {**{k: v for k, v in entry.items() if k != "postproc"}, **ranks}


def label(method: str) -> str:
    """``none`` / ``DSL`` / ``QB-Norm``."""
    return POSTPROC_LABELS.get(method, method)
