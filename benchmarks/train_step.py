"""Training-step cost of every method on the tiny default benchmark: time, peak memory, eval pass.

For each method (a config ``<name>.yaml`` in ``--config-dir``, default ``configs/method``; see
:func:`tvrbench.methods.default_methods` for which run without ``--methods``) a fresh child
process builds the module from the config's ``class_path`` and ``init_args`` on its backbone
(``clip: tiny`` in the tiny configs), so its peak memory is that method's alone, then

* trains on one synthetic batch shaped like the tiny default's data (``--batch-size`` 64 videos of
  up to 18 frames of 32×32, one frame per 5-second moment; real lengths 1–18 drawn with the
  synthetic generator's length weights, mean ≈ 8.7; padded frames zero; 32 tokens of random
  paragraphs of 2–4 sentences of random words of the tiny tokenizer's vocabulary): 3 warm-up steps,
  then ``--steps`` timed steps of forward (``RetrievalModule.training_step``) + backward + a plain
  ``torch.optim.AdamW`` step (the method's ``lr``; the Lightning schedule needs a trainer);
* reads the peak memory of the training (before the evaluation pass, so it is training's peak);
* times one evaluation pass: encoding ``--eval-size`` (1000) videos and texts in batches of
  ``--eval-batch-size`` (eval mode, no grad) and scoring them all against each other with the
  module's chunked ``similarity``. Inputs are generated outside the timed sections.

Time: median and 90th percentile (``numpy.percentile``, linear) of the per-step wall time;
``steps_per_s`` = 1 / median. CPU: ``time.perf_counter``; CUDA: ``torch.cuda.Event`` pairs after a
synchronisation (via :func:`tvrbench.bench.latency.time_callable`; the evaluation pass's sections
via :func:`tvrbench.bench.latency.time_call`).

Memory: CPU — ``peak_rss_mib`` = ``ru_maxrss`` (the process's peak resident set) after training
minus ``baseline_rss_mib`` = ``ru_maxrss`` after the imports, i.e. model, optimizer state, batch,
activations and gradients; CUDA — the same two columns hold ``torch.cuda.max_memory_allocated``
growth during build + training and the allocation after the imports (0 in a fresh process).

Every method sees the same batch (same seed). ``params`` counts trainable parameters; ``threads``
is ``torch.get_num_threads()`` in the child. Nothing here knows a method by name: ``--frames`` and
``--words`` are handed to a module as ``max_frames``/``max_words`` where the method takes them
(tables sized to the data, as ``tvrbench bench`` does; :func:`tvrbench.methods.place_data_shape`).
A config whose module cannot be built (its class cannot be imported, its backbone is not on this
machine, its constructor refuses the arguments) is skipped with the reason; the exit status is 1
only when such a method was asked for by name.

``--quick``: batch 4, 2 timed steps, an eval pass of 16 (batches of 8), written to
``outputs/benchmarks/train-step-<device>-quick.csv`` unless ``--out`` says otherwise (the
committed results are full runs); a size given explicitly wins over ``--quick``.

Usage::

    .venv/bin/python benchmarks/train_step.py [--quick] [--batch-size 64] [--steps 20]
        [--methods NAME[,NAME...]] [--config-dir configs/method] [--threads N]
        [--device cpu|cuda] [--eval-size 1000] [--out benchmarks/results/train-step-<device>.csv]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The parent only starts children and writes the table: torch and the methods are imported in the
# child (``run_child``), so that the baseline memory after imports is measured there (the modules
# imported here do not import torch).
from tvrbench.bench.child_env import child_env
from tvrbench.methods import (
    CONFIG_DIR,
    MethodConfigError,
    add_method_options,
    build_module,
    check_arguments,
    class_of,
    load_method,
    methods_from_options,
    place_data_shape,
)

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "device",
    "method",
    "batch_size",
    "frames_max",
    "mean_frames",
    "words",
    "params",
    "step_median_s",
    "step_p90_s",
    "steps_per_s",
    "peak_rss_mib",
    "baseline_rss_mib",
    "eval_1000_s",
    "threads",
    "torch",
]
WARMUP_STEPS = 3
MIB = 1024**2
#: Sizes of a run without ``--quick`` and with it (an explicit flag wins over both).
FULL_SIZES = {"batch_size": 64, "steps": 20, "eval_size": 1000, "eval_batch_size": 128}
QUICK_SIZES = {"batch_size": 4, "steps": 2, "eval_size": 16, "eval_batch_size": 8}
#: Exit status of a child whose module cannot be built (the method is skipped, not failed).
EXIT_CANNOT_BUILD = 3
SENTENCES_PER_PARAGRAPH = (2, 4)  # inclusive range, as the synthetic generator's paragraphs
WORDS_PER_SENTENCE = (5, 9)  # inclusive range, the lengths of its sentence templates


class TrainStepBenchError(RuntimeError):
    """A method's measuring child failed, or the inputs cannot be used."""


