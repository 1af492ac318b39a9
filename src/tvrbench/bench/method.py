"""One (method, seed) of a benchmark run: build it from its resolved config, train it (checkpoint
selected on ``val/R@1``, the validation split only), test the selected checkpoint once, measure.

Training runs in this process on one device, or — when Lightning resolves the trainer's
``devices`` / ``num_nodes`` to more than one device (:func:`~tvrbench.bench.config.training_layout`)
— as ``tvrbench fit --config <resolved config>`` in a child process under Lightning DDP, started
with an explicit environment (:func:`~tvrbench.bench.launch.child_environment`), so that the
run's data preparation, testing, measurement and writing happen once. Testing and measurement
always run here on one device: every test video is counted exactly once.

Logs: training curves in ``logs/<method>/seed<k>/metrics.csv`` (the child's, or this process's
training and test); after a child-process training this process's test logs go to
``logs/<method>/seed<k>-test/`` so that the training curves are kept.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from tvrbench.bench.config import BenchConfigError, RunSpec, is_distributed, one_device
from tvrbench.bench.environment import device_name, proc_status_kb, reset_peak_rss
from tvrbench.bench.launch import UnitJob, child_environment, release_cuda_memory
from tvrbench.bench.measure import MeasureSettings, TestCapture, measure_tested
from tvrbench.bench.postproc import encode_query_bank
from tvrbench.bench.record import MethodRecord
from tvrbench.bench.stress import StressSettings, evaluate_lengths
from tvrbench.methods import load_checkpoint_weights


def _dump_yaml(path: Path, config: dict[str, Any]) -> None:
    import yaml

    from tvrbench.atomic import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False))


def run_folder_trainer(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """The run's trainer section: checkpoints under ``checkpoints/<method>/seed<k>/`` (best on
    ``val/R@1`` + last, for resume), CSV logs under ``logs/<method>/seed<k>``."""
    trainer = copy.deepcopy(spec.config["trainer"])
    trainer["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "dirpath": str(checkpoint_dir(run_dir, spec)),
                "filename": "best",
                "monitor": "val/R@1",
                "mode": "max",
                "save_top_k": 1,
                "save_last": True,
                "auto_insert_metric_name": False,
            },
        }
    ]
    trainer["logger"] = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {
            "save_dir": str(run_dir / "logs"),
            "name": spec.method,
            "version": f"seed{spec.seed}",
        },
    }
    trainer.setdefault("num_sanity_val_steps", 0)
    trainer.setdefault("enable_progress_bar", True)
    return trainer


def checkpoint_dir(run_dir: Path, spec: RunSpec) -> Path:
    return run_dir / "checkpoints" / spec.method / f"seed{spec.seed}"


def _best_from(ckpt_dir: Path) -> tuple[str, float | None]:
    """Selected checkpoint and its val/R@1 after a child-process fit."""
    best, last = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    if best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)
        for key, value in (state.get("callbacks") or {}).items():
            if "ModelCheckpoint" in str(key) and value.get("best_model_score") is not None:
                return str(best), float(value["best_model_score"])
        return str(best), None
    return (str(last) if last.exists() else ""), None


def _epochs_from(last: Path) -> tuple[int, float | None]:
    """Epochs trained and training seconds (the max_time timer) recorded in a child-process
    fit's ``last.ckpt`` (saved at the end of its last epoch: ``epoch`` is that epoch's index)."""
    if not last.is_file():
        return 0, None
    state = torch.load(last, map_location="cpu", weights_only=True)
    progress = (state.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {})
    processed = (progress.get("current") or {}).get("processed")
    epochs = int(processed) if processed is not None else int(state.get("epoch", -1)) + 1
    timer = (state.get("callbacks") or {}).get("Timer") or {}
    elapsed = (timer.get("time_elapsed") or {}).get("train")
    return epochs, (float(elapsed) if elapsed is not None else None)


def _run_config(spec: RunSpec, run_dir: Path, frozen_backbone: bool) -> dict[str, Any]:
    """The (method, seed)'s ``tvrbench fit`` config inside the run folder."""
    config = copy.deepcopy(spec.config)
    if frozen_backbone:
        config["model"]["init_args"]["freeze_backbone"] = True
    config["trainer"] = run_folder_trainer(spec, run_dir)
    return config


