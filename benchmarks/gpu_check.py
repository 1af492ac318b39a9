"""One-shot GPU check: turns the risks that no CPU test can see into measured facts.

Run it once on a GPU machine (``make gpu-check``; at most about 8 minutes on one H100) and commit
``benchmarks/results/gpu-check-<device>.json`` and ``.md``. Every step is a function returning a
:class:`StepResult` (passed or failed, figures, the error); a failing step is recorded and the
others still run. Exit status 0 when every step passed, 1 otherwise.

Steps:

1. ``environment`` — torch, CUDA, driver, GPU name; the float32 precision flags as found
   (``float32_matmul_precision``, cuBLAS and cuDNN TF32).
2. ``tiny_bench`` — the tiny benchmark (configs/bench/tiny.yaml's settings) on the device with the
   controlled-length protocol at two injected lengths (``bf16-mixed`` on CUDA), through
   :func:`tvrbench.bench.runner.run_bench` in a temporary folder: every method has a stress row at
   both lengths (the protocol survives Lightning moving the module back after each test).
3. ``train_memory`` — one bf16-autocast training step (forward, backward) of every method at
   ViT-B/32 size (random weights), 64 words and 64 frames, at two per-device batches (4, 8), with
   and without activation checkpointing: peak memory (``torch.cuda.max_memory_allocated``) and the
   per-device batch that fits this GPU extrapolated from the two points (+ 8 bytes per parameter
   of AdamW state, not allocated by a step without an optimizer).
4. ``scoring_precision`` — GLCCL and X-CLIP scoring 1004 × 1004 (L = N = 64, D = 512) from the
   same states in fp32 ``highest``, fp32 ``high`` (TF32) and bf16 states: time, max |ΔS| against
   ``highest``, queries whose rank of the paired video changed.
5. ``timing`` — CUDA-event time (:func:`tvrbench.bench.latency.time_callable`) against
   synchronised wall-clock time of a matmul and of one GLCCL query against a cached gallery.
6. ``matmul_rate`` — dense fp32 and bf16 matmul rate at 1024² and 8192².
7. ``flops`` — fvcore counts of GLCCL and X-CLIP (text, video, pair) on the device equal those on
   the CPU.
8. ``loader`` — a DataLoader of 8 workers yielding uint8 batches of 8 × 64 × 224² × 3: bytes per
   batch and host-to-device copy time, pinned and not.

Without CUDA (or with ``--cpu``) the same steps run at tiny sizes on the CPU (the tiny CLIP,
24 × 24 scoring, 2 workers...), and the output says so at the top: that form only proves the
script works (``tests/test_gpu_check.py`` runs it), its figures are not GPU facts.

Usage::

    .venv/bin/python benchmarks/gpu_check.py [--cpu] [--out-dir benchmarks/results]
        [--only STEP[,STEP...]]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tvrbench.bench.head_cost import random_clip_dir, random_inputs, text_states, video_states
from tvrbench.bench.latency import query_latency, synchronize, time_callable
from tvrbench.methods import CONFIG_DIR, create_module, default_methods

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024**2
GIB = 1024**3


@dataclass(frozen=True)
class Sizes:
    """The sizes of one form of the check (GPU or CPU)."""

    clip: str  # "vit-b32" (random weights) or "tiny"
    train_batches: tuple[int, int]
    train_frames: int
    train_words: int
    score_items: int  # texts = videos
    score_length: int  # L = N
    score_dim: int
    matmul_sizes: tuple[int, ...]
    timing_matmul: int
    gallery: int
    loader_workers: int
    loader_batch: int
    loader_frames: int
    loader_side: int
    loader_batches: int
    stress_lengths_s: tuple[float, float] = (0.0, 30.0)


GPU_SIZES = Sizes(
    "vit-b32", (4, 8), 64, 64, 1004, 64, 512, (1024, 8192), 4096, 1004, 8, 8, 64, 224, 8
)
CPU_SIZES = Sizes("tiny", (1, 2), 4, 8, 24, 8, 64, (128, 256), 256, 64, 2, 2, 4, 32, 3)


@dataclass
class StepResult:
    """What one step found."""

    name: str
    passed: bool
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0


@dataclass
class Context:
    """What every step needs: the device, the sizes, a scratch folder."""

    device: torch.device
    sizes: Sizes
    work_dir: Path
    config_dir: Path = ROOT / CONFIG_DIR


# ------------------------------------------------------------------------------- helpers


def wall_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median synchronised wall-clock milliseconds of ``fn()`` (after one warm-up): the timer
    that the ``timing`` step holds :func:`~tvrbench.bench.latency.time_callable`'s events
    against, so it stays the host's clock on every device."""
    import statistics

    fn()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)


