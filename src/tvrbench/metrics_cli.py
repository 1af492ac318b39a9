"""``tvrbench metrics SIM [--text-to-video MAP] [--v2t CONV] [--json] [--bootstrap N]``.

Scores a saved similarity matrix.

SIM is a ``.npy`` or ``.pt`` file holding a 2-D array ``[n_text, n_video]`` (row = text, column =
video, higher = more similar). MAP (``.npy``/``.pt``, or ``.txt``/``.csv`` of integers) gives each
text's video column; without it the identity map is used (square SIM). Metrics follow
:mod:`tvrbench.metrics` (ties count against the query).

``--v2t`` chooses the video→text convention (:data:`tvrbench.metrics.V2T_CONVENTIONS`):
``best-caption`` (default; each video's best-placed caption among all texts) or ``reference``
(each video's captions reduced to their max score first, as CLIP4Clip and X-Pool do).

``--postproc dsl|qbnorm`` re-scores SIM first (:mod:`tvrbench.postproc`, ../shared/POSTPROC.md):
DSL (dual softmax, transductive: every test query at once; λ = ``--dsl-lambda``, default 100 on
the cosine scale) or QB-Norm (dynamic inverted softmax; β, k, θ = ``--qb-beta/--qb-k/--qb-theta``,
default 20, 1, 1 on the cosine scale) with ``--bank BANK``: ``[n_bank, n_video]`` similarities of
training queries to the same test videos (same checkpoint and scale); ``--bank-v2t BANK_V``:
``[n_text, n_bank_videos]`` test texts × training videos for v2t (without it v2t is not
computed, ``null`` in JSON).

Output: a table (rows t2v, v2t) followed by the conventions, or with ``--json`` one JSON object
``{"t2v": {...}, "v2t": {...}, "mdr_convention": str, "v2t_convention": str,
"v2t_convention_description": str, "tie_convention": str}`` whose ``t2v``/``v2t`` keys are
the registry metrics (``R@1 R@5 R@10 R@50 MdR MnR`` …, :data:`tvrbench.metrics.METRICS`) and
``n_queries`` (with ``--postproc`` one more key ``"postproc"`` = ``{"method", ...parameters}``).
With ``--bootstrap N`` the intervals are added: as extra table rows, or in JSON as one more
top-level key ``"ci"`` = ``{"level", "n_boot", "seed", "t2v": {metric: [lo, hi]}, "v2t": ...}``.

Bad input exits with code 2 and one line on stderr (``tvrbench metrics: FILE: problem``).
This module imports torch and NumPy only, never Lightning.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch

from tvrbench.metrics import (
    MDR_CONVENTION,
    METRIC_NAMES,
    TIE_CONVENTION,
    V2T_CONVENTIONS,
    NonFiniteScoresError,
    bootstrap_ci,
    summarize_ranks,
)
from tvrbench.postproc import (
    POSTPROC_METHODS,
    DSLSettings,
    PostprocError,
    QBNormSettings,
    postprocessed_ranks,
)

PROG = "tvrbench metrics"
COLUMNS = (*METRIC_NAMES, "n_queries")


class MetricsInputError(ValueError):
    """An input file of ``tvrbench metrics`` is missing, unreadable or inconsistent."""

    def __init__(self, path: str | Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Text-video retrieval metrics (R@k, MdR, MnR) of a saved similarity matrix.",
    )
    parser.add_argument("sim", metavar="SIM", help=".npy or .pt file, 2-D [n_text, n_video]")
    parser.add_argument(
        "--text-to-video",
        metavar="MAP",
        help="integer array (.npy/.pt/.txt/.csv), length n_text: each text's video column "
        "(default: identity, SIM must be square)",
    )
    parser.add_argument(
        "--v2t",
        choices=list(V2T_CONVENTIONS),
        default="best-caption",
        help="video-to-text convention: best-caption (default; the best-placed caption of each "
        "video among all texts) or reference (each video's captions reduced to their max score "
        "first, as CLIP4Clip and X-Pool do)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--bootstrap",
        metavar="N",
        type=int,
        default=0,
        help="add percentile bootstrap 95%% intervals from N resamples",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--postproc",
        choices=list(POSTPROC_METHODS),
        default="none",
        help="re-score SIM first: dsl (dual softmax, transductive) or qbnorm (needs --bank)",
    )
    parser.add_argument(
        "--bank",
        metavar="BANK",
        help="QB-Norm query bank (.npy/.pt), [n_bank, n_video]: training queries x test videos",
    )
    parser.add_argument(
        "--bank-v2t",
        metavar="BANK_V",
        help="QB-Norm v2t bank (.npy/.pt), [n_text, n_bank_videos]: test texts x training videos",
    )
    parser.add_argument(
        "--dsl-lambda", type=float, default=DSLSettings.inverse_temperature, help="DSL λ"
    )
    parser.add_argument("--qb-beta", type=float, default=QBNormSettings.beta, help="QB-Norm β")
    parser.add_argument("--qb-k", type=int, default=QBNormSettings.k, help="QB-Norm top-k")
    parser.add_argument("--qb-theta", type=int, default=QBNormSettings.theta, help="QB-Norm θ")
    return parser


def _load_array(path: Path, what: str) -> np.ndarray:
    """Read a .npy / .pt (and for maps .txt / .csv) file into a NumPy array."""
    if not path.exists():
        raise MetricsInputError(path, f"{what} file not found")
    if not path.is_file():
        raise MetricsInputError(path, f"{what} path is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.asarray(np.load(path, allow_pickle=False))
        if suffix == ".pt":
            obj = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise MetricsInputError(
                    path, f"expected a tensor in the .pt file, found {type(obj).__name__}"
                )
            if obj.dtype == torch.bfloat16:
                obj = obj.float()
            return obj.numpy()
        if suffix in {".txt", ".csv"} and what == "MAP":
            return _parse_integer_text(path)
    except MetricsInputError:
        raise
    except Exception as exc:  # numpy/torch raise many types for corrupt files
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise MetricsInputError(path, f"cannot read {what} file ({detail})") from exc
    allowed = ".npy, .pt, .txt or .csv" if what == "MAP" else ".npy or .pt"
    raise MetricsInputError(path, f"unsupported {what} file type {suffix!r} (expected {allowed})")


def _parse_integer_text(path: Path) -> np.ndarray:
    tokens = [t for t in re.split(r"[\s,]+", path.read_text()) if t]
    values = []
    for i, token in enumerate(tokens):
        try:
            values.append(int(token))
        except ValueError:
            raise MetricsInputError(
                path, f"MAP entry {i} is {token!r}, not an integer video column"
            ) from None
    return np.asarray(values, dtype=np.int64)


def load_similarity(path: Path) -> torch.Tensor:
    """``[n_text, n_video]`` float64 tensor from SIM, validated (2-D, real, finite, non-empty)."""
    array = _load_array(path, "SIM")
    if array.ndim != 2:
        raise MetricsInputError(path, f"expected a 2-D [n_text, n_video] array, got {array.shape}")
    if array.dtype.kind not in "iuf":
        raise MetricsInputError(path, f"expected real numbers, got dtype {array.dtype}")
    if 0 in array.shape:
        raise MetricsInputError(path, f"similarity matrix is empty {array.shape}")
    sim = torch.from_numpy(array.astype(np.float64))
    finite = torch.isfinite(sim)
    if not bool(finite.all()):
        bad = (~finite).nonzero()
        row, col = (int(v) for v in bad[0])
        raise MetricsInputError(
            path,
            f"{bad.shape[0]} non-finite entries (NaN or inf); first at [{row}, {col}] = "
            f"{float(sim[row, col])}",
        )
    return sim


def load_text_to_video(path: Path, n_text: int, n_video: int) -> torch.Tensor:
    """``[n_text]`` long tensor from MAP, validated (1-D integers in ``[0, n_video)``)."""
    array = _load_array(path, "MAP")
    if array.dtype.kind not in "iu":
        raise MetricsInputError(path, f"MAP must hold integers, got dtype {array.dtype}")
    if array.ndim != 1 or array.shape[0] != n_text:
        raise MetricsInputError(
            path, f"MAP has shape {array.shape}, expected ({n_text},): one video column per text"
        )
    outside = (array < 0) | (array >= n_video)
    if outside.any():
        first = int(np.flatnonzero(outside)[0])
        raise MetricsInputError(
            path,
            f"{int(outside.sum())} MAP entries outside [0, {n_video}); first: entry {first} "
            f"= {int(array[first])}",
        )
    return torch.from_numpy(array.astype(np.int64))


def load_bank(path: Path, axis: int, size: int, what: str) -> torch.Tensor:
    """A QB-Norm bank similarity whose dimension ``axis`` must be ``size`` (one-line errors)."""
    bank = load_similarity(path)
    if bank.shape[axis] != size:
        expected = "[n_bank, n_video]" if axis == 1 else "[n_text, n_bank_videos]"
        raise MetricsInputError(
            path, f"{what} has shape {tuple(bank.shape)}, expected {expected} with {size} there"
        )
    return bank


def compute(
    sim: torch.Tensor,
    text_to_video: torch.Tensor | None,
    n_boot: int = 0,
    seed: int = 0,
    v2t: str = "best-caption",
    postproc: str = "none",
    bank_t2v: torch.Tensor | None = None,
    bank_v2t: torch.Tensor | None = None,
    dsl: DSLSettings | None = None,
    qb: QBNormSettings | None = None,
) -> tuple[dict[str, dict[str, float | int]], dict[str, dict[str, tuple[float, float]]]]:
    """Metrics per direction and (when ``n_boot > 0``) their bootstrap intervals.

    ``v2t`` is the video→text convention, a key of :data:`tvrbench.metrics.V2T_CONVENTIONS`.
    ``postproc`` (``none``, ``dsl``, ``qbnorm``) re-scores ``sim`` first
    (:func:`tvrbench.postproc.postprocessed_ranks`); a direction it cannot compute (QB-Norm v2t
    without ``bank_v2t``) is left out.
    """
    ranks_t2v, ranks_v2t = postprocessed_ranks(
        sim,
        postproc,
        bank_t2v=bank_t2v,
        bank_v2t=bank_v2t,
        text_to_video=text_to_video,
        v2t=v2t,
        dsl=dsl or DSLSettings(),
        qb=qb or QBNormSettings(),
    )
    ranks = {"t2v": ranks_t2v, **({"v2t": ranks_v2t} if ranks_v2t is not None else {})}
    metrics = {name: summarize_ranks(r) for name, r in ranks.items()}
    intervals = {}
    if n_boot > 0:
        intervals = {name: bootstrap_ci(r, n_boot=n_boot, seed=seed) for name, r in ranks.items()}
    return metrics, intervals


def _format_table(
    metrics: dict[str, dict[str, float | int]],
    intervals: dict[str, dict[str, tuple[float, float]]],
) -> str:
    width = 14 if intervals else 9  # "[100.0, 100.0]" / "n_queries"
    lines = [f"{'':<9}" + "".join(f" {c:>{width}}" for c in COLUMNS)]
    for name, row in metrics.items():
        cells = [f" {row[c]:>{width}.2f}" for c in COLUMNS[:-1]]
        lines.append(f"{name:<9}" + "".join(cells) + f" {row['n_queries']:>{width}d}")
        if intervals:
            ci = intervals[name]
            cells = [f" {f'[{ci[c][0]:.1f}, {ci[c][1]:.1f}]':>{width}}" for c in COLUMNS[:-1]]
            lines.append(f"{'  95% CI':<9}" + "".join(cells))
    return "\n".join(lines)


def conventions(v2t: str) -> dict[str, str]:
    """The metric conventions named in every output (JSON keys and table footer)."""
    return {
        "mdr_convention": MDR_CONVENTION,
        "v2t_convention": v2t,
        "v2t_convention_description": V2T_CONVENTIONS[v2t],
        "tie_convention": TIE_CONVENTION,
    }


def _format_conventions(v2t: str) -> str:
    return "\n".join(
        [
            f"MdR: {MDR_CONVENTION}",
            f"v2t: {v2t} ({V2T_CONVENTIONS[v2t]})",
            f"ties: {TIE_CONVENTION}",
        ]
    )


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.bootstrap < 0:
        print(f"{PROG}: --bootstrap must be >= 0, got {args.bootstrap}", file=sys.stderr)
        return 2
    sim_path = Path(args.sim)
    try:
        sim = load_similarity(sim_path)
        text_to_video = None
        if args.text_to_video is not None:
            text_to_video = load_text_to_video(Path(args.text_to_video), *sim.shape)
        elif sim.shape[0] != sim.shape[1]:
            raise MetricsInputError(
                sim_path,
                f"similarity matrix is {sim.shape[0]}x{sim.shape[1]} (not square); "
                "give --text-to-video MAP",
            )
        dsl = DSLSettings(args.dsl_lambda)
        qb = QBNormSettings(args.qb_beta, args.qb_k, args.qb_theta)
        bank_t2v = bank_v2t = None
        if args.postproc == "qbnorm":
            if args.bank is None:
                raise MetricsInputError(sim_path, "--postproc qbnorm needs --bank BANK")
            bank_t2v = load_bank(Path(args.bank), 1, sim.shape[1], "BANK")
            if args.bank_v2t is not None:
                bank_v2t = load_bank(Path(args.bank_v2t), 0, sim.shape[0], "BANK_V")
        elif args.bank is not None or args.bank_v2t is not None:
            raise MetricsInputError(args.bank or args.bank_v2t, "a bank needs --postproc qbnorm")
        try:
            metrics, intervals = compute(
                sim,
                text_to_video,
                args.bootstrap,
                args.seed,
                v2t=args.v2t,
                postproc=args.postproc,
                bank_t2v=bank_t2v,
                bank_v2t=bank_v2t,
                dsl=dsl,
                qb=qb,
            )
        except PostprocError as exc:  # bad λ/β/k/θ
            raise MetricsInputError(sim_path, str(exc)) from exc
        except NonFiniteScoresError as exc:  # already caught by load_similarity; kept as a guard
            raise MetricsInputError(sim_path, str(exc)) from exc
        except ValueError as exc:  # e.g. a video without any text (v2t)
            raise MetricsInputError(args.text_to_video or sim_path, str(exc)) from exc
    except MetricsInputError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2

    postproc = {"method": args.postproc}
    if args.postproc != "none":
        postproc = (dsl if args.postproc == "dsl" else qb).record()
    if args.postproc == "qbnorm":
        postproc.update(bank=args.bank, bank_v2t=args.bank_v2t)
    if args.json:
        payload: dict[str, object] = {
            "t2v": metrics["t2v"],
            "v2t": metrics.get("v2t"),
            **conventions(args.v2t),
            **({"postproc": postproc} if args.postproc != "none" else {}),
        }
        if intervals:
            payload["ci"] = {
                "level": 0.95,
                "n_boot": args.bootstrap,
                "seed": args.seed,
                **{name: {k: list(v) for k, v in ci.items()} for name, ci in intervals.items()},
            }
        print(json.dumps(payload))
    else:
        print(_format_table(metrics, intervals))
        print(_format_conventions(args.v2t))
        if args.postproc != "none":
            params = ", ".join(f"{k} {v}" for k, v in postproc.items() if k != "method")
            print(f"post-processing: {args.postproc} ({params})")
        if "v2t" not in metrics:
            print("v2t: not computed (QB-Norm v2t needs --bank-v2t)")
    return 0
