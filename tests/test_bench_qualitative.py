"""The qualitative retrieval sheet: top-5 lists, seeded sample, layout, page and image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tvrbench.bench.qualitative import (
    SHEET_PAGE,
    SHEET_PNG,
    qualitative_record,
    sample_queries,
    sheet_layout,
    thumbnail_strip,
    top_k_columns,
    write_qualitative,
)
from tvrbench.bench.record import MethodRecord


def numpy_ranks(sim: np.ndarray) -> np.ndarray:
    """1 + number of other videos scored >= the correct one (the diagonal)."""
    correct = np.diag(sim)[:, None]
    return (sim >= correct).sum(axis=1)


def test_top_k_matches_an_independent_argsort_without_ties():
    rng = np.random.default_rng(3)
    sim = rng.normal(size=(7, 12)).astype(np.float32)
    correct = rng.integers(0, 12, size=7)
    expected = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top_k_columns(sim, correct, 5), expected)
    assert top_k_columns(sim[:, :3], correct % 3, 5).shape == (7, 3)  # gallery under k


def test_top_k_breaks_ties_against_the_query_by_hand():
    sim = np.array(
        [
            [0.9, 0.9, 0.1, 0.9],  # correct 0 ties with 1 and 3: after both
            [0.5, 0.5, 0.5, 0.5],  # correct 1, all tied: 0, 2, 3, then 1
            [0.2, 0.7, 0.3, 0.1],  # no ties
        ]
    )
    got = top_k_columns(sim, np.array([0, 1, 2]), 3)
    np.testing.assert_array_equal(got, [[1, 3, 0], [0, 2, 3], [1, 2, 0]])


def _eval(sim: np.ndarray, buckets: list[int], index: list[int]) -> dict:
    """A ``last_eval`` of a hand-made test: row/column i = dataset index ``index[i]``."""
    return {
        "index": torch.tensor(index),
        "bucket": torch.tensor(buckets),
        "bucket_names": ["short", "long"],
        "ranks_t2v": torch.from_numpy(numpy_ranks(sim)),
        "similarity": torch.from_numpy(sim.astype(np.float32)),
    }


def test_sample_is_seeded_and_draws_from_every_bucket():
    index = list(range(10, 30))
    bucket = ["short"] * 3 + ["long"] * 16 + ["mid"]
    a = sample_queries(index, bucket, ["short", "mid", "long"], 2, seed=5)
    assert a == sample_queries(index, bucket, ["short", "mid", "long"], 2, seed=5)
    assert [bucket[index.index(i)] for i in a] == ["short", "short", "mid", "long", "long"]
    assert len(set(a)) == 5
    others = {tuple(sample_queries(index, bucket, ["long"], 2, seed=s)) for s in range(6)}
    assert len(others) > 1  # the seed matters


def test_record_top_lists_are_dataset_indices_of_an_argsort():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(12, 12))
    index = [100 + 3 * i for i in range(12)]  # dataset indices, not rows
    ev = _eval(sim, [0] * 6 + [1] * 6, index)
    entry = qualitative_record(ev, seed=1, per_bucket=2)
    assert entry["postproc"] == "none" and len(entry["queries"]) == 4
    assert [q["bucket"] for q in entry["queries"]] == ["short", "short", "long", "long"]
    ranks = numpy_ranks(sim)
    for q in entry["queries"]:
        row = index.index(q["index"])
        expected = [index[c] for c in np.argsort(-sim[row])[:5]]
        assert q["top"] == expected
        assert q["rank"] == ranks[row]


def _records(sim: np.ndarray) -> list[MethodRecord]:
    ev = _eval(sim, [0] * 5 + [1] * 5, list(range(10)))
    entry = qualitative_record(ev, seed=0, per_bucket=2)
    shuffled = sim[:, ::-1].copy()  # another method: another order, other ranks
    ev_b = _eval(shuffled, [0] * 5 + [1] * 5, list(range(10)))
    return [
        MethodRecord("a", 0, qualitative=entry),
        MethodRecord("a", 1, qualitative={"queries": []}),  # not the first seed
        MethodRecord("b", 0, qualitative=qualitative_record(ev_b, seed=0)),
        MethodRecord.from_json({"method": "old", "seed": 0}),  # written before the sheet
        MethodRecord("gone", 0, skipped="cannot run"),
    ]


def test_layout_outlines_the_correct_video_exactly_where_rank_at_most_5():
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(10, 10))
    sim[np.arange(10), np.arange(10)] += np.linspace(-3, 3, 10)  # ranks from 1 to 10
    sheet = sheet_layout(
        _records(sim), ["a", "b", "old", "gone"], [0, 1], lambda i: (f"v{i}.mp4", f"text {i}")
    )
    assert sheet is not None and sheet.seeds == {"a": 0, "b": 0, "old": 0, "gone": 0}
    assert len(sheet.panels) == 4
    seen_ranks = set()
    for panel in sheet.panels:
        assert panel.video == f"v{panel.index}.mp4" and panel.paragraph == f"text {panel.index}"
        rows = {r.method: r for r in panel.rows}
        assert rows["old"].note == "not recorded" and not rows["old"].thumbs
        assert rows["gone"].note == "skipped" and rows["old"].rank is None
        for m in ("a", "b"):
            row = rows[m]
            outlined = [j for j, t in enumerate(row.thumbs) if t.correct]
            assert outlined == ([row.rank - 1] if row.rank <= 5 else [])
            assert all(t.correct == (t.video_index == panel.index) for t in row.thumbs)
            seen_ranks.add(row.rank <= 5)
    assert seen_ranks == {True, False}  # both cases exercised
    drawn = {p.index for p in sheet.panels} | {
        t.video_index for p in sheet.panels for r in p.rows for t in r.thumbs
    }
    assert set(sheet.videos) == drawn


def test_layout_of_records_without_samples_is_none():
    assert sheet_layout([MethodRecord("old", 0)], ["old"], [0], lambda i: ("", "")) is None


def test_thumbnail_strip_takes_evenly_spaced_frames():
    frames = np.random.default_rng(0).integers(0, 255, size=(7, 160, 160, 3), dtype=np.uint8)
    strip = thumbnail_strip(frames, count=3, max_px=80)
    expected = np.concatenate([frames[0, ::2, ::2], frames[3, ::2, ::2], frames[6, ::2, ::2]], 1)
    np.testing.assert_array_equal(strip, expected)
    assert thumbnail_strip(frames[:0], 3, 80).shape == (80, 240, 3)


class FakeTest:
    """The test dataset's surface the sheet reads; video 3 cannot be read."""

    def __init__(self, n: int) -> None:
        self.videos = [
            SimpleNamespace(video=f"v{i}.mp4", paragraph=f"paragraph {i}") for i in range(n)
        ]

    def load_frames(self, i: int) -> np.ndarray:
        if i == 3:
            raise OSError("gone")
        return np.full((4, 16, 16, 3), 20 * i, dtype=np.uint8)


