"""Where a bench run's work executes: the device layout of one (method, seed)'s training, the
environment its training child starts in, and the job launcher across (method, seed) units.

Two levels, each left to an existing tool:

- **inside one (method, seed)**: Lightning distributes the training. The layout (``devices``,
  ``num_nodes``, ``-1``, ``"auto"``, lists) is resolved with Lightning's own accelerator parsing
  (:func:`tvrbench.bench.config.training_layout`); a layout of more than one device trains in a
  ``tvrbench fit`` child whose environment is explicit (:func:`child_environment`: no inherited
  scheduler or rank variables unless the launcher passes them on purpose).
- **across (method, seed) units**: ``launcher: none | local | slurm`` (:class:`LauncherSettings`).
  ``none`` runs them one after another in this process; ``local`` and ``slurm`` submit every
  missing unit as one job through submitit (the launcher Hydra uses): its local executor on this
  machine, or one SLURM job per unit (``nodes`` × ``gpus_per_node`` tasks, Lightning's SLURM
  environment inside). Every job writes only its own record
  (:func:`tvrbench.bench.method.run_unit`); the submitting process writes the combined outputs
  once all records are there.

Job files live in ``<run>/jobs/<method>-seed<k>/``: submitit's ``<job id>_0_log.out`` /
``_log.err`` (stdout / stderr of task 0), ``<job id>_submission.sh`` (SLURM), ``job.json`` (the
last job id, for collecting after ``--no_wait``).
"""

from __future__ import annotations

import gc
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tvrbench.bench.config import BenchConfigError, DeviceLayout, RunSpec
from tvrbench.bench.measure import MeasureSettings

LAUNCHER_KINDS = ("none", "local", "slurm")
#: Variables through which a cluster or a launcher tells a process its rank: a training child
#: started by the bench must not inherit them (Lightning would take it for one rank of theirs).
SCHEDULER_PREFIXES = ("SLURM_", "TORCHELASTIC_", "OMPI_COMM_WORLD_", "PMI_", "JSM_NAMESPACE_")
RANK_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_NAME",
    "ROLE_WORLD_SIZE",
    "NODE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LSB_DJOB_RANKFILE",
)
SUPPORTED_WAYS = (
    "run `tvrbench bench` once: trainer devices/num_nodes make Lightning start the ranks of each "
    "(method, seed), `--launcher slurm` submits one SLURM job per (method, seed), "
    "`--launcher local` runs them as local jobs"
)


# ------------------------------------------------------------------------------- settings