def _fit_in_child(
    spec: RunSpec, config: dict[str, Any], run_dir: Path, env: Mapping[str, str]
) -> None:
    """``tvrbench fit --config <resolved>`` in a child process (Lightning starts the ranks, or
    places this one when ``env`` holds a SLURM job's task variables)."""
    path = run_dir / "configs" / f"{spec.method}-seed{spec.seed}-fit.yaml"
    _dump_yaml(path, config)
    last = checkpoint_dir(run_dir, spec) / "last.ckpt"
    cmd = [sys.executable, "-m", "tvrbench.cli", "fit", "--config", str(path)]
    if last.exists():
        cmd += ["--ckpt_path", str(last)]
    print(f"[{spec.key}] training under DDP: {' '.join(cmd)}")
    release_cuda_memory()
    proc = subprocess.run(cmd, env=dict(env))
    if proc.returncode != 0:
        raise RuntimeError(f"[{spec.key}] distributed training failed (exit {proc.returncode})")


def train_as_rank(spec: RunSpec, run_dir: Path, env: Mapping[str, str]) -> None:
    """One non-zero task of a multi-task SLURM job: its rank of the (method, seed)'s training,
    nothing else (task 0 tests, measures and writes the record)."""
    _fit_in_child(spec, _run_config(spec, run_dir, frozen_backbone=False), run_dir, env)