def test_write_qualitative_page_and_image(tmp_path):
    rng = np.random.default_rng(2)
    sim = rng.normal(size=(10, 10))
    records = _records(sim)
    methods = ["a", "b", "old", "gone"]
    assert write_qualitative(tmp_path, records, methods, [0], FakeTest(10), True) == SHEET_PAGE
    assert (tmp_path / SHEET_PNG).stat().st_size > 0
    page = (tmp_path / SHEET_PAGE).read_text()
    assert page.startswith("> **SYNTHETIC DATA") and f"![{SHEET_PNG}]({SHEET_PNG})" in page
    assert "first seed" in page and "not recorded" in page and "| skipped |" in page
    q = records[0].qualitative["queries"][0]
    assert f"`v{q['index']}.mp4`" in page and f"paragraph {q['index']}" in page
    if q["rank"] <= 5:
        assert f"**`v{q['index']}.mp4`**" in page
    # Without the test split: the existing page stays; with none, a page without the image.
    before = (tmp_path / SHEET_PAGE).read_text()
    assert write_qualitative(tmp_path, records, methods, [0], None, True) == SHEET_PAGE
    assert (tmp_path / SHEET_PAGE).read_text() == before
    other = tmp_path / "other"
    other.mkdir()
    assert write_qualitative(other, records, methods, [0], None, False) == SHEET_PAGE
    assert "(no image: the test split was not loaded)" in (other / SHEET_PAGE).read_text()
    assert not (other / SHEET_PNG).exists()
    assert write_qualitative(other, records[3:], methods, [0], None, False) is None


@pytest.mark.parametrize("bad", [{"queries": [{"index": 1}]}, {"queries": "x"}, None])
def test_malformed_entries_read_as_not_recorded(bad):
    sim = np.eye(10)
    records = _records(sim)
    records[2].qualitative = bad
    sheet = sheet_layout(records, ["a", "b"], [0], lambda i: ("", ""))
    assert sheet is not None
    assert all(p.rows[1].note == "not recorded" for p in sheet.panels)
