"""Training-step cost of every method on the tiny default benchmark: time, peak memory, eval pass.

For each method (tiny configs in ``configs/method/<name>.yaml``) a fresh child process builds the
module on the tiny random CLIP, so its peak memory is that method's alone, then

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
synchronisation (via :func:`tvrbench.bench.latency.time_callable`).

Memory: CPU — ``peak_rss_mib`` = ``ru_maxrss`` (the process's peak resident set) after training
minus ``baseline_rss_mib`` = ``ru_maxrss`` after the imports, i.e. model, optimizer state, batch,
activations and gradients; CUDA — the same two columns hold ``torch.cuda.max_memory_allocated``
growth during build + training and the allocation after the imports (0 in a fresh process).

Every method sees the same batch (same seed). ``params`` counts trainable parameters; ``threads``
is ``torch.get_num_threads()`` in the child.

Usage::

    .venv/bin/python benchmarks/train_step.py [--batch-size 64] [--steps 20]
        [--methods meanp,xpool,centerclip,glccl] [--threads N] [--device cpu|cuda]
        [--eval-size 1000] [--out benchmarks/results/train-step-<device>.csv]
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
# child (``run_child``), so that the baseline memory after imports is measured there.

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("meanp", "xpool", "centerclip", "glccl")
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
SENTENCES_PER_PARAGRAPH = (2, 4)  # inclusive range, as the synthetic generator's paragraphs
WORDS_PER_SENTENCE = (5, 9)  # inclusive range, the lengths of its sentence templates


class TrainStepBenchError(RuntimeError):
    """A method's measuring child failed, or the inputs cannot be used."""


# ------------------------------------------------------------------------------ child side


def method_config(method: str, config_dir: Path) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of ``config_dir/<method>.yaml``."""
    import yaml

    path = config_dir / f"{method}.yaml"
    try:
        model = yaml.safe_load(path.read_text())["model"]
        return str(model["class_path"]), dict(model.get("init_args") or {})
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise TrainStepBenchError(
            f"{path}: not a method config with model.class_path ({err})"
        ) from err


def build_module(method: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The method's module from its tiny config and the init args used; GLCCL's tables follow
    ``--frames``/``--words``."""
    import importlib

    class_path, init_args = method_config(method, Path(args.config_dir))
    if method == "glccl":
        init_args.update(max_frames=args.frames, max_words=args.words)
    module_name, _, class_name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(**init_args), init_args


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


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def eval_pass_s(module: Any, args: argparse.Namespace, tokenizer: Any, device: Any) -> float:
    """Seconds to encode ``--eval-size`` videos and texts and score all of them against each
    other; batches are generated outside the timed sections."""
    import torch

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
            _sync(device)
            t0 = time.perf_counter()
            text, video = module.batch_text_state(batch), module.batch_video_state(batch)
            _sync(device)
            elapsed_s += time.perf_counter() - t0
            for k, v in text.items():
                texts.setdefault(k, []).append(v)
            for k, v in video.items():
                videos.setdefault(k, []).append(v)
        t0 = time.perf_counter()
        text = {k: torch.cat(v) for k, v in texts.items()}
        video = {k: torch.cat(v) for k, v in videos.items()}
        sim = module.similarity(text, video)  # (n, n)
        _sync(device)
        elapsed_s += time.perf_counter() - t0
    if sim.shape != (args.eval_size, args.eval_size):
        raise TrainStepBenchError(f"similarity has shape {tuple(sim.shape)}, not n×n")
    return elapsed_s


def _max_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB


def run_child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """Body of a measuring child: build, train, measure; returns the CSV row."""
    import warnings

    import torch
    from transformers import CLIPModel, PreTrainedTokenizerFast  # noqa: F401  (baseline)

    from tvrbench.backbone import load_tokenizer
    from tvrbench.bench.latency import time_callable

    if str(ROOT) not in sys.path:  # make `baselines` importable
        sys.path.insert(0, str(ROOT))
    class_path, _ = method_config(method, Path(args.config_dir))
    __import__(class_path.rpartition(".")[0])

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        baseline_mib = torch.cuda.memory_allocated(device) / MIB
    else:
        baseline_mib = _max_rss_mib()

    torch.manual_seed(args.seed)
    module, init_args = build_module(method, args)
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
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise TrainStepBenchError(f"{method}: measuring process failed: {why}")
    return json.loads(lines[-1])


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'method':<12}{'params':>10}{'step_med_s':>12}{'step_p90_s':>12}{'steps/s':>9}"
        f"{'peak_MiB':>10}{'base_MiB':>10}{'eval_s':>9}{'threads':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['method']:<12}{r['params']:>10,}{r['step_median_s']:>12.4f}"
            f"{r['step_p90_s']:>12.4f}{r['steps_per_s']:>9.2f}{r['peak_rss_mib']:>10.1f}"
            f"{r['baseline_rss_mib']:>10.1f}{r['eval_1000_s']:>9.2f}{r['threads']:>8}"
        )


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rows atomically: the documented columns, floats to 6 significant digits."""
    from tvrbench.bench.runner import atomic_write_csv

    columns = COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    formatted = [
        {k: f"{r[k]:.6g}" if isinstance(r[k], float) else r[k] for k in columns if k in r}
        for r in rows
    ]
    atomic_write_csv(path, formatted, columns)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=64, help="videos (and paragraphs) per step")
    p.add_argument("--steps", type=int, default=20, help=f"timed steps ({WARMUP_STEPS} warm-up)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    p.add_argument("--frames", type=int, default=18, help="N, max frames per video")
    p.add_argument("--words", type=int, default=32, help="L, tokens per paragraph")
    p.add_argument("--eval-size", type=int, default=1000, help="videos = texts of the eval pass")
    p.add_argument("--eval-batch-size", type=int, default=128, help="encoding batch of the eval")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config-dir", default=str(ROOT / "configs" / "method"), help="method YAMLs")
    p.add_argument("--out", default=None, help="CSV (default results/train-step-<device>.csv)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "frames", "words", "eval_size", "eval_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        p.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    if args.device.split(":")[0] not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:i], got {args.device!r}")
    args.method_list = [m for m in METHODS if m in methods]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        try:
            print(json.dumps(run_child(args.child, args)))
        except TrainStepBenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        return 0
    device_type = args.device.split(":")[0]
    print(
        f"training step on the tiny default: batch {args.batch_size}, <= {args.frames} frames, "
        f"{args.words} tokens; {WARMUP_STEPS} warm-up + {args.steps} timed steps; eval pass "
        f"{args.eval_size} videos x {args.eval_size} texts; one process per method",
        flush=True,
    )
    try:  # fail early, before any child starts, on a missing or malformed config
        for method in args.method_list:
            method_config(method, Path(args.config_dir))
    except TrainStepBenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    load_before = os.getloadavg()[0]
    rows, failed = [], []
    for method in args.method_list:
        t0 = time.perf_counter()
        try:
            rows.append(measure(method, args))
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
    # Other processes on the machine inflate times (the p90 first): the 1-minute load average.
    print(f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "benchmarks" / "results" / (f"train-step-{device_type}.csv")
    )
    write_csv(rows, out)
    print(f"wrote {out} ({time.perf_counter() - start:.0f} s in all)")
    if failed:
        print(f"error: no measurement for {','.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
