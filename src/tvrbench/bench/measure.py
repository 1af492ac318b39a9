"""Measurement of a tested module: rank metrics per length bucket with intervals, GFLOPs
(fvcore) and latency per text / video / pair at a bucket's frame count, retrieval time per query
versus gallery size (SPEC §4, §5).

Everything here reads a module after ``trainer.test``: its ``last_eval`` (ranks, bucket ids,
the gathered float32 gallery states) and one captured test row (token ids, frames) that the cost
measurements run on. Costs are measured on one device, whatever the training used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch

from tvrbench.bench.flops import count_pair_flops, method_flops
from tvrbench.bench.latency import gallery_cost, query_latency, video_latency
from tvrbench.bench.postproc import (
    PostprocSettings,
    QueryBank,
    postproc_variants,
    with_postproc_ranks,
)
from tvrbench.bench.qualitative import qualitative_record
from tvrbench.metrics import DIRECTIONS, METRIC_NAMES, bootstrap_ci, summarize_ranks
from tvrbench.precision import precision_label, tower_autocast

SAMPLE_KEYS = ("input_ids", "attention_mask", "frames", "frame_mask")
#: Gallery sizes of the retrieval-cost rows unless a run names others.
DEFAULT_GALLERY_SIZES = (100, 1000, 10000, 100000)


@dataclass(frozen=True)
class MeasureSettings:
    """How a tested module is measured (:func:`measure_tested`).

    Args:
        bootstrap_samples: resamples of the 95 % query-bootstrap intervals.
        gallery_sizes: gallery sizes of the retrieval-cost rows (gallery.csv).
        latency_repeats, latency_warmup: timed and warm-up runs of each latency.
        gallery_repeats: timed runs per gallery size.
        gallery_max_mb: the largest synthetic gallery state built, MiB.
        matmul_gflops_per_s: the measuring device's dense matmul rate (None: not measured).
        seed: seed of the bootstrap, the synthetic galleries and the qualitative sample.
        postproc: the post-processings reported besides ``none`` (None: only ``none``).
    """

    bootstrap_samples: int = 1000
    gallery_sizes: list[int] = field(default_factory=lambda: list(DEFAULT_GALLERY_SIZES))
    latency_repeats: int = 20
    latency_warmup: int = 3
    gallery_repeats: int = 3
    gallery_max_mb: float = 1024.0
    matmul_gflops_per_s: float | None = None
    seed: int = 0
    postproc: PostprocSettings | None = None


class TestCapture(L.Callback):
    """Collects what the measurements need during ``trainer.test``: per-sample durations and
    frame counts, and one sample batch row (``sample`` presets it: cached-feature batches carry
    no token ids or frames, so the row then comes from the video DataModule)."""

    def __init__(self, sample: dict[str, torch.Tensor] | None = None) -> None:
        self.index: list[torch.Tensor] = []
        self.duration_s: list[torch.Tensor] = []
        self.num_frames: list[torch.Tensor] = []
        self.extra: dict[str, list[torch.Tensor]] = {}
        self.sample = sample

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self.index.append(batch["index"].detach().cpu())
        self.duration_s.append(batch["duration_s"].detach().cpu().float())
        self.num_frames.append(batch["frame_mask"].detach().sum(dim=1).cpu())
        for key in ("relevant_fraction", "relevant_frames"):
            if key in batch:
                self.extra.setdefault(key, []).append(batch[key].detach().cpu().float())
        if "relevant_mask" in batch and "relevant_frames" not in batch:
            frames = batch["relevant_mask"].detach().sum(dim=1).cpu().float()
            self.extra.setdefault("relevant_frames", []).append(frames)
        if self.sample is None:
            self.sample = {k: batch[k][:1].detach().cpu() for k in SAMPLE_KEYS}

    def per_index(self, key: str = "") -> dict[int, Any]:
        """``{dataset index: (duration_s, real frames)}``, or of the captured ``key``."""
        index = torch.cat(self.index).tolist()
        if key:
            return dict(zip(index, torch.cat(self.extra[key]).tolist()))
        dur = torch.cat(self.duration_s).tolist()
        frames = torch.cat(self.num_frames).tolist()
        return {i: (d, int(f)) for i, d, f in zip(index, dur, frames)}


def frames_at(sample: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One video of exactly ``n`` real frames ``[1, n, 3, H, W]`` from the sample row (frames
    repeated when the sample holds fewer)."""
    frames = sample["frames"][:, : int(sample["frame_mask"].sum())]
    if frames.shape[1] == 0:
        frames = sample["frames"][:, :1]
    reps = math.ceil(n / frames.shape[1])
    frames = frames.repeat(1, reps, 1, 1, 1)[:, :n].contiguous()
    return frames, torch.ones(1, n, dtype=torch.bool, device=frames.device)