@dataclass
class LauncherSettings:
    """The ``launcher`` section of a bench config.

    Args:
        kind: ``none`` (every (method, seed) in this process, one after another), ``local``
            (one submitit job per (method, seed) on this machine) or ``slurm`` (one SLURM job
            per (method, seed)).
        partition, account, constraint: SLURM's ``--partition``, ``--account``, ``--constraint``.
        gpus_per_node: GPUs of every job per node; SLURM tasks per node equal it (one Lightning
            rank per task). None: the trainer's ``devices`` (an explicit count or list).
        nodes: nodes of every job (the trainer's ``num_nodes`` becomes it). None: the trainer's.
        cpus_per_task: CPU cores per task (data loading workers live there).
        mem_gb: memory per node (GB).
        timeout_min: wall-clock limit of every job (minutes); a job stopped by it resumes from
            its ``last.ckpt`` when the bench is run again.
        slurm_additional_parameters: any other ``#SBATCH`` option, e.g. ``{"qos": "high"}``.
    """

    kind: str = "none"
    partition: str | None = None
    gpus_per_node: int | None = None
    nodes: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    account: str | None = None
    constraint: str | None = None
    slurm_additional_parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in LAUNCHER_KINDS:
            raise BenchConfigError(
                f"launcher.kind: {self.kind!r} is not one of {', '.join(LAUNCHER_KINDS)}"
            )
        for name in ("gpus_per_node", "nodes", "cpus_per_task", "timeout_min"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise BenchConfigError(f"launcher.{name}: {value!r} (need a whole number >= 1)")
        if self.mem_gb is not None and float(self.mem_gb) <= 0:
            raise BenchConfigError(f"launcher.mem_gb: {self.mem_gb!r} (need a positive number)")

    @classmethod
    def from_config(
        cls, value: LauncherSettings | Mapping[str, Any] | str | None
    ) -> LauncherSettings:
        """``"local"`` (the command line's ``--launcher local``), a mapping (the config's
        ``launcher:`` section) or None (``none``)."""
        if isinstance(value, LauncherSettings):
            return value
        if value is None:
            return cls()
        if isinstance(value, str):
            return cls(kind=value)
        unknown = sorted(set(value) - set(cls.__dataclass_fields__))
        if unknown:
            raise BenchConfigError(f"launcher: unknown setting(s) {', '.join(unknown)}")
        return cls(**dict(value))


def check_launch(settings: LauncherSettings, protocol: str, no_wait: bool) -> None:
    """Refuse a launch this launcher cannot do (one-line :class:`BenchConfigError`)."""
    if settings.kind != "none" and protocol == "cached_features":
        raise BenchConfigError("launcher: the cached_features protocol runs in one process (none)")
    if no_wait and settings.kind != "slurm":
        raise BenchConfigError(
            "no_wait: only with launcher slurm (local jobs end with this process)"
        )


def slurm_trainer_layout(
    settings: LauncherSettings, trainer_cfg: Mapping[str, Any]
) -> dict[str, Any]:
    """The trainer values every SLURM job trains with: its allocation (``gpus_per_node`` GPUs on
    each of ``nodes`` nodes), DDP across them. Lightning inside the job must use exactly what
    SLURM allocated, so these replace the trainer config's own ``devices`` / ``num_nodes``."""
    gpus = settings.gpus_per_node
    if gpus is None:
        devices = trainer_cfg.get("devices", 1)
        if isinstance(devices, int) and devices > 0:
            gpus = devices
        elif isinstance(devices, (list, tuple)) and devices:
            gpus = len(devices)
        else:
            raise BenchConfigError(
                f"launcher.gpus_per_node: needed with trainer devices={devices!r} (the submitting "
                "host cannot count a job's GPUs)"
            )
    nodes = settings.nodes or int(trainer_cfg.get("num_nodes", 1) or 1)
    strategy = "ddp" if gpus * nodes > 1 else trainer_cfg.get("strategy", "auto")
    return {"accelerator": "gpu", "devices": gpus, "num_nodes": nodes, "strategy": strategy}


# ---------------------------------------------------------------------------- environment


def child_environment(
    environ: Mapping[str, str] | None = None, *, keep_slurm: bool = False
) -> dict[str, str]:
    """The environment a ``tvrbench fit`` child starts in: this process's, less every variable
    through which a scheduler or launcher assigns ranks (so Lightning inside resolves the
    configured devices itself). ``keep_slurm``: keep ``SLURM_*`` on purpose — the child is one
    task of a SLURM job whose tasks are the training's ranks."""
    source = os.environ if environ is None else environ
    prefixes = tuple(p for p in SCHEDULER_PREFIXES if not (keep_slurm and p == "SLURM_"))
    return {
        k: v for k, v in source.items() if k not in RANK_VARIABLES and not k.startswith(prefixes)
    }


def refuse_multi_task_start(environ: Mapping[str, str] | None = None) -> None:
    """A bench started as one of several tasks (``srun -n8``, ``torchrun``) would run whole
    benches side by side into one folder: refuse at once, in one line."""
    env = os.environ if environ is None else environ

    def number(name: str, default: int) -> int:
        try:
            return int(env.get(name, default) or default)
        except ValueError:
            return default

    tasks = max(number("SLURM_STEP_NUM_TASKS", 1), number("WORLD_SIZE", 1))
    rank = max(number("SLURM_PROCID", 0), number("RANK", 0), number("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and rank > 0:
        tasks = max(tasks, number("SLURM_NTASKS", 1))
    if tasks > 1 or rank > 0:
        raise BenchConfigError(
            f"started as task {rank} of {max(tasks, rank + 1)} (srun/torchrun); {SUPPORTED_WAYS}"
        )


def release_cuda_memory() -> None:
    """Hand this process's cached CUDA memory back before a child or a job needs the device."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- the jobs


@dataclass(frozen=True)
class UnitJob:
    """Everything one (method, seed) job needs (pickled by submitit)."""

    spec: RunSpec
    run_dir: str  # absolute
    device: str  # "auto" | "cpu" | "cuda": resolved inside the job, on its node
    measure: MeasureSettings
    given_checkpoint: str | None = None
    stress: Any = None  # tvrbench.bench.stress.StressSettings | None
    measure_matmul: bool = False  # measure the job's matmul rate (another machine than ours)


def unit_folder(run_dir: Path, spec: RunSpec) -> Path:
    return run_dir / "jobs" / f"{spec.method}-seed{spec.seed}"


def executor_parameters(
    settings: LauncherSettings, layout: Mapping[str, Any], name: str
) -> dict[str, Any]:
    """submitit ``AutoExecutor.update_parameters`` keywords of one unit's job.

    Args:
        layout: the trainer values of the job (``devices``, ``num_nodes``; SLURM:
            :func:`slurm_trainer_layout`).
    """
    params: dict[str, Any] = {"name": name, "timeout_min": settings.timeout_min}
    if settings.kind == "local":
        return {**params, "tasks_per_node": 1}
    gpus, nodes = int(layout["devices"]), int(layout["num_nodes"])
    params.update(nodes=nodes, tasks_per_node=gpus, gpus_per_node=gpus)
    optional = {
        "cpus_per_task": settings.cpus_per_task,
        "mem_gb": settings.mem_gb,
        "slurm_partition": settings.partition,
        "slurm_account": settings.account,
        "slurm_constraint": settings.constraint,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if settings.slurm_additional_parameters:
        params["slurm_additional_parameters"] = dict(settings.slurm_additional_parameters)
    return params


def make_executor(settings: LauncherSettings, folder: Path, params: Mapping[str, Any]):
    """submitit's ``AutoExecutor`` for ``settings.kind`` (``local`` | ``slurm``) writing into
    ``folder``; building a SLURM one needs no cluster."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=settings.kind)
    executor.update_parameters(**params)
    return executor


def sbatch_script(executor) -> str:
    """The sbatch script submitit writes for a job of a SLURM ``executor`` (its ``%j`` is the
    job id)."""
    inner = executor._executor  # submitit's SlurmExecutor behind the AutoExecutor
    return inner._make_submission_file_text(inner._submitit_command_str, "<uuid>")


class UnitsFailedError(RuntimeError):
    """Some (method, seed) jobs ended without a record (the message: one line per unit)."""


@dataclass
class UnitFailure:
    """A unit whose job ended without a record."""

    key: str
    job_id: str
    log_path: str
    stderr_tail: str

    def line(self) -> str:
        tail = " | ".join(self.stderr_tail.strip().splitlines()[-3:]) or "(no stderr)"
        return f"[{self.key}] job {self.job_id} failed: {tail} (log: {self.log_path})"


def _gpu_blocks(layout: DeviceLayout | None, units: int) -> list[tuple[int, ...]]:
    """Local jobs on a GPU machine: unit i sees its own block of ``layout.devices`` GPUs (blocks
    wrap around when there are more units than blocks). None (SLURM): SLURM allocates them."""
    import torch

    total = 0
    if layout is not None and layout.accelerator == "cuda":
        total = torch.cuda.device_count()
    if layout is None or total == 0:
        return [()] * units
    size = min(layout.devices, total)
    return [tuple((i * size + j) % total for j in range(size)) for i in range(units)]


def _active_slurm_job(folder: Path):
    """The SLURM job of a previous ``--no_wait`` submission that is still queued or running."""
    import submitit

    record = folder / "job.json"
    if not record.is_file():
        return None
    saved = json.loads(record.read_text())
    if saved.get("kind") != "slurm":
        return None
    job: submitit.SlurmJob = submitit.SlurmJob(folder=folder, job_id=str(saved["job_id"]))
    return None if job.done() else job


def submit_units(
    settings: LauncherSettings,
    units: list[UnitJob],
    layout: DeviceLayout | None,
    body: Callable[[UnitJob], str | None],
    *,
    wait: bool = True,
    poll_s: float = 2.0,
) -> list[UnitFailure]:
    """Submit every unit as one job (``settings.kind`` local or slurm), print the job ids and,
    with ``wait``, one line per finished unit; returns the units that failed.

    Args:
        layout: the units' training layout resolved here (local jobs: which GPUs each sees);
            None for SLURM.
        body: what each job runs (:func:`tvrbench.bench.method.run_unit`; pickled by submitit).
    """
    import submitit

    from tvrbench.atomic import atomic_write_text

    release_cuda_memory()
    jobs = []
    for unit, gpus in zip(units, _gpu_blocks(layout, len(units))):
        folder = unit_folder(Path(unit.run_dir), unit.spec)
        folder.mkdir(parents=True, exist_ok=True)
        job = _active_slurm_job(folder) if settings.kind == "slurm" else None
        if job is None:
            name = f"tvrbench-{unit.spec.method}-seed{unit.spec.seed}"
            params = executor_parameters(settings, unit.spec.config["trainer"], name)
            if gpus:
                params.update(gpus_per_node=len(gpus), local_visible_gpus=list(gpus))
            job = make_executor(settings, folder, params).submit(body, unit)
            saved = {"kind": settings.kind, "job_id": str(job.job_id), "unit": unit.spec.key}
            atomic_write_text(folder / "job.json", json.dumps(saved))
            print(f"[{unit.spec.key}] submitted job {job.job_id} (logs: {folder})")
        else:
            print(f"[{unit.spec.key}] job {job.job_id} already queued or running: collecting it")
        jobs.append((unit, job))
    if not wait:
        return []
    failures: list[UnitFailure] = []
    by_job = {id(job): unit for unit, job in jobs}
    started_s = time.perf_counter()
    for done, job in enumerate(
        submitit.helpers.as_completed([job for _, job in jobs], poll_frequency=poll_s), 1
    ):
        unit = by_job[id(job)]
        elapsed = f"{time.perf_counter() - started_s:.0f} s"
        error = job.exception()
        if error is None:
            print(f"[{unit.spec.key}] job {job.job_id} done ({done}/{len(jobs)}, {elapsed})")
            continue
        failure = UnitFailure(
            unit.spec.key, str(job.job_id), str(job.paths.stderr), job.stderr() or str(error)
        )
        failures.append(failure)
        print(f"{failure.line()} ({done}/{len(jobs)}, {elapsed})")
    return failures