def run_method(
    spec: RunSpec,
    run_dir: Path,
    device: torch.device,
    measure: MeasureSettings,
    *,
    instantiate: Callable[[dict[str, Any]], tuple[Any, Any, Any]],
    datamodule_for: Callable[[Any], Any],
    given_checkpoint: str | None = None,
    cached=None,
    stress: StressSettings | None = None,
    training_env: Mapping[str, str] | None = None,
) -> MethodRecord:
    """Train (or load), test and measure one (method, seed); returns its record.

    Args:
        spec: the resolved run.
        run_dir: the run folder.
        device: where testing and every measurement run.
        measure: the measurement settings (:func:`~tvrbench.bench.measure.measure_tested`;
            with QB-Norm among its post-processings the bank is encoded from the training split
            with the tested weights, before the test).
        instantiate: config dict → ``(model, datamodule, trainer)``
            (:func:`tvrbench.train.instantiate`).
        datamodule_for: the run's shared DataModule for a freshly built one (identical data
            configs share one set-up instance).
        given_checkpoint: a Lightning checkpoint to test instead of training.
        cached: the cached-feature protocol's :class:`~tvrbench.bench.cached.CachedSetup`.
        stress: the controlled-length protocol's settings (SPEC §6): the selected checkpoint is
            evaluated again at every injected length after the test; None: not run.
        training_env: the environment of a child-process training; None:
            :func:`~tvrbench.bench.launch.child_environment` of this process.
    """
    print(f"[{spec.key}] {spec.config['model']['class_path']} (recipe {spec.recipe})")
    started_s = time.perf_counter()
    peak_reset = reset_peak_rss()
    config = _run_config(spec, run_dir, frozen_backbone=cached is not None)
    _dump_yaml(run_dir / "configs" / f"{spec.method}-seed{spec.seed}.yaml", config)
    distributed = is_distributed(config["trainer"])
    local = copy.deepcopy(config)
    if distributed:
        local["trainer"] = one_device(local["trainer"])  # a copy: the child's config keeps its own
        # The child's training curves stay in logs/<method>/seed<k>: test logs beside them.
        local["trainer"]["logger"]["init_args"]["version"] = f"seed{spec.seed}-test"
    module, datamodule, trainer = instantiate(local)
    datamodule = datamodule_for(datamodule)
    datamodule.seed = spec.seed  # data order follows the seed (a shared instance)
    notes: list[str] = list(getattr(module, "init_notes", []))
    if cached is not None:
        from tvrbench.features import CachedFeaturesUnsupportedError, check_cached_protocol

        try:
            check_cached_protocol(module)
        except CachedFeaturesUnsupportedError as err:
            return skipped_record(spec, str(err))
        notes.append(
            "FAST PROTOCOL (frozen backbone, cached features); GFLOPs and latencies measured "
            "on the full module (CLIP towers included), like fine-tuned runs"
        )
    data = cached.datamodule if cached is not None else datamodule
    capture = TestCapture(cached.sample if cached is not None else None)
    trainer.callbacks.append(capture)
    checkpoint_cb = trainer.checkpoint_callback
    train_s, selected_on, best_val = 0.0, "val/R@1", None
    ckpt_path: str | None
    if given_checkpoint:
        load_checkpoint_weights(module, given_checkpoint)
        if cached is not None:
            from tvrbench.features import backbone_identity

            if backbone_identity(module.backbone) != cached.backbone_id:
                return skipped_record(
                    spec,
                    f"checkpoint {given_checkpoint} holds another backbone than the one the "
                    "cached features came from (a fine-tuned checkpoint cannot be tested on them)",
                )
        ckpt_path, checkpoint = None, given_checkpoint
        selected_on = "given"
        notes.append(f"checkpoint given in the config: {given_checkpoint} (not trained)")
    elif not any(p.requires_grad for p in module.parameters()):
        ckpt_path, checkpoint, selected_on = None, "none (no trainable parameters)", "not trained"
        notes.append("no trainable parameters with the frozen backbone: evaluated without training")
    else:
        ckpt_dir = checkpoint_dir(run_dir, spec)
        last = ckpt_dir / "last.ckpt"
        t0 = time.perf_counter()
        if distributed:
            if cached is not None:
                raise BenchConfigError("the cached-feature protocol runs on one device")
            env = child_environment() if training_env is None else training_env
            _fit_in_child(spec, config, run_dir, env)
            ckpt_path, best_val = _best_from(ckpt_dir)
        else:
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if last.exists() else None)
            ckpt_path = checkpoint_cb.best_model_path if checkpoint_cb else ""
            score = checkpoint_cb.best_model_score if checkpoint_cb else None
            best_val = float(score) if score is not None else None
            if not ckpt_path:
                ckpt_path = (checkpoint_cb.last_model_path if checkpoint_cb else "") or (
                    str(last) if last.exists() else ""
                )
        train_s = time.perf_counter() - t0
        if not ckpt_path:
            raise RuntimeError(f"[{spec.key}] training produced no checkpoint in {ckpt_dir}")
        if not best_val and not Path(ckpt_dir / "best.ckpt").exists():
            notes.append("no validation ran inside the budget: tested the last checkpoint")
        checkpoint = ckpt_path
    epochs, timer = int(trainer.current_epoch), ""
    if distributed and selected_on == "val/R@1":
        # The child's trainer is gone: its last checkpoint says how far it got.
        epochs, elapsed_s = _epochs_from(checkpoint_dir(run_dir, spec) / "last.ckpt")
        timer = f"; {elapsed_s:.0f} s trained" if elapsed_s is not None else ""
    planned = config["trainer"].get("max_epochs")
    if selected_on == "val/R@1" and planned and epochs < int(planned):
        # The max_time safety net ended training early: say so, never silently.
        notes.append(
            f"training stopped by max_time after {epochs} of {planned} epochs "
            f"({config['trainer'].get('max_time')}{timer}): not the same budget as a complete "
            "run"
        )
    if ckpt_path is not None:
        load_checkpoint_weights(module, ckpt_path)
    postproc = measure.postproc
    bank = None
    if postproc is not None and postproc.needs_bank:  # QB-Norm: the tested weights' bank
        bank = encode_query_bank(module, data, postproc, device, trainer.precision)
    trainer.test(module, datamodule=data, verbose=False)
    measured = measure_tested(
        module,
        capture,
        device,
        measure,
        bank=bank,
        precision=trainer.precision,
    )
    stress_rows: list[dict[str, Any]] = []
    stress_ranks: dict[str, Any] = {}
    if stress is not None and capture.sample is not None:
        stress_rows, stress_ranks = evaluate_lengths(
            module,
            datamodule,
            capture.sample,
            stress,
            device,
            precision=trainer.precision,
            bank=bank,
        )
    peak_kb = proc_status_kb("VmHWM")
    return MethodRecord(
        **_identity(spec),
        wall_seconds=time.perf_counter() - started_s,
        # This process's peak RSS during the method (training in a DDP child not included);
        # without a resettable mark it is the whole process's peak so far (an upper bound).
        peak_rss_mb=peak_kb / 1024 if peak_kb is not None else None,
        peak_rss_scope="this method" if peak_reset else "process so far (upper bound)",
        checkpoint=checkpoint,
        selected_on=selected_on,
        best_val_r1=best_val,
        epochs_trained=epochs,
        train_seconds=train_s,
        # Resolved in this process's fit (None: trained in a DDP child or not trained here).
        activation_checkpointing=getattr(module, "activation_checkpointing_used", None),
        cost_device=f"{device.type} ({device_name(device)})",
        threads=torch.get_num_threads(),
        notes=notes,
        frozen_backbone=True if cached else None,
        features=dict(cached.paths) if cached else None,
        rows=measured["rows"],
        gallery=measured["gallery"],
        latency_query=measured["latency_query"],
        ranks=measured["ranks"],
        qualitative=measured["qualitative"],
        test_metrics=measured["test_metrics"],
        stress=stress_rows,
        stress_ranks=stress_ranks,
        postproc=postproc.record(bank) if postproc is not None else None,
    )