def methods(ctx: Context) -> list[str]:
    """Every method config but variants (:func:`tvrbench.methods.default_methods`)."""
    return default_methods(ctx.config_dir)


def clip_folder(ctx: Context) -> str:
    """``"tiny"``, or a ViT-B/32 with random weights saved once in the scratch folder."""
    if ctx.sizes.clip == "tiny":
        return "tiny"
    path = ctx.work_dir / "vit-b32"
    if not (path / "config.json").is_file():
        from tvrbench.backbone import build_vit_b32_model

        build_vit_b32_model(seed=0).save_pretrained(path)
    return str(path)


def build_method(ctx: Context, method: str, clip: str, words: int, frames: int) -> Any:
    """``method`` built from its config on ``clip``, with ``max_words`` / ``max_frames`` where
    it takes them (seed 0)."""
    torch.manual_seed(0)
    return create_module(
        method, ctx.config_dir, max_words=words, max_frames=frames, clip=clip, clip_checkpoint=None
    )


def random_batch(module: Any, batch: int, frames: int, words: int, seed: int) -> dict[str, Any]:
    """A training batch in the contract's format: uint8 frames ``[B, N, S, S, 3]`` (normalised
    on the device by the module), random token ids ``[B, L]`` ending in the end-of-text id."""
    gen = torch.Generator().manual_seed(seed)
    size = module.backbone.image_size
    text_config = module.backbone.clip.config.text_config
    input_ids = torch.randint(3, int(text_config.vocab_size) - 2, (batch, words), generator=gen)
    input_ids[:, -1] = int(text_config.eos_token_id)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch, words, dtype=torch.long),
        "frames": torch.randint(0, 256, (batch, frames, size, size, 3), generator=gen).to(
            torch.uint8
        ),
        "frame_mask": torch.ones(batch, frames, dtype=torch.bool),
        "index": torch.arange(batch),
        "bucket": torch.zeros(batch, dtype=torch.long),
    }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# --------------------------------------------------------------------------------- steps


def step_environment(ctx: Context) -> StepResult:
    from tvrbench.bench.environment import collect_environment

    env = collect_environment(ctx.device, measure_matmul=False)
    keys = (
        "device_name", "torch", "cuda", "gpu_name", "gpu_driver", "gpu_memory_gib",
        "gpu_capability", "transformers", "lightning", "float32_matmul_precision",
        "cuda_matmul_allow_tf32", "cudnn_allow_tf32", "git_commit",
    )  # fmt: skip
    figures = {k: env.get(k) for k in keys}
    figures["cudnn_version"] = torch.backends.cudnn.version() if ctx.device.type == "cuda" else None
    return StepResult("environment", True, figures)


def step_tiny_bench(ctx: Context) -> StepResult:
    import pandas as pd
    import yaml

    from tvrbench.bench.runner import BenchConfig, run_bench

    cfg = yaml.safe_load((ROOT / "configs" / "bench" / "tiny.yaml").read_text())
    lengths = list(ctx.sizes.stress_lengths_s)
    for key in ("data", "trainer"):  # the config's paths are relative to the repository
        cfg[key] = str(ROOT / cfg[key])
    cfg.update(
        method_config_dir=str(ctx.config_dir),
        recipe_dir=str(ROOT / "configs" / "recipe"),
        device=ctx.device.type,
        stress=True,
        injected_lengths_s=lengths,
        out_dir=str(ctx.work_dir / "bench"),
        cache_dir=str(ctx.work_dir / "cache"),
        bootstrap_samples=20,
        gallery_sizes=[10],
        latency_repeats=2,
    )
    cfg["data_overrides"] = {**cfg["data_overrides"], "max_frames": 4, "clip_seconds": None}
    if ctx.device.type == "cuda":
        cfg["trainer_overrides"] = {**cfg["trainer_overrides"], "precision": "bf16-mixed"}
    run = run_bench(BenchConfig(**cfg))
    stress = pd.read_csv(run / "stress.csv")
    results = json.loads((run / "results.json").read_text())
    found = {m: sorted(set(g["injected_length_s"])) for m, g in stress.groupby("method")}
    complete = set(found) == set(cfg["methods"]) and all(
        all(any(abs(x - t) < 1e-6 for x in got) for t in lengths) for got in found.values()
    )
    figures = {
        "methods": cfg["methods"],
        "lengths_s": lengths,
        "stress_lengths_found": found,
        "precision": cfg["trainer_overrides"].get("precision", "32-true"),
        "environment_flags": {
            k: results.get("environment", {}).get(k)
            for k in ("float32_matmul_precision", "cuda_matmul_allow_tf32", "cudnn_allow_tf32")
        },
    }
    error = None if complete else f"stress rows missing: found {found}, wanted {lengths}"
    return StepResult("tiny_bench", complete, figures, error)


