"""Annotation parsing, name matching and the real DiDeMo val file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tvrbench.data.annotations import (
    AnnotationError,
    has_video_extension,
    load_annotation_file,
    load_split,
    match_video_files,
    video_stem,
)

SHARED = Path(__file__).resolve().parents[2] / "shared"
DIDEMO = SHARED / "didemo"
CLIP_TOKENIZER = SHARED / "clip-tokenizer"


def _entry(video: str, description: str, **over) -> dict:
    e = {
        "annotation_id": 1,
        "description": description,
        "video": video,
        "times": [[0, 1], [2, 2]],
        "dl_link": "x",
        "num_segments": 6,
    }
    e.update(over)
    return e


def _write(root: Path, split: str, entries: object, names: list[str] | None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{split}_data.json").write_text(json.dumps(entries))
    if names is not None:
        (root / f"{split}_list.txt").write_text("\n".join(names) + "\n")


def test_stems_never_split_naively():
    assert video_stem("a@N00_1_ff.mov") == "a@N00_1_ff"
    assert video_stem("12345@N00_123.") == "12345@N00_123"
    assert video_stem("my.video.v2") == "my.video.v2"  # not a video extension
    assert video_stem("my.video.MP4") == "my.video"
    assert video_stem(".mp4") == ".mp4"
    assert has_video_extension("x.3g2") and not has_video_extension("x.")
    assert not has_video_extension("x")


def test_paragraph_protocol_and_moments(tmp_path):
    entries = [
        _entry("v1.mov", "first one."),
        _entry("v2.avi", "other video"),
        _entry("v1.mov", "second one", times=[[3, 4]]),
    ]
    _write(tmp_path, "val", entries, ["v1.mov", "v2.avi"])
    ann = load_split(tmp_path, "val", annotations_only=True)
    by_name = {v.video: v for v in ann.videos}
    assert by_name["v1.mov"].paragraph == "first one. second one"
    assert by_name["v1.mov"].moments == [
        ("first one.", ((0, 1), (2, 2))),
        ("second one", ((3, 4),)),
    ]
    assert ann.num_sentences == 3


def test_split_list_intersection_and_missing_files(tmp_path):
    names = ["a.mov", "b.", "c.avi", "d.mp4", "not_annotated.mp4"]
    _write(tmp_path, "test", [_entry(n, f"text {n}") for n in names[:4]], names)
    vids = tmp_path / "videos"
    vids.mkdir()
    (vids / "a.mov").write_bytes(b"x")  # exact name
    (vids / "b.mp4").write_bytes(b"x")  # bare-dot name -> stem
    (vids / "c.mp4").write_bytes(b"x")  # re-encoded under another extension -> stem
    ann = load_split(tmp_path, "test")
    assert [v.video for v in ann.videos] == ["a.mov", "b.", "c.avi"]
    assert [v.path.name for v in ann.videos] == ["a.mov", "b.mp4", "c.mp4"]
    assert ann.missing == ["d.mp4"]
    assert ann.unannotated == ["not_annotated.mp4"]
    assert ann.names_without_extension == ["b."]


def test_exact_name_beats_stem(tmp_path):
    for name in ("x.avi", "x.mp4"):
        (tmp_path / name).write_bytes(b"x")
    found = match_video_files(["x.avi", "x.mov", "x."], tmp_path)
    assert found["x.avi"].name == "x.avi"
    assert found["x.mov"].name == "x.mp4" and found["x."].name == "x.mp4"


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"a": 1}), "expected a JSON list"),
        (json.dumps([_entry("v.mp4", "ok"), {"description": "x", "video": "v"}]), "entry 1"),
        (json.dumps([_entry("v.mp4", 3)]), "'description' must be a string"),
        (json.dumps([_entry("v.mp4", "ok", times=[[1, 2, 3]])]), "'times'"),
        (json.dumps([_entry("v.mp4", "ok", times="0-1")]), "'times'"),
        (json.dumps([_entry("v.mp4", "ok", times=[["a", "b"]])]), "'times'"),
    ],
)
def test_malformed_files_raise_one_line_error(tmp_path, content, problem):
    path = tmp_path / "val_data.json"
    path.write_text(content)
    with pytest.raises(AnnotationError) as info:
        load_annotation_file(path)
    msg = str(info.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


def test_missing_key_names_the_key_and_entry(tmp_path):
    e = _entry("v.mp4", "ok")
    del e["times"]
    path = tmp_path / "val_data.json"
    path.write_text(json.dumps([_entry("v.mp4", "ok"), _entry("w.mp4", "ok"), e]))
    with pytest.raises(AnnotationError, match=r"entry 2: missing key\(s\) times"):
        load_annotation_file(path)


@pytest.mark.skipif(not (DIDEMO / "val_data.json").exists(), reason="shared DiDeMo files absent")
def test_real_val_split_counts():
    # Independent count straight from the JSON and the list.
    entries = json.loads((DIDEMO / "val_data.json").read_text())
    listed = {line.strip() for line in (DIDEMO / "val_list.txt").read_text().splitlines()}
    expected_sentences = sum(e["video"] in listed for e in entries)
    ann = load_split(DIDEMO, "val", annotations_only=True)
    assert len(ann.videos) == 1065 == len({e["video"] for e in entries} & listed)
    assert ann.num_sentences == 4109 == expected_sentences
    assert len(ann.names_without_extension) == 12
    assert all(n.endswith(".") for n in ann.names_without_extension)
    # First video's paragraph: its descriptions in file order, joined by one space.
    first = ann.videos[0]
    texts = [e["description"] for e in entries if e["video"] == first.video]
    assert first.paragraph == " ".join(texts)
    # Without video files every listed video is reported missing, none silently dropped.
    with_files = load_split(DIDEMO, "val", video_dir=DIDEMO / "no-such-dir")
    assert len(with_files.missing) == 1065 and with_files.videos == []


@pytest.mark.skipif(
    not (DIDEMO / "val_data.json").exists() or not CLIP_TOKENIZER.exists(),
    reason="shared DiDeMo files or CLIP tokenizer absent",
)
def test_inspect_data_acceptance(capsys):
    from tvrbench.data.inspect_data import main

    for max_words, truncated in ((64, 10), (32, 538)):
        argv = ["--root", str(DIDEMO), "--split", "val", "--annotations-only", "--json"]
        argv += ["--tokenizer", str(CLIP_TOKENIZER), "--max-words", str(max_words)]
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["videos"] == 1065 and out["sentences"] == 4109
        assert out["names_without_extension"] == 12
        assert out["truncated_paragraphs"] == truncated
        assert out["buckets"] == []


def test_inspect_data_error_exit_code(tmp_path, capsys):
    from tvrbench.data.inspect_data import main

    (tmp_path / "val_data.json").write_text("[1, 2]")
    assert main(["--root", str(tmp_path), "--split", "val", "--annotations-only"]) == 2
    err = capsys.readouterr().err.strip()
    assert "val_data.json" in err and "entry 0" in err and "\n" not in err
