"""Where a bench's work runs: the device layout as Lightning resolves it, the training child's
clean environment, the refusal of a multi-task start, and the launcher (submitit local / SLURM):
jobs give the same numbers as the sequential run, a killed job is resubmitted alone, the SLURM
job's parameters and sbatch script follow the config."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import bench_argv, run_dir_of

from tvrbench.bench.config import BenchConfigError, training_layout
from tvrbench.bench.launch import (
    LauncherSettings,
    child_environment,
    executor_parameters,
    make_executor,
    refuse_multi_task_start,
    sbatch_script,
    slurm_trainer_layout,
)
from tvrbench.bench.method import _epochs_from
from tvrbench.bench.runner import main


def metric_columns(frame: pd.DataFrame) -> list[str]:
    """Accuracy values and their intervals (not timings, which vary run to run)."""
    keep = ("t2v_", "v2t_", "n_queries", "chance_")
    return [c for c in frame.columns if c.startswith(keep)]


def assert_same_metrics(one: Path, two: Path, **only: str) -> None:
    """The two runs' results.csv hold the same rows with the same metrics; ``only`` keeps the
    rows whose column (the keyword) holds the value (``seed="0"`` leaves out the seed means)."""
    a, b = pd.read_csv(one / "results.csv"), pd.read_csv(two / "results.csv")
    for column, value in only.items():
        a, b = (f[f[column].astype(str) == value] for f in (a, b))
    key = ["method", "seed", "bucket", "postproc"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    assert len(a) > 0
    assert list(a[key].astype(str).values.ravel()) == list(b[key].astype(str).values.ravel())
    columns = metric_columns(a)
    assert len(columns) > 30 and columns == metric_columns(b)
    for column in columns:
        pd.testing.assert_series_equal(a[column], b[column], check_exact=True, obj=column)


# --------------------------------------------------------------------- layout and environment


@pytest.mark.parametrize(
    "accelerator, devices, num_nodes",
    [("cpu", -1, 1), ("cpu", "auto", 1), ("cpu", 2, 1), ("cpu", "3", 1), ("cpu", 1, 2)]
    + [("cpu", [0, 1], 1), ("cpu", 0, 1), ("auto", "auto", 1)],
)
def test_devices_resolve_like_lightning(accelerator, devices, num_nodes):
    cfg = {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes}
    try:  # the reference: Lightning's Trainer given the same values
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            num_nodes=num_nodes,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
    except Exception:  # Lightning refuses the values: so does the bench, in one line
        with pytest.raises(BenchConfigError) as caught:
            training_layout(cfg)
        assert "\n" not in str(caught.value) and f"devices={devices!r}" in str(caught.value)
        return
    layout = training_layout(cfg)
    assert (layout.devices, layout.num_nodes) == (trainer.num_devices, trainer.num_nodes)
    assert layout.distributed == (trainer.world_size > 1)


def test_child_environment_is_clean():
    parent = {
        "PATH": "/bin",
        "HF_HUB_OFFLINE": "1",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_JOB_ID": "42",
        "TORCHELASTIC_RUN_ID": "x",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "node1",
        "MASTER_PORT": "29500",
        "GROUP_RANK": "0",
        "NODE_RANK": "0",
    }
    assert child_environment(parent) == {"PATH": "/bin", "HF_HUB_OFFLINE": "1"}
    kept = child_environment(parent, keep_slurm=True)
    assert kept == {
        "PATH": "/bin",
        "HF_HUB_OFFLINE": "1",
        "SLURM_NTASKS": "1",
        "SLURM_PROCID": "0",
        "SLURM_JOB_ID": "42",
    }


@pytest.mark.parametrize(
    "environ, refused",
    [
        ({"SLURM_NTASKS": "2", "SLURM_PROCID": "1"}, True),
        ({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "8"}, True),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, True),
        ({"LOCAL_RANK": "1"}, True),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, False),  # an sbatch script's one process
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0", "RANK": "0", "WORLD_SIZE": "1"}, False),
        ({}, False),
    ],
)
def test_multi_task_start_refused(environ, refused):
    if not refused:
        refuse_multi_task_start(environ)
        return
    with pytest.raises(BenchConfigError) as caught:
        refuse_multi_task_start(environ)
    message = str(caught.value)
    assert "\n" not in message and "--launcher slurm" in message and "devices" in message


def test_bench_under_srun_task_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert main(bench_argv(tmp_path)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "task 1 of 2" in err and "--launcher" in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_bad_launcher_is_one_line(tmp_path, capsys):
    assert main(bench_argv(tmp_path, "--launcher", "slurmm")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "launcher.kind: 'slurmm'" in err


def test_epochs_read_from_a_child_checkpoint(tmp_path):
    # As Lightning saves last.ckpt at the end of the 3rd epoch (index 2) after 12.5 s.
    state = {
        "epoch": 2,
        "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 3, "completed": 2}}}},
        "callbacks": {"Timer": {"time_elapsed": {"train": 12.5, "validate": 1.0}}},
    }
    torch.save(state, tmp_path / "last.ckpt")
    assert _epochs_from(tmp_path / "last.ckpt") == (3, 12.5)
    assert _epochs_from(tmp_path / "missing.ckpt") == (0, None)


# ----------------------------------------------------------------------------------- SLURM

SLURM = LauncherSettings(
    kind="slurm",
    partition="gpu",
    gpus_per_node=4,
    nodes=2,
    cpus_per_task=8,
    mem_gb=200,
    timeout_min=600,
    account="proj",
    constraint="a100",
    slurm_additional_parameters={"qos": "high"},
)


def test_slurm_layout_follows_the_allocation():
    assert slurm_trainer_layout(SLURM, {"devices": 1, "strategy": "auto"}) == {
        "accelerator": "gpu",
        "devices": 4,
        "num_nodes": 2,
        "strategy": "ddp",
    }
    one = LauncherSettings(kind="slurm")
    assert slurm_trainer_layout(one, {"devices": 2, "num_nodes": 1})["devices"] == 2
    assert slurm_trainer_layout(one, {"devices": 1})["strategy"] == "auto"
    with pytest.raises(BenchConfigError, match="launcher.gpus_per_node"):
        slurm_trainer_layout(one, {"devices": -1})
    with pytest.raises(BenchConfigError, match="launcher.nodes"):
        LauncherSettings(kind="slurm", nodes=0)


def without_cluster(tmp: Path, monkeypatch) -> None:
    """submitit builds a SLURM executor only where ``srun`` exists: a stand-in on PATH."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")


