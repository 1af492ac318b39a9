"""The qualitative retrieval sheet of a run: for a fixed, seeded sample of test queries from every
length bucket, each method's top-5 videos as thumbnail strips, the correct video outlined and its
rank written under each method.

Recorded at test time (:func:`qualitative_record`, a record's ``qualitative``): the sampled
queries' dataset indices, buckets, text→video ranks and top-5 video indices, from the plain
similarity the ranks came from (post-processing ``none``). Rendered when the outputs are written
(:func:`write_qualitative`): ``qualitative.png`` (:func:`tvrbench.bench.plots.plot_qualitative`)
and ``qualitative.md``, from the first seed of each method. Records written before the sheet
existed have no ``qualitative``: their rows say "not recorded".
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tvrbench.bench.record import MethodRecord

QUERIES_PER_BUCKET = 2
TOP_K = 5
FRAMES_PER_VIDEO = 3
THUMB_MAX_PX = 80
SHEET_PNG = "qualitative.png"
SHEET_PAGE = "qualitative.md"
PAGE_PARAGRAPH_CHARS = 400


class TestVideos(Protocol):
    """What the sheet reads from the test split's dataset
    (:class:`~tvrbench.data.datamodule.VideoTextDataset`): ``videos[i].video`` (name),
    ``videos[i].paragraph`` and ``load_frames(i)`` (uint8 ``[n, S, S, 3]``)."""

    videos: Sequence[Any]

    def load_frames(self, i: int) -> np.ndarray: ...


# ------------------------------------------------------------------------------ recording


@dataclass(frozen=True)
class SampledQuery:
    """One sampled test query of a (method, seed): its dataset index (its correct video has the
    same index), length bucket, text→video rank and the dataset indices of its top videos."""

    index: int
    bucket: str
    rank: int
    top: list[int]


def sample_queries(
    index: Sequence[int],
    bucket: Sequence[str],
    bucket_names: Sequence[str],
    per_bucket: int,
    seed: int,
) -> list[int]:
    """Dataset indices of ``per_bucket`` queries drawn from every bucket (fewer where a bucket
    holds fewer), buckets in ``bucket_names`` order, indices ascending inside one. Depends only
    on the test split and ``seed``: every method of a run gets the same queries."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    for name in bucket_names:
        pool = sorted(int(i) for i, b in zip(index, bucket) if b == name)
        k = min(per_bucket, len(pool))
        if k:
            out += sorted(pool[j] for j in rng.choice(len(pool), size=k, replace=False))
    return out


