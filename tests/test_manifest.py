"""The dataset manifest (``tvrbench inspect-data --manifest``) and its place in a run."""

from __future__ import annotations

import csv
import hashlib
import json
import math

from tests.conftest import make_tiny_didemo
from tvrbench.data.inspect_data import main as inspect_main
from tvrbench.data.manifest import MANIFEST_COLUMNS, manifest_sha256


def _expected_digest(data: bytes, hashed: int) -> str:
    """SHA-256 of the first ``hashed`` bytes followed by the ASCII ``size=<len>``, by hand."""
    return hashlib.sha256(data[:hashed] + f"size={len(data)}".encode()).hexdigest()


def test_inspect_data_manifest_lists_every_video_with_size_digest_duration_and_status(
    tmp_path, capsys
):
    durations = {"train": [2.0, 3.0], "val": [2.5], "test": [1.5, 4.0, 3.0]}
    root = make_tiny_didemo(tmp_path / "didemo", durations)
    videos = root / "videos"
    (videos / "test0@N00_1000.mp4").unlink()  # missing from this copy
    (videos / "test2@N00_1002.mp4").write_bytes(b"not a video" * 50)  # unreadable
    out = tmp_path / "manifest.csv"
    hash_mb = 1000 / 1024**2  # the first 1000 bytes, so the partial hash is exercised
    argv = ["--root", str(root), "--split", "test", "--cache-dir", str(tmp_path / "cache")]
    argv += ["--workers", "1", "--manifest", str(out), "--hash-mb", str(hash_mb), "--json"]
    assert inspect_main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    with out.open() as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == MANIFEST_COLUMNS
        rows = {(r["split"], r["video"]): r for r in reader}
    assert len(rows) == 6  # every video of the three splits
    assert summary["dataset_manifest"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert summary["dataset_manifest"]["videos"] == {"ok": 4, "missing": 1, "unreadable": 1}
    assert manifest_sha256(out) == summary["dataset_manifest"]["sha256"]

    missing = rows[("test", "test0@N00_1000.mp4")]
    assert missing["status"] == "missing" and missing["sha256"] == missing["size_bytes"] == ""
    bad = rows[("test", "test2@N00_1002.mp4")]
    data = (videos / "test2@N00_1002.mp4").read_bytes()
    assert bad["status"] == "unreadable" and bad["reason"] and bad["duration_s"] == ""
    assert bad["sha256"] == _expected_digest(data, 1000) and bad["size_bytes"] == str(len(data))

    for (split, name), seconds in [
        (("train", "train0@N00_1000.mp4"), 2.0),
        (("train", "train1@N00_1001."), 3.0),  # the bare "." name, file train1@N00_1001.mp4
        (("val", "val0@N00_1000.mp4"), 2.5),
        (("test", "test1@N00_1001."), 4.0),
    ]:
        row = rows[(split, name)]
        data = (videos / row["file"]).read_bytes()
        assert row["status"] == "ok" and row["reason"] == ""
        assert int(row["size_bytes"]) == len(data) and int(row["hashed_bytes"]) == 1000
        assert row["sha256"] == _expected_digest(data, 1000)
        assert abs(float(row["duration_s"]) - seconds) <= 0.3  # 4-fps files of known length
        # 1 frame per second of the decoded span (at most 64, first 31 s)
        assert int(row["frames_sampled"]) in {math.floor(seconds), math.ceil(seconds)}


def test_a_different_copy_gives_a_different_manifest_hash(tmp_path, capsys):
    durations = {"train": [2.0], "val": [2.0], "test": [2.0]}
    hashes = []
    for name, change in (("a", False), ("b", True)):
        root = make_tiny_didemo(tmp_path / name, durations)
        if change:  # one re-encoded test video: same name, other bytes
            from tests.conftest import write_video

            write_video(root / "videos" / "test0@N00_1000.mp4", 2.0, fps=5)
        out = tmp_path / f"{name}.csv"
        argv = ["--root", str(root), "--split", "test", "--cache-dir", str(tmp_path / "cache")]
        assert inspect_main([*argv, "--workers", "1", "--manifest", str(out), "--json"]) == 0
        hashes.append(json.loads(capsys.readouterr().out)["dataset_manifest"]["sha256"])
    assert hashes[0] != hashes[1]