def test_slurm_executor_parameters_and_sbatch_script(tmp_path, monkeypatch):
    without_cluster(tmp_path, monkeypatch)
    layout = slurm_trainer_layout(SLURM, {"devices": 1})
    params = executor_parameters(SLURM, layout, "tvrbench-glccl-seed0")
    executor = make_executor(SLURM, tmp_path / "jobs", params)
    assert executor.cluster == "slurm"
    assert executor._executor.parameters == {
        "job_name": "tvrbench-glccl-seed0",
        "time": 600,
        "nodes": 2,
        "ntasks_per_node": 4,
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem": "200GB",
        "partition": "gpu",
        "account": "proj",
        "constraint": "a100",
        "additional_parameters": {"qos": "high"},
    }
    script = sbatch_script(executor)
    for line in [
        "#SBATCH --job-name=tvrbench-glccl-seed0",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=200GB",
        "#SBATCH --time=600",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=proj",
        "#SBATCH --constraint=a100",
        "#SBATCH --qos=high",
        f"#SBATCH --output={tmp_path}/jobs/%j_0_log.out",
        f"#SBATCH --error={tmp_path}/jobs/%j_0_log.err",
    ]:
        assert line in script.splitlines(), line
    (command,) = [line for line in script.splitlines() if line.startswith("srun ")]
    assert "-m submitit.core._submit" in command and f"{tmp_path}/jobs" in command


# ------------------------------------------------------------------------- jobs on this machine


def test_local_launcher_one_unit_matches_sequential(tiny_bench_run, tmp_path):
    """meanP seed 0 as a local job gives the numbers of the shared sequential run's meanP seed 0
    (same data cache, same run name: the launcher is not hashed)."""
    shared, seq = tiny_bench_run
    jobs_out = tmp_path / "jobs"
    argv = bench_argv(shared, "--methods", "meanp", "--launcher", "local", out=jobs_out)
    assert main(argv) == 0
    jobs = run_dir_of(jobs_out)
    assert seq.name == jobs.name  # the launcher does not change the run (its hash)
    assert_same_metrics(seq, jobs, method="meanp", seed="0")
    record = json.loads((jobs / "methods" / "meanp" / "seed0.json").read_text())
    assert record["job"]["tasks"] == 1 and record["cost_device"].startswith("cpu")
    assert list((jobs / "jobs" / "meanp-seed0").glob("*_0_log.out"))