def top_k_columns(similarity: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` best-scored videos of every row, best first.

    Ties are broken against the query, as the ranks count them (the correct video after every
    wrong one scored the same), then by column: the correct column sits at position
    ``rank - 1`` whenever ``rank <= k``.

    Args:
        similarity: ``[q, Nv]`` scores of the queries against the gallery.
        correct: ``[q]`` the correct column of each row.

    Returns:
        ``[q, min(k, Nv)]`` int64 columns.
    """
    n_rows, n_cols = similarity.shape
    cols = np.arange(n_cols)
    out = np.empty((n_rows, min(k, n_cols)), dtype=np.int64)
    for r in range(n_rows):
        # np.lexsort: the last key is the primary one.
        order = np.lexsort((cols, cols == correct[r], -similarity[r]))  # (Nv,)
        out[r] = order[: out.shape[1]]
    return out


def qualitative_record(
    ev: Mapping[str, Any], seed: int, per_bucket: int = QUERIES_PER_BUCKET
) -> dict[str, Any]:
    """A test's ``qualitative`` record entry (JSON): the seeded sample of queries with their
    ranks and top-``TOP_K`` videos. ``ev``: the module's ``last_eval`` after ``trainer.test``
    (``similarity`` ``[n, n]`` texts × videos, row/column i = dataset index ``index[i]``)."""
    index = [int(i) for i in ev["index"].tolist()]
    names = [str(b) for b in ev["bucket_names"]]
    bucket = [names[b] for b in ev["bucket"].tolist()]
    ranks = ev["ranks_t2v"].tolist()
    queries = sample_queries(index, bucket, names, per_bucket, seed)
    row_of = {d: r for r, d in enumerate(index)}
    rows = np.array([row_of[q] for q in queries], dtype=np.int64)
    sim = ev["similarity"].float().cpu().numpy()[rows]  # (q, n)
    top = top_k_columns(sim, rows, TOP_K)  # (q, k) columns
    sampled = [
        SampledQuery(
            index=index[r], bucket=bucket[r], rank=int(ranks[r]), top=[index[c] for c in t]
        )
        for r, t in zip(rows.tolist(), top.tolist())
    ]
    return {
        "postproc": "none",
        "sample_seed": seed,
        "per_bucket": per_bucket,
        "queries": [asdict(q) for q in sampled],
    }


def _queries_of(record: MethodRecord) -> list[SampledQuery] | None:
    """A record's sampled queries; None when it has none (older records, skipped methods)."""
    entry = record.qualitative
    if not isinstance(entry, Mapping) or not entry.get("queries"):
        return None
    try:
        return [
            SampledQuery(
                int(q["index"]), str(q["bucket"]), int(q["rank"]), list(map(int, q["top"]))
            )
            for q in entry["queries"]
        ]
    except (KeyError, TypeError, ValueError):
        return None


# --------------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Thumb:
    """One retrieved video: its dataset index, name and whether it is the query's own."""

    video_index: int
    video: str
    correct: bool


@dataclass(frozen=True)
class MethodRow:
    """One method under one query: the rank of the correct video and its top videos; ``note``
    says why they are absent ("not recorded", "skipped")."""

    method: str
    rank: int | None
    thumbs: list[Thumb]
    note: str = ""


@dataclass(frozen=True)
class QueryPanel:
    """One sampled query: its paragraph, bucket, correct video and one row per method."""

    index: int
    bucket: str
    paragraph: str
    video: str
    rows: list[MethodRow]


@dataclass(frozen=True)
class Sheet:
    """The whole sheet: panels in bucket order; ``seeds`` the seed shown per method."""

    panels: list[QueryPanel]
    seeds: dict[str, int]
    sample_seed: int | None
    per_bucket: int | None
    videos: list[int] = field(default_factory=list)  # every dataset index drawn (to load)


def sheet_layout(
    records: Sequence[MethodRecord],
    methods: Sequence[str],
    seeds: Sequence[int],
    describe: Callable[[int], tuple[str, str]],
) -> Sheet | None:
    """The sheet of the first seed of each method (``seeds`` order) that has a record.

    The queries are those of the first such record holding a sample (every record of a run has
    the same); a method whose record lacks it (written before the sheet existed, or skipped)
    gets a row with a note. ``describe(i)`` gives ``(video name, paragraph)`` of test index
    ``i``. None when no record holds a sample.
    """
    by_key = {(r.method, r.seed): r for r in records}
    chosen: dict[str, MethodRecord] = {}
    for m in methods:
        for s in seeds:
            if (m, int(s)) in by_key:
                chosen[m] = by_key[(m, int(s))]
                break
    source = next((r for r in chosen.values() if _queries_of(r) is not None), None)
    if source is None:
        return None
    queries = _queries_of(source) or []
    per_method = {m: {q.index: q for q in _queries_of(r) or []} for m, r in chosen.items()}
    panels: list[QueryPanel] = []
    drawn: dict[int, None] = {}
    for q in queries:
        rows: list[MethodRow] = []
        drawn[q.index] = None
        for m, r in chosen.items():
            got = per_method[m].get(q.index)
            if got is None:
                note = "skipped" if r.skipped else "not recorded"
                rows.append(MethodRow(m, None, [], note))
                continue
            thumbs = [Thumb(v, describe(v)[0], v == q.index) for v in got.top]
            drawn.update(dict.fromkeys(got.top))
            rows.append(MethodRow(m, got.rank, thumbs))
        name, paragraph = describe(q.index)
        panels.append(QueryPanel(q.index, q.bucket, paragraph, name, rows))
    entry = source.qualitative or {}
    return Sheet(
        panels,
        {m: r.seed for m, r in chosen.items()},
        entry.get("sample_seed"),
        entry.get("per_bucket"),
        list(drawn),
    )


# ------------------------------------------------------------------------------- frames


def thumbnail_strip(
    frames: np.ndarray, count: int = FRAMES_PER_VIDEO, max_px: int = THUMB_MAX_PX
) -> np.ndarray:
    """``count`` evenly spaced frames of uint8 ``[n, S, S, 3]`` side by side, subsampled to at
    most ``max_px`` pixels high: uint8 ``[h, count * w, 3]`` (a grey tile when ``n = 0``)."""
    if len(frames) == 0:
        return np.full((max_px, count * max_px, 3), 128, dtype=np.uint8)
    picks = np.linspace(0, len(frames) - 1, count).round().astype(int)  # (count,)
    step = max(1, math.ceil(frames.shape[1] / max_px))
    small = frames[picks][:, ::step, ::step]  # (count, h, w, 3)
    return np.concatenate(list(small), axis=1)


def _strips(test_data: TestVideos, indices: Sequence[int]) -> dict[int, np.ndarray | None]:
    """Thumbnail strip per dataset index (None: the video could not be read now)."""
    out: dict[int, np.ndarray | None] = {}
    for i in indices:
        try:
            out[i] = thumbnail_strip(np.asarray(test_data.load_frames(i)))
        except Exception:  # a frame-cache entry gone since the test: a blank tile, not a crash
            out[i] = None
    return out


# ----------------------------------------------------------------------------------- page


def _short(text: str, chars: int) -> str:
    return textwrap.shorten(" ".join(text.split()), chars, placeholder=" …") if text else ""


def render_page(sheet: Sheet, synthetic: bool, image: str | None, why_no_image: str = "") -> str:
    """``qualitative.md``: what was sampled and how, the image, and per query a table of each
    method's rank and top videos (the correct one in bold)."""
    from tvrbench.bench.report import SYNTHETIC_BANNER, markdown_table

    lines: list[str] = [f"> **{SYNTHETIC_BANNER}**", ""] if synthetic else []
    seeds = ", ".join(f"{m}: seed {s}" for m, s in sheet.seeds.items())
    lines += [
        "# Qualitative retrieval sheet",
        "",
        f"Text→video top-{TOP_K} of every method for {len(sheet.panels)} test queries "
        f"({sheet.per_bucket} per length bucket, drawn with seed {sheet.sample_seed}; the same "
        "queries for every method). Plain similarity (post-processing none). **Only the first "
        f"seed of each method** ({seeds}). Each video: {FRAMES_PER_VIDEO} evenly spaced sampled "
        "frames; the correct video is outlined in green; the rank of the correct video "
        "(ties count against the query) is written under each method.",
        "",
    ]
    lines += [f"![{image}]({image})", ""] if image else [f"(no image: {why_no_image})", ""]
    for n, panel in enumerate(sheet.panels, 1):
        lines += [
            f"## Query {n} — bucket `{panel.bucket}` — video `{panel.video}`",
            "",
            f"> {_short(panel.paragraph, PAGE_PARAGRAPH_CHARS) or '(paragraph unavailable)'}",
            "",
        ]
        rows = [
            [
                row.method,
                row.rank if row.rank is not None else row.note,
                ", ".join(f"**`{t.video}`**" if t.correct else f"`{t.video}`" for t in row.thumbs),
            ]
            for row in panel.rows
        ]
        lines += [markdown_table(rows, ["method", "rank", f"top-{TOP_K} (correct in bold)"]), ""]
    if synthetic:
        lines += [f"> **{SYNTHETIC_BANNER}**"]
    return "\n".join(lines) + "\n"


def write_qualitative(
    run_dir: Path,
    records: Sequence[MethodRecord],
    methods: Sequence[str],
    seeds: Sequence[int],
    test_data: TestVideos | None,
    synthetic: bool,
) -> str | None:
    """Write ``qualitative.png`` and ``qualitative.md``; returns the page's name (None: no record
    holds a sample). Without ``test_data`` (the test split not set up in this process) an
    existing page is kept; otherwise the page is written without the image."""
    from tvrbench.atomic import atomic_write_text
    from tvrbench.bench.plots import plot_qualitative

    page = Path(run_dir) / SHEET_PAGE

    def describe(i: int) -> tuple[str, str]:
        if test_data is not None and 0 <= i < len(test_data.videos):
            v = test_data.videos[i]
            return str(v.video), str(v.paragraph)
        return f"test #{i}", ""

    sheet = sheet_layout(records, methods, seeds, describe)
    if sheet is None:
        return None
    if test_data is None:
        if page.is_file():
            return SHEET_PAGE
        text = render_page(sheet, synthetic, None, "the test split was not loaded")
    else:
        plot_qualitative(
            sheet, _strips(test_data, sheet.videos), Path(run_dir) / SHEET_PNG, synthetic, TOP_K
        )
        text = render_page(sheet, synthetic, SHEET_PNG)
    atomic_write_text(page, text)
    return SHEET_PAGE