def metric_columns(
    ranks_t2v: torch.Tensor, ranks_v2t: torch.Tensor, n_boot: int, seed: int
) -> dict[str, Any]:
    """Every registry metric column (``t2v_R@1 … v2t_MnR``, :data:`~tvrbench.metrics.METRICS`)
    with its query-bootstrap ``_lo`` / ``_hi`` (NaN when empty)."""
    row: dict[str, Any] = {}
    for prefix, ranks in zip(DIRECTIONS, (ranks_t2v, ranks_v2t)):
        summary = summarize_ranks(ranks)
        ci = bootstrap_ci(ranks, n_boot=n_boot, seed=seed) if len(ranks) else {}
        for key in METRIC_NAMES:
            row[f"{prefix}_{key}"] = float(summary[key])
            lo, hi = ci.get(key, (math.nan, math.nan))
            row[f"{prefix}_{key}_lo"], row[f"{prefix}_{key}_hi"] = lo, hi
    return row


def placed(module, device: torch.device):
    """``module`` in eval mode on ``device``, ready to measure.

    Called before EVERY use, never once: Lightning's strategy teardown moves a module back to
    the CPU at the end of each ``trainer.test``, so a module placed once is elsewhere after the
    next test (the controlled-length protocol runs one test per injected length). Parameters
    are float32 (``module.float()``), as mixed-precision training keeps them.
    """
    return module.to(device=device).float().eval()


