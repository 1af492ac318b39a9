"""``tvrbench metrics``: happy path and every kind of bad input (exit 2, one stderr line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tvrbench import metrics_cli
from tvrbench.metrics import (
    MDR_CONVENTION,
    V2T_CONVENTIONS,
    bootstrap_ci,
    retrieval_metrics,
    text_to_video_ranks,
    video_to_text_ranks,
)

KEYS = ["R@1", "R@5", "R@10", "R@50", "MdR", "MnR", "MRR", "n_queries"]
CONVENTION_KEYS = {"mdr_convention", "v2t_convention", "v2t_convention_description"}
CONVENTION_KEYS |= {"tie_convention"}
PREFIX = "tvrbench metrics: "


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "tvrbench", "metrics", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def case(tmp_path):
    """A 24-text x 8-video matrix with 3 captions per video and ties, saved as .npy and .pt."""
    rng = np.random.default_rng(0)
    t2v = np.repeat(np.arange(8), 3)
    rng.shuffle(t2v)
    sim = rng.normal(size=(24, 8)).round(1)
    sim[np.arange(24), t2v] += 1.0
    np.save(tmp_path / "sim.npy", sim)
    torch.save(torch.from_numpy(sim).float(), tmp_path / "sim.pt")
    np.save(tmp_path / "map.npy", t2v)
    (tmp_path / "map.txt").write_text("\n".join(map(str, t2v)) + "\n")
    (tmp_path / "map.csv").write_text(",".join(map(str, t2v)))
    return tmp_path, sim, t2v


# ------------------------------------------------------------------------------------ happy path


def test_json_output_matches_functional_core(case):
    tmp, sim, t2v = case
    proc = run_cli(tmp / "sim.npy", "--text-to-video", tmp / "map.npy", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = json.loads(proc.stdout)  # the whole of stdout is one JSON object
    assert set(out) == {"t2v", "v2t"} | CONVENTION_KEYS
    assert out["mdr_convention"] == MDR_CONVENTION
    assert out["v2t_convention"] == "best-caption"
    assert out["v2t_convention_description"] == V2T_CONVENTIONS["best-caption"]
    expected = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(t2v))
    for direction in ("t2v", "v2t"):
        assert list(out[direction]) == KEYS
        assert out[direction] == pytest.approx(expected[direction])
    assert out["t2v"]["n_queries"] == 24 and out["v2t"]["n_queries"] == 8


def test_text_maps_and_pt_input_give_the_same_result(case, capsys):
    tmp, sim, t2v = case
    results = []
    for sim_name, map_name in [("sim.npy", "map.txt"), ("sim.npy", "map.csv"), ("sim.pt", None)]:
        args = [str(tmp / sim_name), "--json"]
        if map_name is None:
            torch.save(torch.from_numpy(t2v), tmp / "map.pt")
            map_name = "map.pt"
        args += ["--text-to-video", str(tmp / map_name)]
        assert metrics_cli.main(args) == 0
        results.append(json.loads(capsys.readouterr().out))
    # sim.pt holds float32 scores: rounding may create ties the float64 .npy does not have.
    sim_t, t2v_t = torch.from_numpy(sim), torch.from_numpy(t2v)
    expected_each = [retrieval_metrics(sim_t, t2v_t)] * 2 + [
        retrieval_metrics(sim_t.float(), t2v_t)
    ]
    for result, expected in zip(results, expected_each):
        assert set(result) == {"t2v", "v2t"} | CONVENTION_KEYS
        assert result["t2v"] == pytest.approx(expected["t2v"])
        assert result["v2t"] == pytest.approx(expected["v2t"])


def test_identity_map_and_table_output(tmp_path, capsys):
    sim = np.eye(5) + 0.1
    sim[0, 1] = 1.1  # text 0 ranks its video second
    np.save(tmp_path / "sq.npy", sim)
    assert metrics_cli.main([str(tmp_path / "sq.npy")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == KEYS
    t2v_row = lines[1].split()
    assert t2v_row[0] == "t2v" and float(t2v_row[1]) == 80.0 and t2v_row[-1] == "5"
    assert lines[2].split()[0] == "v2t"
    assert f"MdR: {MDR_CONVENTION}" in lines
    assert any(line.startswith("v2t: best-caption (") for line in lines)


def ref_reference_v2t(sim: np.ndarray, t2v: np.ndarray) -> np.ndarray:
    """Plain NumPy: each video's captions reduced to their max score, then rank (ties against)."""
    n_video = sim.shape[1]
    reduced = np.stack([sim[t2v == k].max(axis=0) for k in range(n_video)])  # (Nv, Nv)
    own = np.diag(reduced)
    return (reduced >= own[None, :]).sum(axis=0)  # own video included: the "1 +"


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_v2t_reference_option_equals_numpy_max_over_captions(tmp_path, capsys, seed):
    rng = np.random.default_rng(seed)
    n_video = 12
    t2v = np.concatenate([np.arange(n_video), rng.integers(0, n_video, 3 * n_video)])
    rng.shuffle(t2v)
    sim = rng.normal(size=(len(t2v), n_video)).round(1)  # ties
    sim[np.arange(len(t2v)), t2v] += 1.0
    np.save(tmp_path / "sim.npy", sim)
    np.save(tmp_path / "map.npy", t2v)
    args = [str(tmp_path / "sim.npy"), "--text-to-video", str(tmp_path / "map.npy"), "--json"]
    assert metrics_cli.main([*args, "--v2t", "reference"]) == 0
    out = json.loads(capsys.readouterr().out)
    ranks = ref_reference_v2t(sim, t2v)
    assert out["v2t"]["MnR"] == pytest.approx(ranks.mean())
    assert out["v2t"]["MdR"] == float(np.median(ranks))
    assert out["v2t"]["R@1"] == pytest.approx(100.0 * np.mean(ranks <= 1))
    assert out["v2t_convention"] == "reference"
    assert "max" in out["v2t_convention_description"]
    expected_t2v = retrieval_metrics(torch.from_numpy(sim), torch.from_numpy(t2v))["t2v"]
    assert out["t2v"] == pytest.approx(expected_t2v)
    # The default counts every rival caption, so it can only rank a video lower.
    default = video_to_text_ranks(torch.from_numpy(sim), torch.from_numpy(t2v)).numpy()
    assert (default >= ranks).all()
    assert metrics_cli.main([*args[:3], "--v2t", "reference"]) == 0
    assert "v2t: reference (" in capsys.readouterr().out


