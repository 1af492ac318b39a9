"""The accuracy-versus-length notebook runs on a tiny benchmark's results.csv."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "accuracy_vs_length.ipynb"


def test_notebook_stored_without_outputs():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_notebook_runs_on_tiny_results(tiny_stress_run, tmp_path, monkeypatch):
    """On the shared controlled-length run (results.csv and stress.csv)."""
    nbclient = pytest.importorskip("nbclient")
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager

    _, run = tiny_stress_run
    results = run / "results.csv"
    # A kernel spec that runs this interpreter (the project's venv), not a system-wide python3.
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "venv",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    manager = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")])
    monkeypatch.setenv("TVRBENCH_RESULTS", str(results))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb,
        timeout=120,
        kernel_name="python3",
        kernel_manager_kwargs={"kernel_spec_manager": manager},
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute(env=dict(os.environ))
    printed = "".join(
        o.get("text", "") + o.get("data", {}).get("text/plain", "")
        for c in nb.cells
        for o in c.get("outputs", [])
    )
    assert "mean_relevant_fraction" in printed  # the controlled-length cell found stress.csv
    assert str(results) in printed
    assert "SYNTHETIC DATA" in printed
