"""A method that the max_time safety net stops early says so in its record and the report."""

from __future__ import annotations

import json

from conftest import bench_argv, run_dir_of

from tvrbench.bench.runner import main


def test_max_time_stop_is_recorded(bench_home, tmp_path):
    extra = tmp_path / "short.yaml"
    extra.write_text(
        'methods: [meanp]\ntrainer_overrides: {max_epochs: 50, max_time: "00:00:00:02",'
        " enable_progress_bar: false}\n"
    )
    assert main(bench_argv(bench_home, "--config", str(extra), out=tmp_path / "out")) == 0
    run = run_dir_of(tmp_path / "out")
    record = json.loads((run / "methods" / "meanp" / "seed0.json").read_text())
    assert record["epochs_trained"] < 50
    note = f"training stopped by max_time after {record['epochs_trained']} of 50 epochs"
    assert any(n.startswith(note) for n in record["notes"])
    assert note in (run / "report.md").read_text()
