"""FLOP counting (fvcore, 1 FLOP = 1 multiply-add) and the timing helpers."""

from __future__ import annotations

import torch
from torch import nn

from tvrbench.bench import latency
from tvrbench.bench.flops import count_flops, count_pair_flops, eager_attention
from tvrbench.bench.latency import synthetic_gallery, time_callable, time_runs


def test_linear_flops_are_in_times_out_times_batch():
    layer = nn.Linear(7, 5, bias=True)
    assert count_flops(layer, layer, (torch.zeros(3, 7),)) == 3 * 7 * 5


def test_matmul_function_flops():
    owner = nn.Module()
    fn = lambda a, b: a @ b.t()  # noqa: E731
    a, b = torch.randn(4, 6), torch.randn(9, 6)
    assert count_flops(owner, fn, (a, b)) == 4 * 9 * 6


class _DotHead(nn.Module):
    def score(self, text, video):
        return text["sentence"] @ video["pooled"].t()  # (Bt, Bv)


def test_pair_flops_use_one_text_and_one_video():
    text = {"sentence": torch.randn(5, 16)}
    video = {"pooled": torch.randn(8, 16)}
    assert count_pair_flops(_DotHead(), text, video) == 16


class _ProjectedHead(nn.Module):
    """Per text: a D×D projection; per video: a D×D projection; per pair: a D-long dot."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)

    def score(self, text, video):
        return self.q(text["sentence"]) @ self.k(video["pooled"]).t()  # (Bt, Bv)


def test_pair_flops_leave_per_text_and_per_video_work_out():
    dim = 16
    text = {"sentence": torch.randn(1, dim)}  # one row: repeated for the 2-row blocks
    video = {"pooled": torch.randn(3, dim)}
    head = _ProjectedHead(dim)
    # 1×1 block alone: D² (text) + D² (video) + D (pair) = 528; the pair's own work is D.
    assert (
        count_flops(
            head,
            lambda t, v: head.score({"sentence": t}, {"pooled": v}),
            (text["sentence"], video["pooled"][:1]),
        )
        == 2 * dim * dim + dim
    )
    assert count_pair_flops(head, text, video) == dim


def test_eager_attention_is_restored():
    from tvrbench.backbone import ClipBackbone

    module = nn.Module()
    module.backbone = ClipBackbone.from_pretrained("tiny")
    before = module.backbone.clip.config._attn_implementation
    with eager_attention(module):
        assert module.backbone.clip.config.text_config._attn_implementation == "eager"
    assert module.backbone.clip.config._attn_implementation == before


def test_time_callable_percentiles():
    calls = []
    timing = time_callable(lambda: calls.append(1), torch.device("cpu"), repeats=5, warmup=2)
    assert len(calls) == 7
    assert 0 <= timing["median_ms"] <= timing["p90_ms"]
    assert len(timing["samples_ms"]) == 5


def test_time_runs_repeats_caps_and_fills(monkeypatch):
    """time_runs: ``repeats`` runs, fewer once past ``cap_s`` (at least one), more (up to
    ``max_runs``) while under ``min_timed_s``; the last output comes back. Every call takes 1 s
    of a fake clock."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(latency.time, "perf_counter", lambda: float(next(ticks)))
    cpu = torch.device("cpu")
    calls: list[int] = []

    def fn() -> int:
        calls.append(1)
        return len(calls)

    def runs(
        repeats: int, cap_s: float, min_timed_s: float, max_runs: int = 100
    ) -> tuple[int, int]:
        calls.clear()
        times, out = time_runs(fn, cpu, repeats, cap_s, min_timed_s, max_runs)
        assert times == [1.0] * len(times) and len(calls) == len(times)
        return len(times), out

    assert runs(3, float("inf"), 0.0) == (3, 3)
    assert runs(5, 2.5, 0.0) == (3, 3)  # the third run passes the cap
    assert runs(5, 0.5, 0.0) == (1, 1)  # at least one
    assert runs(1, float("inf"), 4.0) == (4, 4)  # short calls fill min_timed_s
    assert runs(1, float("inf"), 4.0, max_runs=2) == (2, 2)


def test_synthetic_gallery_shapes_and_masks():
    real = {"emb": torch.randn(3, 4, 8), "mask": torch.tensor([[1, 1, 0, 0]] * 3).bool()}
    gallery = synthetic_gallery(real, 50, seed=1)
    assert gallery["emb"].shape == (50, 4, 8)
    assert gallery["mask"].dtype == torch.bool and gallery["mask"][:, 2:].sum() == 0
