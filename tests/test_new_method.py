"""A new method is one head file and one config: written here from scratch into a temporary
folder, with nothing in the repository edited, it runs through ``benchmarks/scoring.py`` and
``benchmarks/train_step.py``. The config names the shared ``RetrievalModule`` and the new head;
no module subclass is written.

The method, "best frame": the cosine between the sentence and its best-matching real frame, after
a learnable D×D frame projection (identity at init). Per pair that is N·D multiply-adds, so it is
a per-pair method to the scoring benchmark (no large-gallery row).

The ``new_method`` fixture writes the files and puts them on the import path; the slow test runs
the same method through ``tvrbench bench`` (training in a child process included).
"""

from __future__ import annotations

import csv
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHOD = "bestframe"
MODULE = "tvrbench_test_bestframe"  # an import name nothing else uses

HEAD_FILE = '''"""Best frame: cos(t, best real frame of the projected, normalised frames)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TextFeatures
from tvrbench.retrieval import RetrievalHead, State


class BestFrameHead(RetrievalHead):
    """States: text ``sentence [Bt, D]``; video ``frames [Bv, N, D]`` (unit, padding zero) and
    ``frame_mask [Bv, N]``."""

    reference_note = "a Python loop over videos, the same N·D per pair"

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.frame_proj = nn.Linear(dim, dim, bias=False)
        nn.init.eye_(self.frame_proj.weight)

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        mask = frame_mask.bool()
        frames = F.normalize(self.frame_proj(frame_emb), dim=-1) * mask[..., None]  # (Bv, N, D)
        return {"frames": frames, "frame_mask": mask}

    def text_state(self, text: TextFeatures) -> State:
        return {"sentence": F.normalize(text.sentence, dim=-1)}

    def score(self, text: State, video: State) -> Tensor:
        sims = torch.einsum("td,vnd->tvn", text["sentence"], video["frames"])  # (Bt, Bv, N)
        pad = ~video["frame_mask"][None]
        return sims.masked_fill(pad, torch.finfo(sims.dtype).min).amax(-1)  # (Bt, Bv)

    def reference_score(self, text: State, video: State) -> Tensor:
        columns = []
        for frames, mask in zip(video["frames"], video["frame_mask"]):
            columns.append((text["sentence"] @ frames[mask].t()).amax(-1))  # (Bt,)
        return torch.stack(columns, dim=1)  # (Bt, Bv)

    def pair_bytes(self, text: State, video: State) -> int:
        return 3 * 4 * video["frames"].shape[1]  # similarities, masked copy, output

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        return num_frames * dim

    @staticmethod
    def reference_pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """N·D: one dot product per real frame."""
        return num_frames * dim
'''

CONFIG_FILE = f"""# Best frame (tests/test_new_method.py) on the tiny backbone and the tiny recipe.
model:
  class_path: tvrbench.retrieval.RetrievalModule
  init_args:
    head:
      class_path: {MODULE}.BestFrameHead
    clip: tiny
    lr: 1.0e-3
    backbone_lr: 3.0e-4
"""


@dataclass
class NewMethod:
    """Where the new method's files are: its name, config folder and the folder of its code."""

    name: str
    config_dir: Path
    code_dir: Path


@pytest.fixture
def new_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NewMethod:
    """The method's head file and config in ``tmp_path``, importable here (``sys.path``) and in
    child processes (``PYTHONPATH``)."""
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    (code_dir / f"{MODULE}.py").write_text(HEAD_FILE)
    config_dir = tmp_path / "configs" / "method"
    config_dir.mkdir(parents=True)
    (config_dir / f"{METHOD}.yaml").write_text(CONFIG_FILE)
    monkeypatch.syspath_prepend(str(code_dir))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)  # this test's copy, not a cached one
    monkeypatch.setenv("PYTHONPATH", str(code_dir))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return NewMethod(METHOD, config_dir, code_dir)


def load_script(name: str):
    """``benchmarks/<name>.py`` as a module (its ``main(argv)`` runs the benchmark)."""
    spec = importlib.util.spec_from_file_location(
        f"{name}_script", ROOT / "benchmarks" / f"{name}.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def assert_finite(row: dict[str, str], keys: tuple[str, ...]) -> None:
    for key in keys:
        assert math.isfinite(float(row[key])), (key, row[key])


def test_scoring_benchmark_runs_the_new_method(new_method: NewMethod, tmp_path: Path) -> None:
    scoring = load_script("scoring")
    out = tmp_path / "scoring.csv"
    argv = ["--methods", new_method.name, "--quick", "--config-dir", str(new_method.config_dir)]
    assert scoring.main([*argv, "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r["method"] for r in rows] == [new_method.name]  # per-pair: no gallery row
    row = rows[0]
    assert_finite(row, ("time_s", "ref_time_s", "speedup", "flops", "gflops_per_s", "peak_mb"))
    assert float(row["time_s"]) > 0 and float(row["ref_time_s"]) > 0
    assert float(row["max_abs_diff_vs_ref"]) <= 1e-5
    n, frames, dim = int(row["n_texts"]) * int(row["n_videos"]), int(row["frames"]), int(row["dim"])
    assert int(row["flops"]) == n * frames * dim  # the head's own pair_flops
    assert "BestFrameHead" in row["note"]


def test_train_step_benchmark_runs_the_new_method(new_method: NewMethod, tmp_path: Path) -> None:
    train_step = load_script("train_step")
    out = tmp_path / "train-step.csv"
    argv = ["--methods", new_method.name, "--quick", "--config-dir", str(new_method.config_dir)]
    assert train_step.main([*argv, "--threads=1", "--out", str(out)]) == 0
    rows = read_rows(out)
    assert [r["method"] for r in rows] == [new_method.name]
    row = rows[0]
    assert_finite(row, ("step_median_s", "step_p90_s", "steps_per_s", "peak_rss_mib"))
    assert_finite(row, ("eval_1000_s", "mean_frames"))
    assert float(row["step_median_s"]) > 0 and float(row["eval_1000_s"]) > 0
    from tvrbench.backbone import ClipBackbone

    clip_params = sum(p.numel() for p in ClipBackbone.from_pretrained("tiny").parameters())
    dim = ClipBackbone.from_pretrained("tiny").embed_dim
    assert int(row["params"]) == clip_params + dim * dim  # the frame projection is trained


@pytest.mark.slow
def test_bench_runs_the_new_method(new_method: NewMethod, tmp_path: Path) -> None:
    """``tvrbench bench`` on the tiny synthetic setting trains, tests and measures it by name."""
    import pandas as pd

    from tvrbench.bench.runner import main

    argv = [
        "--config", str(ROOT / "configs" / "bench" / "tiny.yaml"),
        "--methods", new_method.name,
        "--method_config_dir", str(new_method.config_dir),
        "--cache_dir", str(tmp_path / "cache"),
        "--out_dir", str(tmp_path / "out"),
        "--run_name", "r",
    ]  # fmt: skip
    assert main(argv) == 0
    results = pd.read_csv(tmp_path / "out" / "r" / "results.csv")
    assert set(results["method"]) == {new_method.name}
    plain = results[(results["postproc"] == "none") & (results["bucket"] == "all")]
    assert len(plain) >= 1 and plain["t2v_R@1"].notna().all()
