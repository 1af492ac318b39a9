"""A method that the max_time safety net stops early says so in its record and the report."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tvrbench.bench.runner import main

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "bench" / "tiny.yaml"


def test_max_time_stop_is_recorded(tmp_path):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    extra = tmp_path / "short.yaml"
    extra.write_text(
        'methods: [meanp]\ntrainer_overrides: {max_epochs: 50, max_time: "00:00:00:02",'
        " enable_progress_bar: false}\n"
    )
    argv = ["--config", str(TINY), "--config", str(extra)]
    argv += ["--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out")]
    assert main(argv) == 0
    (run,) = [p for p in (tmp_path / "out").iterdir() if p.is_dir()]
    record = json.loads((run / "methods" / "meanp" / "seed0.json").read_text())
    assert record["epochs_trained"] < 50
    note = f"training stopped by max_time after {record['epochs_trained']} of 50 epochs"
    assert any(n.startswith(note) for n in record["notes"])
    assert note in (run / "report.md").read_text()
