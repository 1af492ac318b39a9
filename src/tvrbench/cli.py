"""``tvrbench`` command line: one sub-command per task, each implemented in its own module.

Sub-commands are imported lazily so that ``tvrbench metrics`` does not pay for Lightning.
"""

from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). Each function takes argv (list[str]) and returns
# an exit code.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("tvrbench.train:fit_main", "train a method (LightningCLI; --config configs/...)"),
    "validate": ("tvrbench.train:validate_main", "evaluate on the validation split"),
    "test": ("tvrbench.train:test_main", "evaluate on the test split, overall and per bucket"),
    "bench": ("tvrbench.bench.runner:main", "run the benchmark (configs/bench/didemo.yaml)"),
    "stress": (
        "tvrbench.stress_cli:main",
        "evaluate a run's checkpoints at other injected lengths (--run DIR)",
    ),
    "metrics": ("tvrbench.metrics_cli:main", "score a similarity matrix saved as .npy/.pt"),
    "synth": ("tvrbench.data.synth:main", "generate a synthetic DiDeMo-format dataset"),
    "extract-features": (
        "tvrbench.features:main",
        "cache frozen-CLIP features per split (fast head-only protocol)",
    ),
    "inspect-data": (
        "tvrbench.data.inspect_data:main",
        "count videos, sentences, buckets",
    ),
    "prepare-videos": ("tvrbench.data.prepare:main", "re-encode videos to 3 fps / 224 px (ffmpeg)"),
    "cache-frames": (
        "tvrbench.data.cache_frames:main",
        "decode a data config's videos into the frame cache (before GPU jobs; resumable)",
    ),
}


def _usage() -> str:
    lines = ["usage: tvrbench <command> [options]", "", "commands:"]
    lines += [f"  {name:<15} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`tvrbench <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tvrbench: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