def _identity(spec: RunSpec) -> dict[str, Any]:
    """What every record of a (method, seed) starts with: names, configuration, recipe."""
    return {
        "method": spec.method,
        "seed": spec.seed,
        "class_path": spec.config["model"]["class_path"],
        "init_args": spec.config["model"]["init_args"],
        "recipe": spec.recipe_record(),
    }


def skipped_record(spec: RunSpec, reason: str) -> MethodRecord:
    """The record of a (method, seed) the protocol cannot run."""
    return MethodRecord(**_identity(spec), skipped=reason)


def run_unit(job: UnitJob) -> str | None:
    """The body of one job: train, test, measure and write one (method, seed)'s record.

    In a SLURM job of several tasks every task is one rank of the training (its ``tvrbench fit``
    child keeps the SLURM variables, so Lightning's SLURM environment places it); task 0 then
    tests and measures on its first device (one-device trainers, which Lightning does not fit
    to the SLURM tasks) and writes the record. Returns the record's path (task 0) or None.
    """
    import submitit

    from tvrbench.bench.outputs import write_record
    from tvrbench.device import resolve_device
    from tvrbench.train import instantiate

    env = submitit.JobEnvironment()
    several = env.num_tasks > 1
    training_env = child_environment(keep_slurm=several)
    run_dir = Path(job.run_dir)
    if env.global_rank > 0:
        if job.given_checkpoint is None:  # task 0 trains too (a given checkpoint: nobody does)
            train_as_rank(job.spec, run_dir, training_env)
        return None
    device = resolve_device(job.device)
    measure = job.measure
    if job.measure_matmul:
        from tvrbench.bench.environment import matmul_gflops_per_s

        measure = dataclasses.replace(measure, matmul_gflops_per_s=matmul_gflops_per_s(device))
    record = run_method(
        job.spec,
        run_dir,
        device,
        measure,
        instantiate=instantiate,
        datamodule_for=lambda datamodule: datamodule,
        given_checkpoint=job.given_checkpoint,
        stress=job.stress,
        training_env=training_env,
    )
    record.job = {"id": env.job_id, "hostname": env.hostname, "tasks": env.num_tasks}
    return str(write_record(run_dir, record))
