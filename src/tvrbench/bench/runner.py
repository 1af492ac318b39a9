"""The benchmark runner: ``tvrbench bench --config configs/bench/didemo.yaml``.

For every method (a config in ``configs/method/<name>.yaml``): build the method and the DiDeMo
DataModule, train with Lightning (checkpoint selected on ``val/R@1`` — the validation split only),
load the best checkpoint, test once, then measure: rank metrics overall and per length bucket with
bootstrap intervals, GFLOPs of text / video / pair (fvcore, eager attention), latency of a query
and of a video encoding, and retrieval time per query versus gallery size.

Outputs in ``<out_dir>/<run>/`` (every file written atomically)::

    methods/<method>.json   one per finished method (a resumed run skips these methods)
    checkpoints/<method>/   best.ckpt (val/R@1) and last.ckpt
    results.csv gallery.csv results.json report.md bad_videos.csv *.png

``<run>`` defaults to a hash of the configuration, so re-running the same command resumes the
same run folder: only methods without ``methods/<method>.json`` are run again, then the combined
outputs are rewritten.

Protocols (``protocol``; a column of results.csv and a key of results.json):

* ``finetune`` (default): every method fine-tunes CLIP end to end (the published protocol).
* ``cached_features``: a FAST PROTOCOL (:mod:`tvrbench.features`). The shared starting backbone
  (the pretrained tiny CLIP, ``clip_checkpoint`` or the real CLIP) runs once per split; its
  features are cached under ``<cache_dir>/features`` and every method trains head-only
  (``freeze_backbone=True``) on them. A method that cannot use cached per-frame features
  (CenterCLIP) is skipped and the skip recorded (``methods/<method>.json``, results.json
  ``skipped``, report.md, console); a method with nothing to train on a frozen backbone (meanP)
  is evaluated untrained, with a note. GFLOPs and latencies are still measured on the full module
  (CLIP towers included), so the cost columns compare with fine-tuned runs; the accuracy columns
  do not. The report and the console carry :data:`tvrbench.bench.report.FAST_PROTOCOL_BANNER`.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("tvrbench.bench")

DEFAULT_METHODS = ["meanp", "xpool", "centerclip", "glccl"]
DEFAULT_GALLERY_SIZES = [100, 1000, 10000, 100000]
PROTOCOLS = ("finetune", "cached_features")
# Configuration keys that do not change results (left out of the run-name hash).
_NOT_HASHED = {"out_dir", "run_name", "methods", "method_config_dir"}
BAD_VIDEO_COLUMNS = ["split", "video", "reason"]


class BenchConfigError(ValueError):
    """The benchmark configuration is unusable (message names the setting and the problem)."""


# --------------------------------------------------------------------------------- file helpers


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same folder + ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default, allow_nan=True))


def atomic_write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """CSV with the given column order (extra keys appended), header even when empty."""
    extra = [k for row in rows for k in row if k not in columns]
    header = columns + list(dict.fromkeys(extra))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------ config


def split_methods(methods: list[str] | str) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` → ``["a", "b", "c"]`` (order kept, duplicates dropped)."""
    items = [methods] if isinstance(methods, str) else list(methods)
    names = [n.strip() for item in items for n in str(item).split(",") if n.strip()]
    if not names:
        raise BenchConfigError("methods: no method given")
    return list(dict.fromkeys(names))


def config_hash(config: dict[str, Any]) -> str:
    """Hash of the settings that change results. ``protocol`` is hashed when it is not the default
    ``finetune``, so fine-tune runs keep the folder names they had before the setting existed."""
    hashed = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    if hashed.get("protocol", "finetune") == "finetune":
        hashed.pop("protocol", None)
    blob = json.dumps(
        hashed,
        sort_keys=True,
        default=_json_default,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def default_run_name(config: dict[str, Any]) -> str:
    data = "didemo" if config.get("didemo_root") else "synthetic"
    clip = Path(str(config.get("clip", "tiny")).rstrip("/")).name.replace(".", "_")
    fast = "-cached" if config.get("protocol") == "cached_features" else ""
    return f"{data}-{clip}{fast}-{config_hash(config)}"


def load_method_config(name: str, method_config_dir: str | Path) -> dict[str, Any]:
    """``configs/method/<name>.yaml`` → ``{"class_path": ..., "init_args": {...}}``."""
    import yaml

    path = Path(method_config_dir) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in Path(method_config_dir).glob("*.yaml"))
        raise BenchConfigError(
            f"{path}: no such method config (methods available in {method_config_dir}: "
            f"{', '.join(known) or 'none'})"
        )
    raw = yaml.safe_load(path.read_text()) or {}
    model = raw.get("model", raw)
    if not isinstance(model, dict) or "class_path" not in model:
        raise BenchConfigError(f"{path}: expected a `model: {{class_path, init_args}}` section")
    return {"class_path": model["class_path"], "init_args": dict(model.get("init_args") or {})}