class CostMeter:
    """GFLOPs and latency of one module at given frame counts (cached per count).

    Args:
        module: a tested :class:`~tvrbench.retrieval.RetrievalModule`.
        sample: one test row (``input_ids``, ``attention_mask``, ``frames``, ``frame_mask``).
        device: where every cost is measured (one device).
        precision: the trainer precision that produced the accuracy: latencies are timed under
            the same tower autocast (``latency_precision`` says which); FLOPs are counted in
            float32 (a multiply-add is one whatever its dtype).
    """

    def __init__(
        self,
        module,
        sample: dict[str, torch.Tensor],
        device: torch.device,
        repeats: int,
        warmup: int,
        precision: Any = "32-true",
    ) -> None:
        self.module = module
        self.device = device
        # Clones: tensors captured under trainer.test are inference tensors, unusable by tracers.
        self.sample = {k: v.clone().to(device) for k, v in sample.items()}
        self.repeats, self.warmup = repeats, warmup
        self.precision = precision
        self._per_frames: dict[int, dict[str, Any]] = {}

    def _autocast(self):
        return tower_autocast(self.precision, self.device.type)

    @torch.no_grad()
    def at(self, n_frames: int) -> dict[str, Any]:
        """Cost columns of one video of ``n_frames`` real frames."""
        if n_frames not in self._per_frames:
            module = placed(self.module, self.device)
            frames, mask = frames_at(self.sample, n_frames)
            frames, mask = frames.to(self.device), mask.to(self.device)
            ids, am = self.sample["input_ids"], self.sample["attention_mask"]
            flops = method_flops(module, ids, am, frames, mask)
            with self._autocast():
                lat = video_latency(module, frames, mask, self.repeats, self.warmup)
            self._per_frames[n_frames] = {
                "flops_frames": n_frames,
                **flops,
                "latency_video_ms": lat["median_ms"],
                "latency_video_p90_ms": lat["p90_ms"],
                "latency_precision": precision_label(self.precision),
            }
        return dict(self._per_frames[n_frames])

    @torch.no_grad()
    def query(self, gallery: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Latency of one query (encode the text, score it against ``gallery``)."""
        module = placed(self.module, self.device)
        gallery = {k: v.clone().to(self.device) for k, v in gallery.items()}
        ids, am = self.sample["input_ids"], self.sample["attention_mask"]
        with self._autocast():
            return query_latency(module, ids, am, gallery, self.repeats, self.warmup)


def bucket_rows(
    ev: dict[str, Any],
    capture: TestCapture,
    meter: CostMeter,
    n_boot: int,
    seed: int,
    q_lat: dict[str, Any],
) -> list[dict[str, Any]]:
    """One row per length bucket and ``all``: metrics with intervals, durations, frames, costs.
    Every bucket's queries are ranked against the FULL gallery (the ranks come from there)."""
    ranks_t2v, ranks_v2t = ev["ranks_t2v"].cpu(), ev["ranks_v2t"].cpu()
    bucket_ids = ev["bucket"].cpu()
    names = list(ev["bucket_names"])
    per_index = capture.per_index()
    index = ev["index"].cpu().tolist()
    duration_s = np.array([per_index[i][0] for i in index], dtype=np.float64)
    num_frames = np.array([per_index[i][1] for i in index], dtype=np.float64)
    extra = {key: capture.per_index(key) for key in capture.extra}
    n_gallery = len(index)
    groups = [(name, (bucket_ids == b).numpy()) for b, name in enumerate(names)]
    groups.append(("all", np.ones(n_gallery, dtype=bool)))
    rows: list[dict[str, Any]] = []
    for name, sel in groups:
        sel_t = torch.from_numpy(sel)
        n_q = int(sel.sum())
        row: dict[str, Any] = {"bucket": name, "n_queries": n_q}
        row.update(metric_columns(ranks_t2v[sel_t], ranks_v2t[sel_t], n_boot, seed))
        if n_q:
            row.update(
                mean_duration_s=float(duration_s[sel].mean()),
                mean_frames=float(num_frames[sel].mean()),
            )
            for key, values in extra.items():
                row[f"mean_{key}"] = float(np.mean([values[i] for i, s in zip(index, sel) if s]))
            row.update(meter.at(max(1, round(float(num_frames[sel].mean())))))
        row.update(
            latency_query_ms=q_lat["median_ms"],
            latency_query_p90_ms=q_lat["p90_ms"],
            gallery_size=n_gallery,
            **{"chance_R@1": 100.0 / max(1, n_gallery)},
        )
        rows.append(row)
    return rows


def rank_record(ev: dict[str, Any]) -> dict[str, Any]:
    """The per-query ranks of a test (methods' JSON ``ranks``: the bootstrap's input)."""
    names = list(ev["bucket_names"])
    return {
        "index": ev["index"].cpu().tolist(),
        "ranks_t2v": ev["ranks_t2v"].cpu().tolist(),
        "ranks_v2t": ev["ranks_v2t"].cpu().tolist(),
        "bucket": [names[b] for b in ev["bucket"].cpu().tolist()],
    }


@torch.no_grad()
def measure_tested(
    module,
    capture: TestCapture,
    device: torch.device,
    settings: MeasureSettings,
    *,
    bank: QueryBank | None = None,
    precision: Any = "32-true",
) -> dict[str, Any]:
    """Rows (per bucket + ``all``, once per post-processing of ``postproc``; ``bank``:
    QB-Norm's query bank), gallery timings, ranks and the qualitative sample of a tested
    module."""
    ev = module.last_eval
    if not ev or ev.get("stage") != "test":
        raise RuntimeError("the module holds no test evaluation (trainer.test did not run)")
    gallery = ev.get("video_state") or {}
    if capture.sample is None or not gallery:
        raise RuntimeError("no test batch was captured (empty test split?)")
    # ``precision``: the trainer's; latencies are timed under its tower autocast (CostMeter).
    seed = settings.seed
    meter = CostMeter(
        module,
        capture.sample,
        device,
        settings.latency_repeats,
        settings.latency_warmup,
        precision=precision,
    )
    q_lat = meter.query(gallery)
    variants = postproc_variants(module, ev, settings.postproc, bank)  # {postproc: evaluation}
    rows = [
        {**row, "postproc": name}
        for name, variant in variants.items()
        for row in bucket_rows(variant, capture, meter, settings.bootstrap_samples, seed, q_lat)
    ]
    gallery_state = {k: v.clone().to(device) for k, v in gallery.items()}
    ids, am = meter.sample["input_ids"], meter.sample["attention_mask"]
    module = placed(module, device)
    text_state = module.encode_text(ids, am)
    pair_gflops = count_pair_flops(module.head, text_state, gallery_state) / 1e9
    timings = gallery_cost(
        module,
        {k: v[:1] for k, v in text_state.items()},
        gallery_state,
        settings.gallery_sizes,
        repeats=settings.gallery_repeats,
        warmup=1,
        max_gallery_mb=settings.gallery_max_mb,
        seed=seed,
    )
    for g in timings:
        g["gflops_pair"] = pair_gflops
        rate = pair_gflops * g["gallery_size"] / (g["ms_per_query"] * 1e-3)
        g["achieved_gflops_per_s"] = rate
        matmul = settings.matmul_gflops_per_s
        g["fraction_of_matmul"] = rate / matmul if matmul else math.nan
    return {
        "rows": rows,
        "gallery": timings,
        "latency_query": q_lat,
        "ranks": with_postproc_ranks(rank_record(ev), variants),
        # The qualitative sheet's seeded sample of queries: ranks and top-5 videos (plain).
        "qualitative": qualitative_record(ev, seed),
        "test_metrics": ev.get("metrics"),
    }
