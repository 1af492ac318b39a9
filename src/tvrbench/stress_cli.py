"""``tvrbench stress --run DIR``: evaluate an existing benchmark run's selected checkpoints at
other injected video lengths (SPEC §6), without retraining, and rewrite its outputs (stress.csv,
the plot, the report). The evaluation itself is :mod:`tvrbench.bench.stress`.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from tvrbench.bench.settings import BenchConfig, stress_settings
from tvrbench.bench.stress import StressSettings, complete_record


def restress_run(
    run: str,
    injected_lengths_s: list[float] | None = None,
    distractor_split: str | None = None,
    placement: str | None = None,
    stress_gallery: int | None = None,
    device: str | None = None,
) -> Path:
    """``tvrbench stress --run DIR``: evaluate an existing run's selected checkpoints at other
    injected lengths (no retraining), add the rows to its records and rewrite its outputs.

    Unset options keep the run's own settings (``results.json`` ``config``). A different
    distractor split, placement or gallery than the run's would mix settings in one table:
    refused.

    Args:
        run: the run folder (``outputs/bench-didemo/<run>``).
        injected_lengths_s: lengths T in seconds to evaluate (those the run has are skipped);
            default: the run's own, else the data's default set.
        distractor_split: ``val`` or ``train`` (must match the run's existing stress rows).
        placement: ``random``, ``start``, ``middle`` or ``end`` (likewise).
        stress_gallery: the first N test videos (likewise; None: the run's setting).
        device: ``auto``, ``cpu`` or ``cuda`` (default: the run's).
    """
    from tvrbench.bench.config import BenchConfigError, seed_list, split_methods
    from tvrbench.bench.environment import collect_environment
    from tvrbench.bench.outputs import read_records, write_outputs, write_record
    from tvrbench.device import resolve_device
    from tvrbench.train import instantiate

    run_dir = Path(run)
    info_path = run_dir / "results.json"
    if not info_path.is_file():
        raise BenchConfigError(f"{run_dir}: not a benchmark run folder (no results.json)")
    info = json.loads(info_path.read_text())
    config = dict(info["config"])
    synthetic = info.get("data") == "synthetic"
    for name, given in (
        ("distractor_split", distractor_split),
        ("placement", placement),
        ("stress_gallery", stress_gallery),
    ):
        had = config.get(name)
        if given is not None and had is not None and given != had and info.get("stress"):
            raise BenchConfigError(
                f"{name}: the run's stress rows used {had!r}; evaluating {given!r} would mix "
                "settings in one table (start a new run instead)"
            )
        if given is not None:
            config[name] = given
    lengths = injected_lengths_s or config.get("injected_lengths_s")
    lengths = [float(t) for t in (lengths or StressSettings.default_lengths(synthetic))]
    known = {float(r["injected_length_s"]) for r in info.get("stress") or []}
    config.update(stress=True, injected_lengths_s=sorted(known | set(lengths)))
    torch_device = resolve_device(device or config.get("device", "auto"))
    # The requested lengths only (those the run has are skipped), under the run's settings.
    recorded = dataclasses.replace(BenchConfig.from_record(config), injected_lengths_s=lengths)
    settings = stress_settings(recorded)
    methods = split_methods(config["methods"])
    seeds = seed_list(config["seeds"], int(config.get("seed", 0)))
    shared: dict[str, Any] = {}

    def share(dm):
        key = type(dm).__qualname__ + json.dumps(
            {k: v for k, v in dict(getattr(dm, "hparams", {}) or {}).items() if k != "seed"},
            sort_keys=True,
            default=str,
        )
        return shared.setdefault(key, dm)

    added = False
    for record in read_records(run_dir, methods, seeds):
        done = complete_record(
            run_dir, record, settings, torch_device, instantiate=instantiate, datamodule_for=share
        )
        if done is not record:
            write_record(run_dir, done)
            added = True
    # The run's own environment stays; lengths added now say where they were measured.
    env = dict(info.get("environment") or collect_environment(torch_device, config=None))
    if added:
        env["stress_added_on"] = collect_environment(torch_device, config=None)
    write_outputs(run_dir, methods, seeds, config, env, synthetic)
    return run_dir


def build_parser():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="tvrbench stress",
        description=(
            "Evaluate an existing benchmark run's selected checkpoints at other injected video "
            "lengths (SPEC §6), without retraining; updates stress.csv, the plot and the report."
        ),
    )
    parser.add_function_arguments(restress_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tvrbench.bench.config import BenchConfigError

    cfg = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    kwargs = {k: v for k, v in cfg.as_dict().items() if k != "__path__"}
    try:
        run_dir = restress_run(**kwargs)
    except (BenchConfigError, ValueError) as err:
        print(f"tvrbench stress: {err}", file=sys.stderr)
        return 2
    print(f"stress.csv: {run_dir / 'stress.csv'}")
    return 0