def build_module(method_config: dict[str, Any], overrides: dict[str, Any]):
    """Instantiate ``class_path`` with ``init_args`` updated by ``overrides``; an override the
    class does not take (e.g. ``max_frames`` for a method with no frame-position table) is
    left out."""
    import inspect

    module_name, _, class_name = method_config["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    accepted = inspect.signature(cls.__init__).parameters
    # RetrievalModule's, reached through **kwargs
    base_keys = {"clip", "clip_checkpoint", "freeze_backbone"}
    kept = {k: v for k, v in overrides.items() if k in accepted or k in base_keys}
    return cls(**{**method_config["init_args"], **kept})


# ------------------------------------------------------------------------------- test capture


def _capture_callback(sample: dict[str, torch.Tensor] | None = None):
    """The test-capture callback; ``sample`` presets the measured input row (cached-feature
    batches carry no token ids or frames, so the row then comes from the video DataModule)."""
    import lightning as L

    class TestCapture(L.Callback):
        """Collects what the measurements need during ``trainer.test``: per-sample durations and
        frame counts and one sample batch row (the gallery's cached video states come from the
        module's ``last_eval``)."""

        def __init__(self) -> None:
            self.index: list[torch.Tensor] = []
            self.duration_s: list[torch.Tensor] = []
            self.num_frames: list[torch.Tensor] = []
            self.sample: dict[str, torch.Tensor] | None = sample

        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args):
            self.index.append(batch["index"].detach().cpu())
            self.duration_s.append(batch["duration_s"].detach().cpu().float())
            self.num_frames.append(batch["frame_mask"].detach().sum(dim=1).cpu())
            if self.sample is None:
                keys = ("input_ids", "attention_mask", "frames", "frame_mask")
                self.sample = {k: batch[k][:1].detach().cpu() for k in keys}

        def per_index(self) -> dict[int, tuple[float, int]]:
            index = torch.cat(self.index).tolist()
            dur = torch.cat(self.duration_s).tolist()
            frames = torch.cat(self.num_frames).tolist()
            return {i: (d, int(f)) for i, d, f in zip(index, dur, frames)}

    return TestCapture()


# --------------------------------------------------------------------------------- one method