def test_unknown_v2t_convention_is_a_usage_error(case, capsys):
    tmp, _, _ = case
    with pytest.raises(SystemExit) as exc:
        metrics_cli.main([str(tmp / "sim.npy"), "--v2t", "max"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bootstrap_adds_intervals(case, capsys):
    tmp, sim, t2v = case
    args = [str(tmp / "sim.npy"), "--text-to-video", str(tmp / "map.npy"), "--json"]
    assert metrics_cli.main([*args, "--bootstrap", "200", "--seed", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"t2v", "v2t", "ci"} | CONVENTION_KEYS
    assert list(out["t2v"]) == KEYS
    ranks = text_to_video_ranks(torch.from_numpy(sim), torch.from_numpy(t2v))
    expected = bootstrap_ci(ranks, n_boot=200, seed=5)
    assert set(out["ci"]["t2v"]) == set(expected)
    for key, (lo, hi) in expected.items():
        assert out["ci"]["t2v"][key] == pytest.approx([lo, hi])
    assert out["ci"]["n_boot"] == 200 and out["ci"]["level"] == 0.95
    assert metrics_cli.main([*args[:3], "--bootstrap", "50"]) == 0
    assert "95% CI" in capsys.readouterr().out


def test_import_does_not_load_lightning():
    code = (
        "import sys, tvrbench.metrics_cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------ bad input


def _write_bad_inputs(tmp: Path, sim: np.ndarray, t2v: np.ndarray) -> None:
    (tmp / "garbage.npy").write_bytes(b"this is not a numpy file")
    (tmp / "garbage.pt").write_bytes(b"\x00\x01 not a torch file")
    torch.save({"sim": torch.zeros(2, 2)}, tmp / "dict.pt")
    np.save(tmp / "vec.npy", np.zeros(5))
    nan_sim = sim.copy()
    nan_sim[4, 2] = np.nan
    np.save(tmp / "nan.npy", nan_sim)
    inf_sim = sim.copy()
    inf_sim[1, 7] = -np.inf
    torch.save(torch.from_numpy(inf_sim), tmp / "inf.pt")
    np.save(tmp / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    np.save(tmp / "short_map.npy", t2v[:-1])
    out_of_range = t2v.copy()
    out_of_range[3] = 8
    np.save(tmp / "range_map.npy", out_of_range)
    np.save(tmp / "float_map.npy", t2v.astype(np.float64))
    (tmp / "float_map.txt").write_text("0 1 2.5\n")
    uncovered = t2v.copy()
    uncovered[uncovered == 5] = 4  # video 5 loses all its captions
    np.save(tmp / "uncovered_map.npy", uncovered)
    (tmp / "sim.json").write_text("[[1, 2]]")


# name -> (arguments, file names relative to tmp; text that must appear in the error line).
BAD_CASES = {
    "missing_sim": (["nope.npy"], "not found"),
    "sim_is_directory": (["."], "not a file"),
    "garbage_npy": (["garbage.npy"], "cannot read"),
    "garbage_pt": (["garbage.pt"], "cannot read"),
    "pt_holds_dict": (["dict.pt"], "expected a tensor"),
    "unsupported_type": (["sim.json"], "unsupported"),
    "not_2d": (["vec.npy"], "2-D"),
    "not_numbers": (["strings.npy"], "real numbers"),
    "nan": (["nan.npy", "--text-to-video", "map.npy"], "1 non-finite entries (NaN or inf)"),
    "inf": (["inf.pt", "--text-to-video", "map.npy"], "first at [1, 7] = -inf"),
    "not_square_without_map": (["sim.npy"], "not square"),
    "missing_map": (["sim.npy", "--text-to-video", "nope.txt"], "not found"),
    "map_wrong_length": (["sim.npy", "--text-to-video", "short_map.npy"], "expected (24,)"),
    "map_out_of_range": (["sim.npy", "--text-to-video", "range_map.npy"], "entry 3 = 8"),
    "map_float_npy": (["sim.npy", "--text-to-video", "float_map.npy"], "integers"),
    "map_float_txt": (["sim.npy", "--text-to-video", "float_map.txt"], "'2.5'"),
    "video_without_text": (["sim.npy", "--text-to-video", "uncovered_map.npy"], "no text"),
    "bad_option": (["sim.npy", "--bootstrap", "many"], "invalid int"),
}
# The file the error line must name: SIM for problems of the matrix itself, MAP otherwise.
SIM_PROBLEMS = {"nan", "inf"}
# Run through a real subprocess in the fast suite; the rest also run there under `slow`.
SUBPROCESS_FAST = {"nan", "map_out_of_range"}


def _resolve(tmp: Path, args: list[str]) -> list[str]:
    """File arguments (SIM and MAP) made absolute under ``tmp``."""
    files = {0} | {i + 1 for i, a in enumerate(args) if a == "--text-to-video"}
    return [str(tmp / a) if i in files else a for i, a in enumerate(args)]


def _culprit(tmp: Path, name: str, args: list[str]) -> str:
    if "--text-to-video" in args and name not in SIM_PROBLEMS:
        return str(tmp / args[args.index("--text-to-video") + 1])
    return str(tmp / args[0])


def _check_error(tmp: Path, name: str, rc: int, stdout: str, stderr: str) -> None:
    args, needle = BAD_CASES[name]
    assert rc == 2
    assert stdout == ""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(PREFIX)
    assert needle in lines[0]
    if name != "bad_option":
        assert _culprit(tmp, name, args) in lines[0]


@pytest.mark.parametrize("name", list(BAD_CASES))
def test_bad_input_in_process(case, capsys, name):
    tmp, sim, t2v = case
    _write_bad_inputs(tmp, sim, t2v)
    args = _resolve(tmp, BAD_CASES[name][0])
    try:
        rc = metrics_cli.main(args)
    except SystemExit as exc:  # argparse usage errors
        rc = int(exc.code or 0)
    captured = capsys.readouterr()
    _check_error(tmp, name, rc, captured.out, captured.err)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=() if n in SUBPROCESS_FAST else pytest.mark.slow) for n in BAD_CASES],
)
def test_bad_input_subprocess(case, name):
    tmp, sim, t2v = case
    _write_bad_inputs(tmp, sim, t2v)
    args = _resolve(tmp, BAD_CASES[name][0])
    proc = run_cli(*args)
    assert "Traceback" not in proc.stderr
    _check_error(tmp, name, proc.returncode, proc.stdout, proc.stderr)