def step_train_memory(ctx: Context) -> StepResult:
    """One bf16-autocast forward + backward per method, batch sizes × checkpointing."""
    import warnings

    from tvrbench.memory import peak_bytes

    s = ctx.sizes
    clip = clip_folder(ctx)
    capacity = (
        torch.cuda.get_device_properties(ctx.device).total_memory
        if ctx.device.type == "cuda"
        else None
    )
    rows: list[dict[str, Any]] = []
    failures: list[str] = []
    for method in methods(ctx):
        try:
            module = build_method(ctx, method, clip, s.train_words, s.train_frames)
            module = module.to(ctx.device).train()
            params = sum(p.numel() for p in module.parameters() if p.requires_grad)
            for ckpt in (False, True):
                module.set_activation_checkpointing(ckpt)
                peaks = []
                for b in s.train_batches:
                    batch = to_device(
                        random_batch(module, b, s.train_frames, s.train_words, b), ctx.device
                    )

                    def step(
                        batch: dict[str, Any] = batch, module: Any = module, method: str = method
                    ) -> None:
                        module.zero_grad(set_to_none=False)
                        with warnings.catch_warnings():
                            warnings.filterwarnings("ignore", message=".*self.log.*")
                            with torch.autocast(ctx.device.type, torch.bfloat16):
                                loss = module.training_step(batch, 0)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"{method}: loss {float(loss)}")
                        loss.backward()

                    step()  # gradients allocated once, as in training
                    measured = peak_bytes(step, ctx.device)
                    peaks.append(measured.peak_bytes)
                    rows.append(
                        {
                            "method": method,
                            "checkpointing": ckpt,
                            "per_device_batch": b,
                            "peak_mib": measured.peak_bytes / MIB,
                            "step_s": measured.seconds,
                            "how": measured.how,
                        }
                    )
                (b1, b2), (p1, p2) = s.train_batches, peaks
                per_video = max(1.0, (p2 - p1) / (b2 - b1))
                fixed = p1 - b1 * per_video  # batch-independent part of the step's peak
                weights = 4 * params + 4 * params + 8 * params  # weights, grads, AdamW moments
                fit = None
                if capacity is not None:
                    fit = int((capacity - weights - fixed) // per_video)
                rows.append(
                    {
                        "method": method,
                        "checkpointing": ckpt,
                        "per_video_mib": per_video / MIB,
                        "per_frame_mib": per_video / MIB / s.train_frames,
                        "fits_per_device_batch": fit,
                    }
                )
            module.set_activation_checkpointing(False)
            del module
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
        except Exception as err:  # one method's failure is recorded, the others still run
            failures.append(f"{method}: {type(err).__name__}: {err}")
    figures = {
        "clip": s.clip,
        "frames": s.train_frames,
        "words": s.train_words,
        "autocast": "bf16",
        "capacity_gib": capacity / GIB if capacity else None,
        "rows": rows,
    }
    return StepResult("train_memory", not failures, figures, "; ".join(failures) or None)


def step_scoring_precision(ctx: Context) -> StepResult:
    from tvrbench.chunking import chunked_score
    from tvrbench.metrics import text_to_video_ranks

    s = ctx.sizes
    clip = random_clip_dir(ctx.work_dir, s.score_dim, s.score_length)
    inputs = random_inputs(s.score_items, s.score_items, s.score_length, s.score_length,
                           s.score_dim, seed=0)  # fmt: skip
    inputs = to_device(inputs, ctx.device)
    budget = 2048 * MIB if ctx.device.type == "cuda" else 64 * MIB
    previous = torch.get_float32_matmul_precision()
    rows = []
    try:
        for method in ("glccl", "xclip"):
            module = build_method(ctx, method, str(clip), s.score_length, s.score_length)
            head = module.head.to(ctx.device).eval()
            with torch.no_grad():
                text = text_states(head, inputs["sentence"], inputs["words"],
                                   inputs["attention_mask"])  # fmt: skip
                video = video_states(head, inputs["frame_emb"], inputs["frame_mask"])
            bf16 = {
                "text": {k: v.bfloat16() if v.is_floating_point() else v for k, v in text.items()},
                "video": {
                    k: v.bfloat16() if v.is_floating_point() else v for k, v in video.items()
                },
            }
            sims: dict[str, torch.Tensor] = {}
            times: dict[str, float] = {}
            for setting in ("highest", "high", "bf16"):
                torch.set_float32_matmul_precision("highest" if setting == "bf16" else setting)
                t, v = (bf16["text"], bf16["video"]) if setting == "bf16" else (text, video)

                def score(t: Any = t, v: Any = v, head: Any = head) -> torch.Tensor:
                    with torch.no_grad():
                        return chunked_score(head, t, v, budget)

                times[setting] = wall_ms(score, ctx.device, repeats=1)
                sims[setting] = score().float()  # (n, n)
            ranks = {k: text_to_video_ranks(v).cpu() for k, v in sims.items()}
            for setting in ("high", "bf16"):
                rows.append(
                    {
                        "method": method,
                        "setting": setting,
                        "time_ms": times[setting],
                        "highest_time_ms": times["highest"],
                        "max_abs_diff": float((sims[setting] - sims["highest"]).abs().max()),
                        "rank_changes": int((ranks[setting] != ranks["highest"]).sum()),
                        "queries": int(ranks["highest"].numel()),
                    }
                )
    finally:
        torch.set_float32_matmul_precision(previous)
    passed = all(r["max_abs_diff"] == r["max_abs_diff"] for r in rows)  # no NaN
    return StepResult("scoring_precision", passed, {"n": s.score_items, "L": s.score_length,
                                                    "D": s.score_dim, "rows": rows})  # fmt: skip


def step_timing(ctx: Context) -> StepResult:
    s = ctx.sizes
    n = s.timing_matmul
    a = torch.randn(n, n, device=ctx.device)
    b = torch.randn(n, n, device=ctx.device)
    rows = []

    def matmul() -> torch.Tensor:
        return a @ b

    event = time_callable(matmul, ctx.device, repeats=10, warmup=2)["median_ms"]
    rows.append(
        {"what": f"matmul {n}²", "timer_ms": event, "wall_ms": wall_ms(matmul, ctx.device, 10)}
    )

    clip = random_clip_dir(ctx.work_dir, s.score_dim, s.score_length)
    module = build_method(ctx, "glccl", str(clip), s.score_length, s.score_length)
    module = module.to(ctx.device).eval()
    inputs = to_device(random_inputs(1, s.gallery, s.score_length, s.score_length, s.score_dim, 1),
                       ctx.device)  # fmt: skip
    with torch.no_grad():
        gallery = video_states(module.head, inputs["frame_emb"], inputs["frame_mask"])
    ids = random_batch(module, 1, 1, s.score_length, seed=3)
    input_ids = ids["input_ids"].to(ctx.device)
    mask = ids["attention_mask"].to(ctx.device)
    timed = query_latency(module, input_ids, mask, gallery, repeats=20, warmup=2)["median_ms"]

    def query() -> None:
        with torch.no_grad():
            module.similarity(module.encode_text(input_ids, mask), gallery)

    rows.append({"what": f"GLCCL query vs {s.gallery} videos", "timer_ms": timed,
                 "wall_ms": wall_ms(query, ctx.device, 20)})  # fmt: skip
    for r in rows:
        r["ratio"] = r["timer_ms"] / r["wall_ms"] if r["wall_ms"] > 0 else None
    timer = "cuda events" if ctx.device.type == "cuda" else "perf_counter"
    # Events time the device's work only, the wall-clock adds launch and synchronisation: the
    # two agree within a factor 2 (on the CPU both are perf_counter: the ratio is noise).
    passed = all(r["ratio"] is not None and 0.5 <= r["ratio"] <= 2.0 for r in rows)
    error = None if passed else "event and wall-clock times disagree"
    return StepResult("timing", passed, {"timer": timer, "rows": rows}, error)


def step_matmul_rate(ctx: Context) -> StepResult:
    from tvrbench.bench.environment import matmul_gflops_per_s

    rows = []
    for size in ctx.sizes.matmul_sizes:
        for dtype in (torch.float32, torch.bfloat16):
            rate = matmul_gflops_per_s(ctx.device, size=size, repeats=5, dtype=dtype)
            rows.append({"size": size, "dtype": str(dtype).replace("torch.", ""),
                         "gflops_per_s": rate})  # fmt: skip
    rows.append({"float32_matmul_precision": torch.get_float32_matmul_precision()})
    return StepResult(
        "matmul_rate", all(r.get("gflops_per_s", 1) > 0 for r in rows), {"rows": rows}
    )


def step_flops(ctx: Context) -> StepResult:
    from tvrbench.bench.flops import method_flops

    rows = []
    for method in ("glccl", "xclip"):
        module = build_method(ctx, method, "tiny", 8, 4).eval()
        batch = random_batch(module, 1, 4, 8, seed=5)
        frames = batch["frames"]
        counts = {}
        for device in (torch.device("cpu"), ctx.device):
            module = module.to(device)
            args = [batch["input_ids"], batch["attention_mask"], frames, batch["frame_mask"]]
            counts[device.type] = method_flops(module, *(a.to(device) for a in args))
        same = counts["cpu"] == counts[ctx.device.type]
        rows.append({"method": method, "cpu": counts["cpu"], "device": counts[ctx.device.type],
                     "equal": same})  # fmt: skip
    figures = {
        "rows": rows,
        "note": "same device twice (CPU form)" if ctx.device.type == "cpu" else "",
    }
    return StepResult("flops", all(r["equal"] for r in rows), figures)


class RandomFrames(torch.utils.data.Dataset):
    """Items of uint8 frames ``[N, S, S, 3]`` (random, seeded by index)."""

    def __init__(self, n_items: int, frames: int, side: int) -> None:
        self.n_items, self.frames, self.side = n_items, frames, side

    def __len__(self) -> int:
        return self.n_items

    def __getitem__(self, i: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(i)
        shape = (self.frames, self.side, self.side, 3)
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)


def step_loader(ctx: Context) -> StepResult:
    import os
    import statistics

    s = ctx.sizes
    expected = s.loader_batch * s.loader_frames * s.loader_side**2 * 3
    rows = []
    ok = True
    for pinned in (False, True):
        pin = pinned and ctx.device.type == "cuda"
        loader = torch.utils.data.DataLoader(
            RandomFrames(s.loader_batch * s.loader_batches, s.loader_frames, s.loader_side),
            batch_size=s.loader_batch,
            num_workers=s.loader_workers,
            pin_memory=pin,
        )
        copy_ms, sizes = [], []
        t0 = time.perf_counter()
        for batch in loader:
            sizes.append(batch.numel() * batch.element_size())
            ok &= batch.dtype == torch.uint8
            synchronize(ctx.device)
            t1 = time.perf_counter()
            on_device = batch.to(ctx.device, non_blocking=pin)
            synchronize(ctx.device)
            copy_ms.append((time.perf_counter() - t1) * 1e3)
            del on_device
        total_s = time.perf_counter() - t0
        ok &= bool(sizes) and all(n == expected for n in sizes)
        rows.append(
            {
                "pin_memory": pin,
                "batches": len(sizes),
                "bytes_per_batch": sizes[0] if sizes else 0,
                "h2d_ms_median": statistics.median(copy_ms) if copy_ms else None,
                "h2d_gb_per_s": (expected / 1e9) / (statistics.median(copy_ms) / 1e3)
                if copy_ms and statistics.median(copy_ms) > 0
                else None,
                "loader_s": total_s,
            }
        )
    shm = os.statvfs("/dev/shm") if os.path.isdir("/dev/shm") else None
    figures = {
        "workers": s.loader_workers,
        "batch_shape": [s.loader_batch, s.loader_frames, s.loader_side, s.loader_side, 3],
        "dev_shm_gib": shm.f_blocks * shm.f_frsize / GIB if shm else None,
        "rows": rows,
    }
    error = None if ok else f"batches not uint8 of {expected} bytes"
    return StepResult("loader", ok, figures, error)


def step_decoders(ctx: Context) -> StepResult:
    """Decode the shared sample videos with every reader (decord, PyAV, torchcodec when it
    imports — its wheels need the CUDA build of torch, so this is where it gets measured):
    frames per CPU-second, and whether the readers agree on the frame count."""
    from tvrbench.data.video import SamplingConfig, available_readers, decode_video

    videos = sorted(p for p in (ROOT.parent / "shared" / "videos").glob("*.mp4"))[:2]
    if not videos:
        return StepResult("decoders", True, {"skipped": "no sample videos in ../shared/videos"})
    sampling = SamplingConfig(1.0, 64, 31.0, 224 if ctx.sizes.clip != "tiny" else 32)
    rows, counts = [], {}
    for reader, why in available_readers().items():
        if why is not None:
            rows.append({"reader": reader, "skipped": why})
            continue
        frames, cpu0 = 0, time.process_time()
        for path in videos:
            n = len(decode_video(path, sampling, reader).frames)
            counts.setdefault(path.name, set()).add(n)
            frames += n
        cpu_s = time.process_time() - cpu0
        rows.append({"reader": reader, "frames": frames, "frames_per_cpu_s": frames / cpu_s})
    agree = all(len(c) == 1 for c in counts.values())
    error = None if agree else f"readers disagree on frame counts: {counts}"
    return StepResult("decoders", agree, {"videos": [p.name for p in videos], "rows": rows}, error)


STEPS: dict[str, Callable[[Context], StepResult]] = {
    "environment": step_environment,
    "tiny_bench": step_tiny_bench,
    "train_memory": step_train_memory,
    "scoring_precision": step_scoring_precision,
    "timing": step_timing,
    "matmul_rate": step_matmul_rate,
    "flops": step_flops,
    "loader": step_loader,
    "decoders": step_decoders,
}


def run_step(name: str, ctx: Context) -> StepResult:
    """Run one step; an exception becomes a failed result with its one-line reason."""
    t0 = time.perf_counter()
    try:
        result = STEPS[name](ctx)
    except Exception as err:
        tb = traceback.extract_tb(err.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        result = StepResult(name, False, error=f"{type(err).__name__}: {err} ({where})")
    result.seconds = time.perf_counter() - t0
    return result


# ------------------------------------------------------------------------------- outputs


def device_slug(device: torch.device) -> str:
    """``cpu``, or the GPU's name in lower case with dashes (``nvidia-h100-80gb-hbm3``)."""
    if device.type != "cuda":
        return "cpu"
    name = torch.cuda.get_device_name(device)
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def summary(results: list[StepResult], banner: str, total_s: float) -> str:
    """The Markdown summary: a line per step, then the rows of each step's figures."""
    lines = [f"# GPU check — {banner}", ""]
    passed = sum(r.passed for r in results)
    lines.append(f"{passed}/{len(results)} steps passed in {total_s:.0f} s.")
    lines.append("")
    for r in results:
        mark = "PASS" if r.passed else "FAIL"
        lines.append(f"## {r.name}: {mark} ({r.seconds:.1f} s)")
        if r.error:
            lines.append(f"- error: {r.error}")
        for key, value in r.figures.items():
            if key == "rows":
                continue
            lines.append(f"- {key}: {_fmt(value)}")
        for row in r.figures.get("rows", []):
            lines.append("- " + ", ".join(f"{k} {_fmt(v)}" for k, v in row.items()))
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU form even where CUDA is present")
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--only", default=None, help=f"STEP[,STEP...] of {', '.join(STEPS)}")
    args = p.parse_args(argv)
    only = [s.strip() for s in (args.only or "").split(",") if s.strip()]
    unknown = [s for s in only if s not in STEPS]
    if unknown:
        p.error(f"--only: unknown step(s) {unknown}; steps are {', '.join(STEPS)}")
    args.steps = only or list(STEPS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    sizes = GPU_SIZES if cuda else CPU_SIZES
    if cuda:
        banner = f"{torch.cuda.get_device_name(device)} (GPU sizes)"
    else:
        banner = "CPU FORM (no CUDA): tiny sizes, checks that the script runs; not GPU figures"
    print(f"*** {banner} ***", flush=True)
    start = time.perf_counter()
    results: list[StepResult] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        ctx = Context(device=device, sizes=sizes, work_dir=Path(tmp))
        for name in args.steps:
            result = run_step(name, ctx)
            results.append(result)
            mark = "PASS" if result.passed else "FAIL"
            why = f": {result.error}" if result.error else ""
            print(f"  {name}: {mark} ({result.seconds:.1f} s){why}", flush=True)
    total_s = time.perf_counter() - start
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu-check-{device_slug(device)}"
    report = {
        "banner": banner,
        "device": str(device),
        "sizes": asdict(sizes),
        "passed": all(r.passed for r in results),
        "seconds": total_s,
        "steps": [asdict(r) for r in results],
    }
    from tvrbench.atomic import atomic_write_json, atomic_write_text

    atomic_write_json(stem.with_suffix(".json"), report)
    text = summary(results, banner, total_s)
    atomic_write_text(stem.with_suffix(".md"), text + "\n")
    print("\n" + text)
    print(f"wrote {stem}.json and {stem}.md")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