def _frames_at(sample: dict[str, torch.Tensor], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One video of exactly ``n`` real frames ``[1, n, 3, H, W]`` from the sample row (frames
    repeated when the sample holds fewer)."""
    frames = sample["frames"][:, : int(sample["frame_mask"].sum())]
    if frames.shape[1] == 0:
        frames = sample["frames"][:, :1]
    reps = math.ceil(n / frames.shape[1])
    frames = frames.repeat(1, reps, 1, 1, 1)[:, :n].contiguous()
    return frames, torch.ones(1, n, dtype=torch.bool, device=frames.device)


def _metric_row(prefix: str, summary: dict[str, Any], ci: dict[str, tuple[float, float]] | None):
    row: dict[str, Any] = {}
    for key in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR"):
        row[f"{prefix}_{key}"] = float(summary[key])
        lo, hi = ci[key] if ci else (math.nan, math.nan)
        row[f"{prefix}_{key}_lo"], row[f"{prefix}_{key}_hi"] = lo, hi
    return row


@torch.no_grad()
def measure_method(
    module,
    capture,
    device: torch.device,
    bootstrap_samples: int,
    gallery_sizes: list[int],
    latency_repeats: int,
    latency_warmup: int,
    gallery_repeats: int,
    gallery_max_mb: float,
    matmul_gflops_per_s: float | None,
    seed: int,
) -> dict[str, Any]:
    """Rows (per bucket + "all") and gallery timings of a tested module (``module.last_eval``)."""
    from tvrbench.bench.flops import count_pair_flops, method_flops
    from tvrbench.bench.latency import gallery_cost, query_latency, video_latency
    from tvrbench.metrics import bootstrap_ci, summarize_ranks

    ev = module.last_eval
    if not ev or ev.get("stage") != "test":
        raise RuntimeError("the module holds no test evaluation (trainer.test did not run)")
    gallery = module.last_eval.get("video_state") or {}
    if capture.sample is None or not gallery:
        raise RuntimeError("no test batch was captured (empty test split?)")
    ranks_t2v, ranks_v2t = ev["ranks_t2v"].cpu(), ev["ranks_v2t"].cpu()
    bucket_ids = ev["bucket"].cpu()
    names = list(ev["bucket_names"])
    per_index = capture.per_index()
    index = ev["index"].cpu().tolist()
    duration_s = np.array([per_index[i][0] for i in index], dtype=np.float64)
    num_frames = np.array([per_index[i][1] for i in index], dtype=np.float64)
    n_gallery = len(index)

    module.eval().to(device)
    # Clones: tensors captured under trainer.test are inference tensors, unusable by the tracer.
    sample = {k: v.clone().to(device) for k, v in capture.sample.items()}
    gallery_state = {k: v.clone().to(device) for k, v in gallery.items()}
    ids, am = sample["input_ids"], sample["attention_mask"]

    q_lat = query_latency(module, ids, am, gallery_state, latency_repeats, latency_warmup)
    per_frames: dict[int, dict[str, Any]] = {}

    def cost_at(n: int) -> dict[str, Any]:
        if n not in per_frames:
            frames, mask = _frames_at(sample, n)
            frames, mask = frames.to(device), mask.to(device)
            flops = method_flops(module, ids, am, frames, mask)
            v_lat = video_latency(module, frames, mask, latency_repeats, latency_warmup)
            per_frames[n] = {**flops, "video": v_lat}
        return per_frames[n]

    rows: list[dict[str, Any]] = []
    groups = [(name, (bucket_ids == b).numpy()) for b, name in enumerate(names)]
    groups.append(("all", np.ones(n_gallery, dtype=bool)))
    for name, sel in groups:
        sel_t = torch.from_numpy(sel)
        t2v, v2t = ranks_t2v[sel_t], ranks_v2t[sel_t]
        n_q = int(sel.sum())
        row: dict[str, Any] = {"bucket": name, "n_queries": n_q}
        row.update(_metric_row("t2v", summarize_ranks(t2v), None))
        row.update(_metric_row("v2t", summarize_ranks(v2t), None))
        if n_q:
            for prefix, ranks in (("t2v", t2v), ("v2t", v2t)):
                ci = bootstrap_ci(ranks, n_boot=bootstrap_samples, seed=seed)
                for key, (lo, hi) in ci.items():
                    row[f"{prefix}_{key}_lo"], row[f"{prefix}_{key}_hi"] = lo, hi
            frames_n = max(1, round(float(num_frames[sel].mean())))
            cost = cost_at(frames_n)
            row.update(
                mean_duration_s=float(duration_s[sel].mean()),
                mean_frames=float(num_frames[sel].mean()),
                flops_frames=frames_n,
                gflops_text=cost["gflops_text"],
                gflops_video=cost["gflops_video"],
                gflops_pair=cost["gflops_pair"],
                gflops_pair_formula=cost["gflops_pair_formula"],
                latency_video_ms=cost["video"]["median_ms"],
                latency_video_p90_ms=cost["video"]["p90_ms"],
            )
        row.update(
            latency_query_ms=q_lat["median_ms"],
            latency_query_p90_ms=q_lat["p90_ms"],
            gallery_size=n_gallery,
            **{"chance_R@1": 100.0 / n_gallery},
        )
        rows.append(row)

    text_state = module.encode_text(ids, am)
    gallery_pair_gflops = count_pair_flops(module.head, text_state, gallery_state) / 1e9
    gallery = gallery_cost(
        module,
        {k: v[:1] for k, v in text_state.items()},
        gallery_state,
        gallery_sizes,
        repeats=gallery_repeats,
        warmup=1,
        max_gallery_mb=gallery_max_mb,
        seed=seed,
    )
    for g in gallery:
        g["gflops_pair"] = gallery_pair_gflops
        rate = gallery_pair_gflops * g["gallery_size"] / (g["ms_per_query"] * 1e-3)
        g["achieved_gflops_per_s"] = rate
        g["fraction_of_matmul"] = rate / matmul_gflops_per_s if matmul_gflops_per_s else math.nan
    return {
        "rows": rows,
        "gallery": gallery,
        "latency_query": q_lat,
        "ranks": {
            "index": index,
            "ranks_t2v": ranks_t2v.tolist(),
            "ranks_v2t": ranks_v2t.tolist(),
            "bucket": [names[b] for b in bucket_ids.tolist()],
        },
        "test_metrics": ev.get("metrics"),
    }


# ---------------------------------------------------------------------------------- pretrain


def _pretrained_clip(datamodule, cache_root: Path, minutes: float, seed: int) -> str:
    """The tiny CLIP pretrained on the TRAINING split's (frame, sentence) pairs, cached under
    ``<cache_root>/pretrain/<key>.pt`` (see :mod:`tvrbench.bench.pretrain`)."""
    from tvrbench.bench import pretrain as pt

    datamodule.setup("fit")
    ds = datamodule.dataset("train")
    config = pt.PretrainConfig(minutes=minutes, max_words=datamodule.max_words, seed=seed)
    identity = {
        "root": str(Path(datamodule.root).resolve()),
        "videos": [v.video for v in ds.videos],
        "sampling": repr(ds.sampling),
    }
    out_path = cache_root / "pretrain" / f"tiny-clip-{pt.cache_key(config, identity)}.pt"
    if out_path.exists():
        return str(out_path)
    frames, times_s, moments = [], [], []
    for i, video in enumerate(ds.videos):
        clip_frames = ds.load_frames(i)  # (n, S, S, 3) uint8
        frames.append(clip_frames)
        times_s.append(_frame_times_s(ds, i, len(clip_frames)))
        moments.append(video.moments)
    print(f"pretraining the tiny CLIP on {len(frames)} training videos -> {out_path}")
    return str(pt.pretrain_tiny_clip(frames, times_s, moments, out_path, config))


def _frame_times_s(ds, i: int, n: int) -> np.ndarray:
    """Sample times (s) of item ``i``'s ``n`` frames: the sampler's targets for its duration."""
    from tvrbench.data.video import sample_times

    times = np.asarray(sample_times(float(ds.durations_s[i]), ds.sampling), dtype=np.float64)
    if len(times) != n:
        raise RuntimeError(f"{ds.videos[i].video}: {n} frames but {len(times)} sample times")
    return times


# ----------------------------------------------------------------------------------- the run


def run_bench(
    didemo_root: str | None = None,
    synth_videos: int = 4500,
    clip: str = "tiny",
    clip_checkpoint: str | None = None,
    methods: list[str] | str = DEFAULT_METHODS,
    method_config_dir: str = "configs/method",
    protocol: str = "finetune",
    device: str = "auto",
    out_dir: str = "outputs/bench-didemo",
    run_name: str | None = None,
    cache_dir: str | None = None,
    video_dir: str | None = None,
    max_words: int = 32,
    max_frames: int = 12,
    sample_fps: float = 1.0,
    clip_seconds: float | None = 31.0,
    image_size: int | None = None,
    reader: str = "auto",
    on_bad_video: str = "skip",
    bucket_by: str = "duration",
    bucket_edges_s: list[float] | None = None,
    num_buckets: int = 4,
    batch_size: int = 32,
    eval_batch_size: int = 64,
    num_workers: int = 0,
    train_limit: int | None = None,
    val_limit: int | None = None,
    test_limit: int | None = None,
    max_epochs: int = 3,
    max_minutes_per_method: float | None = 2.0,
    val_check_interval: float = 1.0,
    precision: str = "32-true",
    devices: int | str = 1,
    strategy: str = "auto",
    checkpoints: dict[str, str] | None = None,
    pretrain: bool = True,
    pretrain_minutes: float = 2.0,
    bootstrap_samples: int = 1000,
    gallery_sizes: list[int] = DEFAULT_GALLERY_SIZES,
    gallery_repeats: int = 3,
    gallery_max_mb: float = 1024.0,
    latency_repeats: int = 20,
    latency_warmup: int = 3,
    seed: int = 0,
) -> Path:
    """Run the benchmark; returns the run folder.

    Args:
        didemo_root: folder with DiDeMo's ``{split}_data.json`` + ``{split}_list.txt``; None runs
            the built-in synthetic DiDeMo-format data (generated once into
            ``<cache_dir>/synth-<seed>-<synth_videos>``).
        synth_videos: size of the synthetic dataset (all splits).
        clip: ``"tiny"``, a ``save_pretrained`` folder or a cached hub id.
        clip_checkpoint: a CLIP state dict to start every method from (overrides ``pretrain``).
        methods: names of configs in ``method_config_dir`` (a list or ``"a,b"``).
        protocol: ``finetune`` (every method fine-tunes CLIP) or ``cached_features`` (FAST
            PROTOCOL: frozen backbone, head-only training on features cached once per split; not
            comparable to fine-tuned numbers — see the module docstring).
        device: ``auto``, ``cpu`` or ``cuda`` — training and every measurement.
        out_dir, run_name: results go to ``<out_dir>/<run_name>``; the default name is derived
            from the configuration's hash, so the same command resumes the same folder.
        cache_dir: root of tvrbench's caches (frames, synthetic data, pretrained tiny CLIP);
            default ``~/.cache/tvrbench``.
        video_dir … seed: DataModule settings (see ``tvrbench.data.datamodule``).
        max_epochs, max_minutes_per_method, val_check_interval, precision, devices, strategy:
            the training budget (Lightning Trainer).
        checkpoints: ``{method: path}`` Lightning checkpoints to test instead of training.
        pretrain: pretrain the tiny CLIP on the training split first (tiny CLIP only).
        bootstrap_samples: bootstrap resamples of the 95 % intervals.
        gallery_sizes: gallery sizes of the retrieval-cost measurement.
        gallery_repeats, gallery_max_mb: timed runs per size; memory cap of a materialised gallery.
        latency_repeats, latency_warmup: timed and warm-up runs of the latency measurements.
    """
    config = {k: v for k, v in locals().items()}
    method_names = split_methods(methods)
    config["methods"] = method_names
    if protocol not in PROTOCOLS:
        raise BenchConfigError(f"protocol: {protocol!r} is not one of {', '.join(PROTOCOLS)}")
    from tvrbench.bench.environment import collect_environment, resolve_device
    from tvrbench.bench.report import FAST_PROTOCOL_BANNER

    torch_device = resolve_device(device)
    synthetic = didemo_root is None
    if clip != "tiny":
        # Fail fast, before any decoding: the weights must already be on this machine.
        from tvrbench.backbone import load_clip_model, load_tokenizer

        load_tokenizer(clip)
        load_clip_model(clip)
    if didemo_root is not None and not Path(didemo_root).is_dir():
        raise BenchConfigError(f"didemo_root {didemo_root}: no such folder")
    cache_root = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "tvrbench"
    run_dir = Path(out_dir) / (run_name or default_run_name(config))
    (run_dir / "methods").mkdir(parents=True, exist_ok=True)
    if synthetic:
        print(f"\n*** SYNTHETIC DATA — these are not DiDeMo numbers ***  (run: {run_dir})\n")
    else:
        print(f"DiDeMo from {didemo_root}; run folder {run_dir}")
    if protocol == "cached_features":
        print(f"\n*** {FAST_PROTOCOL_BANNER} ***\n")

    data_root = (
        Path(didemo_root) if didemo_root else _synthetic_root(cache_root, seed, synth_videos)
    )
    pending = [m for m in method_names if not (run_dir / "methods" / f"{m}.json").exists()]
    done = [m for m in method_names if m not in pending]
    if done:
        print(f"resuming {run_dir}: {', '.join(done)} already done; to run: {', '.join(pending)}")
    method_configs = {m: load_method_config(m, method_config_dir) for m in method_names}

    env = collect_environment(torch_device, config=None)
    datamodule = None
    if pending:
        datamodule = _build_datamodule(config, data_root, cache_dir, clip)
        shared_ckpt = clip_checkpoint
        if shared_ckpt is None and pretrain and clip == "tiny":
            shared_ckpt = _pretrained_clip(datamodule, cache_root, pretrain_minutes, seed)
        cached = None
        if protocol == "cached_features":
            cached = _cached_features(config, datamodule, shared_ckpt, cache_root, torch_device)
        for name in pending:
            result = _run_one(
                name,
                method_configs[name],
                config,
                datamodule,
                shared_ckpt,
                run_dir,
                torch_device,
                env.get("matmul_gflops_per_s"),
                cached,
            )
            atomic_write_json(run_dir / "methods" / f"{name}.json", result)
            if result.get("skipped"):
                print(f"[{name}] SKIPPED: {result['skipped']}")
            else:
                print(f"[{name}] done: methods/{name}.json")
        bad = _bad_video_rows(datamodule)
        atomic_write_csv(run_dir / "bad_videos.csv", bad, BAD_VIDEO_COLUMNS)
        summary = _datamodule_summary(datamodule)
        atomic_write_json(run_dir / "data_summary.json", summary)
    write_outputs(run_dir, method_names, config, env, synthetic)
    return run_dir


def _synthetic_root(cache_root: Path, seed: int, videos: int) -> Path:
    from tvrbench.data.synth import generate

    root = cache_root / f"synth-{seed}-{videos}"
    generate(root, videos=videos, seed=seed)  # reuses a complete earlier output
    return root


def _build_datamodule(config: dict[str, Any], data_root: Path, cache_dir: str | None, clip: str):
    from tvrbench.backbone import ClipBackbone
    from tvrbench.data.datamodule import DiDeMoDataModule

    image_size = config["image_size"]
    max_words = config["max_words"]
    if image_size is None:
        image_size = ClipBackbone.from_pretrained(clip).image_size
    return DiDeMoDataModule(
        root=str(data_root),
        video_dir=config["video_dir"],
        tokenizer=clip,
        max_words=max_words,
        max_frames=config["max_frames"],
        sample_fps=config["sample_fps"],
        clip_seconds=config["clip_seconds"],
        image_size=image_size,
        reader=config["reader"],
        cache_dir=str(Path(cache_dir).expanduser() / "frames") if cache_dir else None,
        on_bad_video=config["on_bad_video"],
        bucket_by=config["bucket_by"],
        bucket_edges_s=config["bucket_edges_s"],
        num_buckets=config["num_buckets"],
        batch_size=config["batch_size"],
        eval_batch_size=config["eval_batch_size"],
        num_workers=config["num_workers"],
        train_limit=config["train_limit"],
        val_limit=config["val_limit"],
        test_limit=config["test_limit"],
        seed=config["seed"],
    )


def _accelerator(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


@dataclass
class CachedSetup:
    """The cached-feature protocol's shared inputs: the feature DataModule, its files, the
    identity of the backbone they came from, and one test row of the video DataModule (token
    ids, frames) for the cost measurements, which run on the full module."""

    datamodule: Any
    paths: dict[str, str]
    backbone_id: str
    sample: dict[str, torch.Tensor]


def _cached_features(
    config: dict[str, Any],
    datamodule,
    clip_checkpoint: str | None,
    cache_root: Path,
    device: torch.device,
) -> CachedSetup:
    """Extract (or reuse) the shared starting backbone's features of every split under
    ``<cache_root>/features`` and build the :class:`~tvrbench.features.CachedFeatureDataModule`."""
    from tvrbench.backbone import ClipBackbone
    from tvrbench.data.datamodule import collate_batch
    from tvrbench.features import (
        SPLITS,
        CachedFeatureDataModule,
        backbone_identity,
        extract_features,
    )

    # The same starting weights every method's module gets (RetrievalModule.__init__).
    backbone = ClipBackbone.from_pretrained(config["clip"])
    if clip_checkpoint:
        state = torch.load(clip_checkpoint, map_location="cpu", weights_only=True)
        backbone.clip.load_state_dict(state)
    backbone.requires_grad_(False)
    backbone_id = backbone_identity(backbone)
    backbone.to(device)
    out = cache_root / "features"
    paths: dict[str, str] = {}
    for split in SPLITS:
        t0 = time.perf_counter()
        path = extract_features(
            backbone, datamodule, split, out, batch_size=config["eval_batch_size"]
        )
        paths[split] = str(path)
        print(f"cached features of {split}: {path} ({time.perf_counter() - t0:.1f} s)")
    del backbone
    if device.type == "cuda":
        torch.cuda.empty_cache()
    test = datamodule.dataset("test")
    if len(test) == 0:
        raise RuntimeError("the test split is empty: nothing to evaluate")
    row = collate_batch([test[0]], max_frames=datamodule.sampling.max_frames)
    sample = {k: row[k] for k in ("input_ids", "attention_mask", "frames", "frame_mask")}
    cached_dm = CachedFeatureDataModule(
        train_path=paths["train"],
        val_path=paths["val"],
        test_path=paths["test"],
        batch_size=config["batch_size"],
        eval_batch_size=config["eval_batch_size"],
        num_workers=0,  # in-memory tensors: workers only add start-up time
        seed=config["seed"],
    )
    return CachedSetup(cached_dm, paths, backbone_id, sample)


def _skipped(name: str, method_config: dict[str, Any], config: dict[str, Any], reason: str):
    """The record of a method the protocol cannot run (``methods/<name>.json``)."""
    return {
        "method": name,
        "class_path": method_config["class_path"],
        "init_args": method_config["init_args"],
        "protocol": config["protocol"],
        "skipped": reason,
        "notes": [],
        "rows": [],
        "gallery": [],
    }


def _load_given_checkpoint(module, path: str) -> None:
    """Load a Lightning checkpoint's weights into ``module`` (the cached-feature protocol tests
    the loaded module, whose backbone must be the one the features came from)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if state is None:
        raise BenchConfigError(f"{path}: not a Lightning checkpoint (no state_dict)")
    module.load_state_dict(state)


