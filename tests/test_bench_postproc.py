"""The benchmark's post-processing glue (tvrbench.bench.postproc): ranks from the test's own
similarity and QB-Norm's bank scored like the test, against NumPy from POSTPROC.md's
equations; the per-postproc aggregation and the report's compact table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tvrbench.bench.findings import postproc_findings
from tvrbench.bench.outputs import combine
from tvrbench.bench.postproc import (
    PostprocSettings,
    QueryBank,
    postproc_variants,
    ranks_view,
    with_postproc_ranks,
)
from tvrbench.bench.record import MethodRecord
from tvrbench.bench.report import ReportInfo, render_report
from tvrbench.postproc import PostprocError


class DotModule(nn.Module):
    """Stands in for a RetrievalModule: similarity = text["x"] @ video["y"]ᵀ."""

    device = torch.device("cpu")

    def similarity(self, text, video):
        return text["x"] @ video["y"].t()


def np_ranks(M: np.ndarray) -> list[int]:
    return (M >= np.diag(M)[:, None]).sum(axis=1).tolist()


def test_variants_match_numpy_from_the_equations():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    bx, by = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))  # bank texts, bank videos
    S = (x @ y.T) / 8
    ev = {
        "similarity": torch.tensor(S, dtype=torch.float32),
        "text_state": {"x": torch.tensor(x / 8)},
        "video_state": {"y": torch.tensor(y)},
        "ranks_t2v": torch.tensor(np_ranks(S)),
        "ranks_v2t": torch.tensor(np_ranks(S.T)),
    }
    bank = QueryBank({"x": torch.tensor(bx / 8)}, {"y": torch.tensor(by)}, index=[0, 1, 2])
    variants = postproc_variants(DotModule(), ev, PostprocSettings(), bank)
    assert list(variants) == ["none", "dsl", "qbnorm"] and variants["none"] is ev
    S32 = S.astype(np.float32).astype(np.float64)
    # DSL, λ = 100: t2v softmax over the texts (axis 0), v2t over the videos (axis 1).
    for direction, axis in (("t2v", 0), ("v2t", 1)):
        e = np.exp(100 * S32 - (100 * S32).max(axis=axis, keepdims=True))
        dsl = 6 * S32 * e / e.sum(axis=axis, keepdims=True)
        want = np_ranks(dsl) if direction == "t2v" else np_ranks(dsl.T)
        assert variants["dsl"][f"ranks_{direction}"].tolist() == want
    # QB-Norm, β = 20, k = θ = 1: bank texts × test videos (t2v); test texts × bank videos (v2t).
    B_t2v, B_v2t = (bx / 8) @ y.T, (x / 8) @ by.T

    def qb(Sq, B):
        active = np.zeros(Sq.shape[1], dtype=bool)
        active[B.argmax(axis=1)] = True
        out = Sq.copy()
        for i, row in enumerate(Sq):
            if active[row.argmax()]:
                out[i] = np.exp(20 * row) / np.exp(20 * B).sum(axis=0)
        return out

    assert variants["qbnorm"]["ranks_t2v"].tolist() == np_ranks(qb(S32, B_t2v))
    assert variants["qbnorm"]["ranks_v2t"].tolist() == np_ranks(qb(S32.T, B_v2t.T))
    record = with_postproc_ranks({"ranks_t2v": [1], "ranks_v2t": [1], "bucket": ["a"]}, variants)
    view = ranks_view(record, "dsl")
    assert view is not None and view["ranks_t2v"] == variants["dsl"]["ranks_t2v"].tolist()
    assert view["bucket"] == ["a"] and "postproc" not in view
    assert ranks_view({"30.0": record}, "qbnorm")["30.0"]["ranks_v2t"] == (  # type: ignore[index]
        variants["qbnorm"]["ranks_v2t"].tolist()
    )
    assert ranks_view({"ranks_t2v": [1]}, "dsl") is None  # a record written without it


def test_settings_errors_and_none_only():
    with pytest.raises(PostprocError, match="unknown post-processing qb"):
        PostprocSettings(methods=["qb"])
    assert PostprocSettings(methods=["dsl"]).methods == ["none", "dsl"]  # none always
    ev = {"ranks_t2v": torch.tensor([1])}
    assert postproc_variants(DotModule(), ev, PostprocSettings(methods=["none"])) == {"none": ev}


def _row(pp: str, r1: float, mnr: float) -> dict:
    """A record's row (the record adds method and seed)."""
    return {"bucket": "all", "postproc": pp, "n_queries": 4, "t2v_R@1": r1, "t2v_MnR": mnr}


def test_seed_aggregation_per_postproc_and_compact_table():
    ranks = {
        "index": [0, 1, 2, 3],
        "ranks_t2v": [1, 2, 1, 3],
        "ranks_v2t": [1, 1, 1, 1],
        "bucket": ["a", "a", "a", "a"],
        "postproc": {"dsl": {"ranks_t2v": [1, 1, 1, 1], "ranks_v2t": [1, 1, 1, 1]}},
    }
    records = [
        MethodRecord("m", s, ranks=ranks, rows=[_row("none", 50.0, 1.75), _row("dsl", 100.0, 1.0)])
        for s in (0, 1)
    ]
    combined = combine(records, {"bootstrap_samples": 20}, synthetic=True)
    means = [r for r in combined["rows"] if r["seed"] == "mean"]
    assert {(r["postproc"], r["t2v_R@1"]) for r in means} == {("none", 50.0), ("dsl", 100.0)}
    dsl_mean = next(r for r in means if r["postproc"] == "dsl")
    assert dsl_mean["t2v_R@1_lo"] == dsl_mean["t2v_R@1_hi"] == 100.0  # its own ranks
    assert set(combined["ranks"]) == {"none", "dsl"}
    results = pd.DataFrame(combined["rows"])
    report = render_report(
        results[results["postproc"] == "none"],
        None,
        ReportInfo(data="synthetic", postproc_results=results),
        [],
    )
    assert "| m | all | 50.0 / 1.8 | 100.0 / 1.0 |" in report
    # Real data: methods without a published DiDeMo number (here "m") are simply not quoted.
    real = render_report(
        results[results["postproc"] == "none"],
        None,
        ReportInfo(data="didemo", postproc_results=results, published_methods=["m", "xclip"]),
        [],
    )
    assert "xclip: none (X-CLIP's released code" in real
    lines = postproc_findings(results, combined["ranks"], n_boot=20)
    assert lines and all(line.startswith("[DSL] ") for line in lines)