class CannotBuildError(TrainStepBenchError):
    """A method's module cannot be built here (the method is skipped)."""


# ------------------------------------------------------------------------------ child side


def build_method(method: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The method's module from its config, and the config's init args: ``--frames`` and
    ``--words`` go in as ``max_frames``/``max_words`` where the method takes them.

    Raises:
        CannotBuildError: the class cannot be imported or the module cannot be constructed.
    """
    config = load_method(method, Path(args.config_dir))
    try:
        model = place_data_shape(config.model(), max_words=args.words, max_frames=args.frames)
        check_arguments(model, config.path)
        module = build_module(model)
    except Exception as err:  # any failure to import or construct: the method is skipped
        raise CannotBuildError(f"{method}: cannot build {config.class_path}: {err}") from err
    return module, config.init_args


def synthetic_batch(
    batch_size: int, frames: int, words: int, image_size: int, tokenizer: Any, seed: int
) -> dict[str, Any]:
    """One batch in the contract's format (docs/CONTRACTS.md), on the CPU.

    ``frames [B, N, 3, H, W]`` standard-normal (CLIP-normalised scale), padded frames zero;
    ``frame_mask [B, N]`` with real lengths drawn from the synthetic generator's length weights
    (clipped to N); ``input_ids``/``attention_mask [B, L]`` from random paragraphs.
    """
    import numpy as np
    import torch

    from tvrbench.data.synth import LENGTH_WEIGHTS, MOMENT_S, vocabulary

    rng = np.random.default_rng(seed)
    weights = np.asarray(LENGTH_WEIGHTS, dtype=float)
    lengths = rng.choice(np.arange(1, len(weights) + 1), size=batch_size, p=weights / weights.sum())
    lengths = np.minimum(lengths, frames)
    vocab = vocabulary()
    paragraphs = []
    for _ in range(batch_size):
        sentences = []
        low, high = SENTENCES_PER_PARAGRAPH
        for _ in range(int(rng.integers(low, high + 1))):
            n_words = int(rng.integers(WORDS_PER_SENTENCE[0], WORDS_PER_SENTENCE[1] + 1))
            sentences.append(" ".join(rng.choice(vocab, size=n_words)) + ".")
        paragraphs.append(" ".join(sentences))
    tokens = tokenizer(
        paragraphs, padding="max_length", truncation=True, max_length=words, return_tensors="pt"
    )
    gen = torch.Generator().manual_seed(seed)
    length_t = torch.as_tensor(lengths)
    frame_mask = torch.arange(frames)[None] < length_t[:, None]  # (B, N)
    pixels = torch.randn(batch_size, frames, 3, image_size, image_size, generator=gen)
    pixels = pixels * frame_mask[:, :, None, None, None]  # (B, N, 3, H, W): padding is zero
    return {
        "input_ids": tokens["input_ids"].long(),
        "attention_mask": tokens["attention_mask"].long(),
        "frames": pixels,
        "frame_mask": frame_mask,
        "index": torch.arange(batch_size),
        "bucket": torch.zeros(batch_size, dtype=torch.long),
        "duration_s": length_t.float() * MOMENT_S,
        "video": [f"synthetic_{i}.mp4" for i in range(batch_size)],
    }


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def eval_pass_s(module: Any, args: argparse.Namespace, tokenizer: Any, device: Any) -> float:
    """Seconds to encode ``--eval-size`` videos and texts and score all of them against each
    other; batches are generated outside the timed sections."""
    import torch

    from tvrbench.bench.latency import time_call

    module.eval()
    image_size = module.backbone.image_size
    texts: dict[str, list[torch.Tensor]] = {}
    videos: dict[str, list[torch.Tensor]] = {}
    elapsed_s = 0.0
    with torch.no_grad():
        warm = to_device(
            synthetic_batch(2, args.frames, args.words, image_size, tokenizer, args.seed + 1),
            device,
        )
        module.batch_text_state(warm)
        module.batch_video_state(warm)
        for i, start in enumerate(range(0, args.eval_size, args.eval_batch_size)):
            size = min(args.eval_batch_size, args.eval_size - start)
            batch = synthetic_batch(
                size, args.frames, args.words, image_size, tokenizer, args.seed + 2 + i
            )
            batch = to_device(batch, device)

            def encode(batch: dict[str, Any] = batch) -> tuple[Any, Any]:
                return module.batch_text_state(batch), module.batch_video_state(batch)

            seconds, (text, video) = time_call(encode, device)
            elapsed_s += seconds
            for k, v in text.items():
                texts.setdefault(k, []).append(v)
            for k, v in video.items():
                videos.setdefault(k, []).append(v)

        def score_all() -> torch.Tensor:
            text = {k: torch.cat(v) for k, v in texts.items()}
            video = {k: torch.cat(v) for k, v in videos.items()}
            return module.similarity(text, video)  # (n, n)

        seconds, sim = time_call(score_all, device)
        elapsed_s += seconds
    if sim.shape != (args.eval_size, args.eval_size):
        raise TrainStepBenchError(f"similarity has shape {tuple(sim.shape)}, not n×n")
    return elapsed_s


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def run_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Body of a measuring child: build, train, measure; returns the CSV row."""
    import warnings

    class_path = load_method(method, Path(args.config_dir)).class_path
    try:  # first (a class that cannot be imported ends the child before torch loads), and
        class_of(class_path)  # before the baseline is read, so the baseline holds every import
    except Exception as err:
        raise CannotBuildError(f"{method}: cannot import {class_path}: {err}") from err

    import torch
    from transformers import CLIPModel, PreTrainedTokenizerFast  # noqa: F401  (baseline)

    from tvrbench.backbone import load_tokenizer
    from tvrbench.bench.latency import time_callable

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline_mib = torch.cuda.memory_allocated(device) / MIB
    else:
        baseline_mib = _max_rss_mib()

    torch.manual_seed(args.seed)
    module, init_args = build_method(method, args)
    if args.words > module.backbone.max_words:
        raise TrainStepBenchError(
            f"--words {args.words} exceeds the CLIP text length {module.backbone.max_words}"
        )
    module = module.to(device).train()
    tokenizer = load_tokenizer(str(init_args.get("clip", "tiny")))
    batch = synthetic_batch(
        args.batch_size, args.frames, args.words, module.backbone.image_size, tokenizer, args.seed
    )
    mean_frames = float(batch["frame_mask"].sum(1).float().mean())
    batch = to_device(batch, device)
    trainable = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=float(init_args.get("lr", 1e-4)))
    step_idx = [0]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = module.training_step(batch, step_idx[0])
        loss.backward()
        optimizer.step()
        step_idx[0] += 1

    with warnings.catch_warnings():
        # training_step logs; outside a Trainer Lightning warns and drops the value.
        warnings.filterwarnings("ignore", message=".*self.log.*")
        timing = time_callable(step, device, repeats=args.steps, warmup=WARMUP_STEPS)
    if device.type == "cuda":
        peak_mib = torch.cuda.max_memory_allocated(device) / MIB - baseline_mib
    else:
        peak_mib = _max_rss_mib() - baseline_mib

    eval_s = eval_pass_s(module, args, tokenizer, device)
    median_s = timing["median_ms"] / 1e3
    return {
        "device": device.type,
        "method": method,
        "batch_size": args.batch_size,
        "frames_max": args.frames,
        "mean_frames": mean_frames,
        "words": args.words,
        "params": sum(p.numel() for p in trainable),
        "step_median_s": median_s,
        "step_p90_s": timing["p90_ms"] / 1e3,
        "steps_per_s": 1.0 / median_s,
        "peak_rss_mib": peak_mib,
        "baseline_rss_mib": baseline_mib,
        "eval_1000_s": eval_s,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------- activation memory

#: Sizes of the activation measurement (``--activations``): videos of ``ACT_FRAMES`` frames at
#: two batch sizes, texts of ``ACT_WORDS`` tokens at two batch sizes; per-frame and per-text
#: figures scale linearly, so small batches suffice.
ACT_FRAMES = 4
ACT_VIDEOS = (1, 2)
ACT_TEXTS = (2, 4)
ACT_WORDS = 64
ACT_COLUMNS = [
    "device",
    "precision",
    "checkpointing",
    "per_frame_mib",
    "per_text_mib",
    "step_s",
    "step_ratio",
    "threads",
    "torch",
]
#: The fit table: an 80 GB GPU, global batch 64 spread over 1, 2, 4 or 8 GPUs.
FIT_GPU_BYTES = 80 * 10**9
FIT_GLOBAL_BATCH = 64
FIT_GPUS = (1, 2, 4, 8)
FIT_FRAMES = (31, 64)


def tower_step(backbone: Any, videos: int, texts: int, bf16: bool, seed: int = 0) -> Any:
    """A function doing one forward + backward of the CLIP towers on ``videos`` videos of
    :data:`ACT_FRAMES` frames and ``texts`` texts of :data:`ACT_WORDS` tokens (inputs made
    outside it), under CPU bf16 autocast when ``bf16`` (like ``bf16-mixed``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    size = backbone.image_size
    frames = torch.randn(videos, ACT_FRAMES, 3, size, size, generator=gen)  # (B, N, 3, H, W)
    frame_mask = torch.ones(videos, ACT_FRAMES, dtype=torch.bool)
    vocab = int(backbone.clip.config.text_config.vocab_size)
    input_ids = torch.randint(3, vocab - 2, (texts, ACT_WORDS), generator=gen)  # (Bt, L)
    input_ids[:, -1] = int(backbone.clip.config.text_config.eos_token_id)
    attention_mask = torch.ones_like(input_ids)

    def step() -> None:
        # Gradients stay allocated between steps (zeroed in place), as in training, so a peak
        # measures the activations, not the first allocation of the gradients.
        backbone.zero_grad(set_to_none=False)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = backbone.clip.logit_scale * 0.0
            if videos:
                loss = loss + backbone.encode_frames(frames, frame_mask).float().square().mean()
            if texts:
                text = backbone.encode_text(input_ids, attention_mask)
                loss = loss + text.words.float().square().mean()
        loss.backward()

    return step


def measure_activations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Activation MiB per frame and per text of the ViT-B/32 towers (random weights) on the
    CPU, fp32 and bf16 autocast, with and without checkpointing, and the step time of each
    (median of ``--act-repeats`` after one warm-up; ``step_ratio``: with / without)."""
    import statistics

    import torch

    from tvrbench.backbone import ClipBackbone, build_vit_b32_model
    from tvrbench.bench.latency import time_call
    from tvrbench.memory import MIB, peak_bytes

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    backbone = ClipBackbone(build_vit_b32_model(args.seed)).train()
    # The embedding layers stay frozen: the token table's dense gradient (49408 × 512, 97 MiB in
    # fp32, whatever the batch) is a transient of the backward pass that would set the peak at
    # these small batches and hide the activations (the shared recipe freezes them too).
    backbone.clip.text_model.embeddings.requires_grad_(False)
    backbone.clip.vision_model.embeddings.requires_grad_(False)
    cpu = torch.device("cpu")
    rows: list[dict[str, Any]] = []
    for precision in ("fp32", "bf16"):
        base_step_s = None
        for checkpointing in (False, True):
            backbone.set_activation_checkpointing(checkpointing)
            bf16 = precision == "bf16"
            tower_step(backbone, 1, 1, bf16)()  # warm-up (first-call allocations)

            def peak(videos: int, texts: int, bf16: bool = bf16) -> int:
                step = tower_step(backbone, videos, texts, bf16)
                return peak_bytes(step, cpu).peak_bytes

            v1, v2 = (peak(v, 0) for v in ACT_VIDEOS)
            t1, t2 = (peak(0, t) for t in ACT_TEXTS)
            per_frame = (v2 - v1) / ((ACT_VIDEOS[1] - ACT_VIDEOS[0]) * ACT_FRAMES) / MIB
            per_text = (t2 - t1) / (ACT_TEXTS[1] - ACT_TEXTS[0]) / MIB
            step = tower_step(backbone, ACT_VIDEOS[1], ACT_TEXTS[0], bf16)
            samples_s = [time_call(step, cpu)[0] for _ in range(args.act_repeats)]
            step_s = statistics.median(samples_s)
            base_step_s = step_s if not checkpointing else base_step_s
            rows.append(
                {
                    "device": "cpu",
                    "precision": precision,
                    "checkpointing": checkpointing,
                    "per_frame_mib": per_frame,
                    "per_text_mib": per_text,
                    "step_s": step_s,
                    "step_ratio": step_s / base_step_s if base_step_s else 1.0,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                }
            )
            print(
                f"  {precision} checkpointing={checkpointing}: {per_frame:.2f} MiB/frame, "
                f"{per_text:.2f} MiB/text, step {step_s:.2f} s",
                flush=True,
            )
    backbone.set_activation_checkpointing(False)
    return rows


def fit_table(rows: list[dict[str, Any]], precision: str = "bf16") -> str:
    """Markdown: per-device batch (global 64 over 1/2/4/8 GPUs) that fits an 80 GB GPU at 31
    and 64 frames, with and without checkpointing, from the measured figures of ``precision``
    (:func:`tvrbench.memory.estimate_step_memory`'s model: tower activations + 16 bytes per
    parameter of ViT-B/32)."""
    from transformers import CLIPConfig

    from tvrbench.backbone import VIT_B32_TEXT, VIT_B32_VISION
    from tvrbench.memory import ActivationFigures, estimate_step_memory

    config = CLIPConfig(text_config=VIT_B32_TEXT, vision_config=VIT_B32_VISION, projection_dim=512)
    params = 151_277_313  # ViT-B/32 CLIPModel (openai/clip-vit-base-patch32)
    gib = 1024**3
    header = "| frames | checkpointing | max per-device batch | " + " | ".join(
        f"{g} GPU{'s' if g > 1 else ''}: batch {FIT_GLOBAL_BATCH // g}" for g in FIT_GPUS
    )
    lines = [header + " |", "|" + "---|" * (3 + len(FIT_GPUS))]
    measured = {
        (r["precision"], r["checkpointing"]): ActivationFigures(
            r["per_frame_mib"], r["per_text_mib"]
        )
        for r in rows
    }
    for frames in FIT_FRAMES:
        for ckpt in (False, True):

            def need(batch: int, frames: int = frames, ckpt: bool = ckpt) -> int:
                figures = measured[(precision, ckpt)]
                est = estimate_step_memory(
                    config, batch, frames, ACT_WORDS, precision, ckpt, params, figures=figures
                )
                return est.total_bytes

            per_video = need(1) - need(0)
            max_batch = max(0, (FIT_GPU_BYTES - need(0)) // max(1, per_video))
            cells = []
            for g in FIT_GPUS:
                batch = FIT_GLOBAL_BATCH // g
                mark = "fits" if need(batch) <= FIT_GPU_BYTES else "OOM"
                cells.append(f"{need(batch) / gib:.0f} GiB, {mark}")
            row = f"| {frames} | {'on' if ckpt else 'off'} | {max_batch} | " + " | ".join(cells)
            lines.append(row + " |")
    return "\n".join(lines)


def write_activations(rows: list[dict[str, Any]], path: Path) -> None:
    from tvrbench.atomic import atomic_write_csv

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(path, rows, ACT_COLUMNS, float_format=".6g")


def activations_main(args: argparse.Namespace) -> int:
    print(
        f"activation memory of the ViT-B/32 towers (random weights) on the CPU: videos "
        f"{ACT_VIDEOS} x {ACT_FRAMES} frames, texts {ACT_TEXTS} x {ACT_WORDS} tokens; fp32 and "
        f"bf16 autocast, checkpointing off/on; step = {ACT_VIDEOS[1]} videos + {ACT_TEXTS[0]} "
        f"texts, median of {args.act_repeats}",
        flush=True,
    )
    rows = measure_activations(args)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / "activations-cpu.csv"
    write_activations(rows, out)
    print("\nfit on an 80 GB GPU, global batch 64, bf16-mixed:\n" + fit_table(rows))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- parent side


def child_args(args: argparse.Namespace) -> list[str]:
    """The arguments to hand a measuring child."""
    names = ("batch_size", "steps", "frames", "words", "eval_size", "eval_batch_size", "seed")
    out = [f"--{n.replace('_', '-')}={getattr(args, n)}" for n in names]
    out += [f"--threads={args.threads}", f"--device={args.device}"]
    return out + [f"--config-dir={args.config_dir}"]


def measure(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``method``'s child process; its last stdout line is the row as JSON."""
    cmd = [sys.executable, str(Path(__file__).resolve()), *child_args(args), f"--child={method}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env())
    lines = proc.stdout.strip().splitlines()
    why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    if proc.returncode == EXIT_CANNOT_BUILD:
        raise CannotBuildError(why.removeprefix("error: "))
    if proc.returncode != 0 or not lines:
        raise TrainStepBenchError(f"{method}: measuring process failed: {why}")
    return json.loads(lines[-1])


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max([12, *(len(r["method"]) + 2 for r in rows)])
    header = (
        f"{'method':<{width}}{'params':>10}{'step_med_s':>12}{'step_p90_s':>12}{'steps/s':>9}"
        f"{'peak_MiB':>10}{'base_MiB':>10}{'eval_s':>9}{'threads':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:<{width}}{r['params']:>10,}{r['step_median_s']:>12.4f}"
            f"{r['step_p90_s']:>12.4f}{r['steps_per_s']:>9.2f}{r['peak_rss_mib']:>10.1f}"
            f"{r['baseline_rss_mib']:>10.1f}{r['eval_1000_s']:>9.2f}{r['threads']:>8}"
        )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows atomically: the documented columns, floats to 6 significant digits."""
    from tvrbench.atomic import atomic_write_csv

    columns = COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [{k: r[k] for k in columns if k in r} for r in rows]  # the documented columns only
    atomic_write_csv(path, kept, columns, float_format=".6g")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, finishes in seconds")
    p.add_argument("--batch-size", type=int, default=None, help="videos (and paragraphs) per step")
    p.add_argument("--steps", type=int, default=None, help=f"timed steps ({WARMUP_STEPS} warm-up)")
    add_method_options(p, ROOT / CONFIG_DIR)
    p.add_argument("--frames", type=int, default=18, help="N, max frames per video")
    p.add_argument("--words", type=int, default=32, help="L, tokens per paragraph")
    p.add_argument(
        "--eval-size", type=int, default=None, help="videos = texts of the eval pass (1000)"
    )
    p.add_argument("--eval-batch-size", type=int, default=None, help="encoding batch of the eval")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="CSV (default results/train-step-<device>.csv)")
    p.add_argument(
        "--activations",
        action="store_true",
        help="measure activation MiB per frame/text of the ViT-B/32 towers instead (CPU)",
    )
    p.add_argument("--act-repeats", type=int, default=3, help="timed steps of --activations")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, value in (QUICK_SIZES if args.quick else FULL_SIZES).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("batch_size", "steps", "frames", "words", "eval_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:i], got {args.device!r}")
    if args.child or args.activations:
        return args
    args.method_list = methods_from_options(p, args)
    args.named = bool(args.methods)  # methods asked for by name: a skip is a failure
    return args


def default_out(args: argparse.Namespace) -> Path:
    """Where the CSV goes without ``--out``: the committed results, or outputs/ for --quick."""
    device_type = args.device.split(":")[0]
    if args.quick:
        return ROOT / "outputs" / "benchmarks" / f"train-step-{device_type}-quick.csv"
    return ROOT / "benchmarks" / "results" / f"train-step-{device_type}.csv"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.activations:
        return activations_main(args)
    if args.child:
        try:
            print(json.dumps(run_child(args.child, args)))
        except CannotBuildError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_CANNOT_BUILD
        except (TrainStepBenchError, MethodConfigError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    print(
        f"training step on the tiny default: batch {args.batch_size}, <= {args.frames} frames, "
        f"{args.words} tokens; {WARMUP_STEPS} warm-up + {args.steps} timed steps; eval pass "
        f"{args.eval_size} videos x {args.eval_size} texts; one process per method; methods "
        f"{','.join(args.method_list)} (configs in {args.config_dir})",
        flush=True,
    )
    try:  # fail early, before any child starts, on a missing or malformed config
        for method in args.method_list:
            load_method(method, Path(args.config_dir))
    except MethodConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, failed, skipped = [], [], []
    for method in args.method_list:
        t0 = time.perf_counter()
        try:
            rows.append(measure(method, args))
        except CannotBuildError as err:
            print(f"  skipped {err}", flush=True)
            skipped.append(method)
            continue
        except TrainStepBenchError as err:
            print(f"error: {err}", file=sys.stderr)
            failed.append(method)
            continue
        print(f"  {method}: done in {time.perf_counter() - t0:.1f} s", flush=True)
    print()
    if rows:
        print_table(rows)
        r = rows[0]
        print(
            f"\ndevice {r['device']}, torch {r['torch']}, {r['threads']} threads; mean "
            f"{r['mean_frames']:.2f} real frames per video; memory = peak minus baseline after "
            f"imports ({'ru_maxrss' if r['device'] == 'cpu' else 'cuda max_memory_allocated'})"
        )
    if skipped:
        print(f"skipped (module cannot be built here): {','.join(skipped)}")
    # Other processes on the machine inflate times (the p90 first): the 1-minute load average.
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    out = Path(args.out) if args.out else default_out(args)
    write_csv(rows, out)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s in all)")
    if args.named and skipped:
        failed += skipped
    if failed:
        print(f"error: no measurement for {','.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