@pytest.mark.slow
def test_local_launcher_two_methods_two_seeds_match_sequential(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    two = ["--seeds", "2"]
    assert main(bench_argv(tmp_path, *two, out="seq")) == 0
    assert main(bench_argv(tmp_path, *two, "--launcher", "local", out="jobs")) == 0
    assert_same_metrics(run_dir_of(tmp_path / "seq"), run_dir_of(tmp_path / "jobs"))


def _kill_job_when_started(run_parent: Path, unit: str, killed: list[int]) -> None:
    """SIGKILL the task process of ``unit``'s local job once its training has begun."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = list(run_parent.glob(f"*/configs/{unit.replace('/', '-')}.yaml"))
        if started:
            for proc in Path("/proc").iterdir():
                try:
                    cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                folder = f"jobs/{unit.replace('/', '-')}"
                if "submitit.core._submit" in cmd and folder in cmd:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_job_is_resubmitted_alone(tmp_path, capsys):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = bench_argv(tmp_path, "--launcher", "local", out="jobs")
    killed: list[int] = []
    killer = threading.Thread(
        target=_kill_job_when_started, args=(tmp_path / "jobs", "meanp/seed0", killed)
    )
    killer.start()
    assert main(argv) == 1
    killer.join()
    assert killed
    run = run_dir_of(tmp_path / "jobs")
    err = capsys.readouterr().err
    assert "1 of 2 (method, seed) jobs failed" in err
    (line,) = [x for x in err.splitlines() if x.startswith("[meanp/seed0]")]
    assert "failed" in line and f"{run}/jobs/meanp-seed0/" in line
    assert not (run / "results.csv").exists()  # no combined outputs from an incomplete run
    kept = run / "methods" / "xpool" / "seed0.json"
    before = kept.stat().st_mtime_ns
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 (method, seed) done; 1 to run" in out
    assert "[meanp/seed0] submitted job" in out and "[xpool/seed0] submitted" not in out
    assert kept.stat().st_mtime_ns == before
    assert set(pd.read_csv(run / "results.csv")["method"]) == {"meanp", "xpool"}


@pytest.mark.slow
def test_ddp_child_ignores_parent_slurm_and_rank_variables(tmp_path, monkeypatch):
    """A bench inside an sbatch allocation (one task) or a torchrun-like parent: the training
    child still runs the configured 2 processes (gloo), not the parent's world."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parent = {
        "SLURM_NTASKS": "1",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "bench",
        "SLURM_NODELIST": "localhost",
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
    }
    for key, value in parent.items():
        monkeypatch.setenv(key, value)
    extra = tmp_path / "ddp.yaml"
    extra.write_text("trainer_overrides: {max_epochs: 1, devices: 2, strategy: ddp}\n")
    argv = bench_argv(tmp_path, "--config", str(extra), "--methods", "meanp")
    assert main(argv) == 0
    run = run_dir_of(tmp_path / "out")
    record = json.loads((run / "methods" / "meanp" / "seed0.json").read_text())
    assert record["recipe"]["world_size"] == 2
    assert record["epochs_trained"] == 1  # from the child's last checkpoint, not 0
    assert not any("max_time" in note for note in record["notes"])
    curves = pd.read_csv(run / "logs" / "meanp" / "seed0" / "metrics.csv")
    assert "val/R@1" in curves.columns and curves["val/R@1"].notna().any()  # child's curves
    assert list((run / "logs" / "meanp" / "seed0-test").glob("*")), "test logs beside them"


def test_one_device_keeps_the_named_gpu_and_evaluation_trainer_targets_it():
    """``DEVICE=cuda:1`` must not quietly test on GPU 0 (Lightning's ``devices=1``)."""
    import torch

    from tvrbench.bench.config import one_device
    from tvrbench.device import trainer_devices

    assert one_device({"devices": [2, 3], "num_nodes": 2})["devices"] == [2]
    assert one_device({"devices": 4})["devices"] == 1
    assert trainer_devices(torch.device("cuda:1")) == ("gpu", [1])
    assert trainer_devices(torch.device("cpu")) == ("cpu", 1)