def _run_one(
    name: str,
    method_config: dict[str, Any],
    config: dict[str, Any],
    datamodule,
    clip_checkpoint: str | None,
    run_dir: Path,
    device: torch.device,
    matmul_rate: float | None,
    cached: CachedSetup | None = None,
) -> dict[str, Any]:
    """Train (or load), test and measure one method; under the cached-feature protocol
    (``cached`` given) train head-only on the cached features, or return a skip record."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    print(f"[{name}] {method_config['class_path']}")
    L.seed_everything(config["seed"], workers=True)
    # The method's word/frame tables must match the data (GLCCL's L×L matrices, positions).
    overrides: dict[str, Any] = {
        "clip": config["clip"],
        "max_words": config["max_words"],
        "max_frames": config["max_frames"],
    }
    if clip_checkpoint:
        overrides["clip_checkpoint"] = clip_checkpoint
    if cached is not None:
        overrides["freeze_backbone"] = True
    module = build_module(method_config, overrides)
    notes: list[str] = []
    if cached is not None:
        from tvrbench.features import CachedFeaturesUnsupportedError, check_cached_protocol

        try:
            check_cached_protocol(module)
        except CachedFeaturesUnsupportedError as err:
            return _skipped(name, method_config, config, str(err))
        notes.append(
            "FAST PROTOCOL (frozen backbone, cached features); GFLOPs and latencies measured "
            "on the full module (CLIP towers included), like fine-tuned runs"
        )
    data = cached.datamodule if cached is not None else datamodule
    ckpt_dir = run_dir / "checkpoints" / name
    checkpoint_cb = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val/R@1",
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
    )
    capture = _capture_callback(cached.sample if cached is not None else None)
    trainer = L.Trainer(
        accelerator=_accelerator(device),
        devices=config["devices"] if device.type == "cuda" else 1,
        strategy=config["strategy"],
        precision=config["precision"],
        max_epochs=config["max_epochs"],
        max_time=(
            {"minutes": config["max_minutes_per_method"]}
            if config["max_minutes_per_method"]
            else None
        ),
        val_check_interval=config["val_check_interval"],
        num_sanity_val_steps=0,
        callbacks=[checkpoint_cb, capture],
        logger=CSVLogger(run_dir / "logs", name=name),
        enable_progress_bar=True,
        deterministic=False,
    )
    given = (config.get("checkpoints") or {}).get(name)
    train_s = 0.0
    selected_on = "val/R@1"
    ckpt_path: str | None
    if given and cached is not None:
        from tvrbench.features import backbone_identity

        _load_given_checkpoint(module, given)
        if backbone_identity(module.backbone) != cached.backbone_id:
            reason = (
                f"checkpoint {given} holds another backbone than the one the cached features "
                "came from (a fine-tuned checkpoint cannot be tested on them)"
            )
            return _skipped(name, method_config, config, reason)
        ckpt_path = None  # weights loaded above: Lightning restores after the data's check
        checkpoint = given
        notes.append(f"checkpoint given in the config: {given} (not trained)")
    elif given:
        ckpt_path = checkpoint = given
        notes.append(f"checkpoint given in the config: {given} (not trained)")
    elif not any(p.requires_grad for p in module.parameters()):
        # e.g. meanP on a frozen backbone: configure_optimizers returns None.
        ckpt_path = None
        checkpoint = "none (no trainable parameters: evaluated without training)"
        selected_on = "not trained"
        notes.append("no trainable parameters with the frozen backbone: evaluated without training")
    else:
        last = ckpt_dir / "last.ckpt"
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
        train_s = time.perf_counter() - t0
        ckpt_path = checkpoint_cb.best_model_path
        if not ckpt_path:
            ckpt_path = checkpoint_cb.last_model_path or (str(last) if last.exists() else "")
            notes.append("no validation ran inside the budget: tested the last checkpoint")
        if not ckpt_path:
            raise RuntimeError(f"[{name}] training produced no checkpoint in {ckpt_dir}")
        checkpoint = ckpt_path
    best_val = checkpoint_cb.best_model_score
    trainer.test(module, datamodule=data, ckpt_path=ckpt_path, verbose=False)
    measured = measure_method(
        module,
        capture,
        device,
        bootstrap_samples=config["bootstrap_samples"],
        gallery_sizes=list(config["gallery_sizes"]),
        latency_repeats=config["latency_repeats"],
        latency_warmup=config["latency_warmup"],
        gallery_repeats=config["gallery_repeats"],
        gallery_max_mb=config["gallery_max_mb"],
        matmul_gflops_per_s=matmul_rate,
        seed=config["seed"],
    )
    data_name = "didemo" if config["didemo_root"] else "synthetic"
    protocol = config["protocol"]
    for row in measured["rows"]:
        row.update(
            method=name, data=data_name, clip_seconds=config["clip_seconds"], protocol=protocol
        )
    for g in measured["gallery"]:
        g.update(method=name, protocol=protocol)
    extra: dict[str, Any] = {}
    if cached is not None:
        extra = {"frozen_backbone": True, "features": dict(cached.paths)}
    return {
        "method": name,
        "class_path": method_config["class_path"],
        "init_args": method_config["init_args"],
        "protocol": protocol,
        **extra,
        "checkpoint": checkpoint,
        "selected_on": selected_on,
        "best_val_R@1": float(best_val) if best_val is not None else None,
        "epochs_trained": int(trainer.current_epoch),
        "train_seconds": train_s,
        "threads": torch.get_num_threads(),
        "notes": notes,
        **measured,
    }


def _bad_video_rows(datamodule) -> list[dict[str, Any]]:
    bad = datamodule.bad_videos() if hasattr(datamodule, "bad_videos") else []
    if hasattr(bad, "to_dict"):
        return list(bad.to_dict("records"))
    rows = []
    for item in bad or []:
        if isinstance(item, dict):
            rows.append(item)
        elif hasattr(item, "__dataclass_fields__"):
            from dataclasses import asdict

            rows.append(asdict(item))
        else:
            rows.append({"video": str(item)})
    return rows


def _datamodule_summary(datamodule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        try:
            out[split] = datamodule.summary(split)
        except Exception as err:  # summary is informative only; never fail the run on it
            out[split] = {"error": str(err)}
        try:
            out[split + "_bucket_edges"] = list(datamodule.bucket_edges(split))
        except Exception:
            pass
    return out


# ------------------------------------------------------------------------------ outputs


RESULT_COLUMNS = [
    "method",
    "bucket",
    "n_queries",
    *[f"t2v_{k}" for k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")],
    *[f"v2t_{k}" for k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")],
    *[
        f"{d}_{k}_{b}"
        for d in ("t2v", "v2t")
        for k in ("R@1", "R@5", "R@10", "R@50", "MdR", "MnR")
        for b in ("lo", "hi")
    ],
    "mean_duration_s",
    "mean_frames",
    "flops_frames",
    "gflops_text",
    "gflops_video",
    "gflops_pair",
    "gflops_pair_formula",
    "latency_query_ms",
    "latency_query_p90_ms",
    "latency_video_ms",
    "latency_video_p90_ms",
    "gallery_size",
    "chance_R@1",
    "data",
    "clip_seconds",
    "protocol",
]
GALLERY_COLUMNS = [
    "method",
    "gallery_size",
    "ms_per_query",
    "p90_ms",
    "materialized",
    "chunk",
    "gflops_pair",
    "achieved_gflops_per_s",
    "fraction_of_matmul",
    "protocol",
]


def write_outputs(
    run_dir: Path, methods: list[str], config: dict[str, Any], env: dict[str, Any], synthetic: bool
) -> None:
    """Combine ``methods/*.json`` into results.csv / gallery.csv / results.json / report / plots."""
    import pandas as pd

    from tvrbench.bench.plots import plot_all
    from tvrbench.bench.report import (
        FAST_PROTOCOL_BANNER,
        SYNTHETIC_BANNER,
        findings,
        render_report,
    )

    protocol = config.get("protocol", "finetune")
    per_method = {m: json.loads((run_dir / "methods" / f"{m}.json").read_text()) for m in methods}
    skipped = {m: per_method[m]["skipped"] for m in methods if per_method[m].get("skipped")}
    ran = [m for m in methods if m not in skipped]
    rows = [row for m in ran for row in per_method[m]["rows"]]
    gallery_rows = [g for m in ran for g in per_method[m]["gallery"]]
    for row in [*rows, *gallery_rows]:  # method files written before the column existed
        row.setdefault("protocol", per_method[row["method"]].get("protocol", protocol))
    atomic_write_csv(run_dir / "results.csv", rows, RESULT_COLUMNS)
    atomic_write_csv(run_dir / "gallery.csv", gallery_rows, GALLERY_COLUMNS)
    bad_path = run_dir / "bad_videos.csv"
    if not bad_path.exists():
        atomic_write_csv(bad_path, [], BAD_VIDEO_COLUMNS)
    n_bad = max(0, len(bad_path.read_text().strip().splitlines()) - 1)
    summary_path = run_dir / "data_summary.json"
    data_summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    columns = list(dict.fromkeys([*RESULT_COLUMNS, *(rows[0] if rows else [])]))
    results = pd.DataFrame(rows, columns=columns)
    gallery = pd.DataFrame(gallery_rows)
    ranks = {m: per_method[m]["ranks"] for m in ran}
    lines = findings(results, ranks, n_boot=config["bootstrap_samples"], seed=config["seed"])
    plots = plot_all(results, gallery, run_dir, synthetic) if rows else []
    notes = [f"{m}: {n}" for m in methods for n in per_method[m].get("notes", [])]
    fast = protocol == "cached_features"
    info = {
        "data": "synthetic" if synthetic else "didemo",
        "environment": env,
        "config": config,
        "bad_videos": n_bad,
        "notes": notes,
        "protocol": protocol,
        "skipped": skipped,
    }
    atomic_write_text(run_dir / "report.md", render_report(results, gallery, info, lines, plots))
    atomic_write_json(
        run_dir / "results.json",
        {
            "data": info["data"],
            "banner": SYNTHETIC_BANNER if synthetic else None,
            "protocol": protocol,
            "protocol_banner": FAST_PROTOCOL_BANNER if fast else None,
            "skipped": skipped,
            "config": config,
            "environment": env,
            "data_summary": data_summary,
            "findings": lines,
            "methods": {
                m: {k: v for k, v in per_method[m].items() if k != "ranks"} for m in methods
            },
            "results": rows,
            "gallery": gallery_rows,
        },
    )
    print("\n".join(["", *(f"- {s}" for s in lines), ""]))
    for m, reason in skipped.items():
        print(f"SKIPPED {m}: {reason}")
    if synthetic:
        print(f"*** {SYNTHETIC_BANNER} ***")
    if fast:
        print(f"*** {FAST_PROTOCOL_BANNER} ***")
    print(f"report: {run_dir / 'report.md'}")


# ---------------------------------------------------------------------------------- CLI


def build_parser():
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="tvrbench bench",
        description="Benchmark text-video retrieval methods per video length (SPEC §4-§5).",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="a configs/bench/*.yaml file")
    parser.add_function_arguments(run_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # they print through their own handler
        logging.getLogger(name).propagate = False
    parser = build_parser()
    cfg = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    kwargs = cfg.as_dict()
    for key in ("config", "__path__"):
        kwargs.pop(key, None)
    from tvrbench.backbone import BackboneNotFoundError
    from tvrbench.data.annotations import AnnotationError
    from tvrbench.data.datamodule import DataSetupError

    try:
        run_bench(**kwargs)
    except (BenchConfigError, BackboneNotFoundError, AnnotationError, DataSetupError) as err:
        print(f"tvrbench bench: {err}", file=sys.stderr)
        return 2
    return 0
