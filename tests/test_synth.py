"""The synthetic DiDeMo-format generator: schema, files, determinism, durations, content."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from tvrbench.data import synth

KEYS = {"annotation_id", "description", "video", "times", "dl_link", "num_segments"}
FPS = 2.0

# Independent reference colours (plain, commonly named RGB values; not the generator's table).
# A described shape must look like its name: nearest to the named reference.
REFERENCE_RGB = {
    "red": (255, 0, 0),
    "green": (0, 160, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "orange": (255, 140, 0),
    "purple": (128, 0, 160),
    "pink": (255, 150, 200),
    "cyan": (0, 220, 220),
}
REFERENCE_BACKGROUND_RGB = {"black": (0, 0, 0), "grey": (128, 128, 128), "white": (255, 255, 255)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """24 videos, 64 px, 2 fps, generated with two worker processes."""
    out = tmp_path_factory.mktemp("synth") / "data"
    synth.generate(out, videos=24, seed=0, fps=FPS, size=64, workers=2, progress=False)
    return out


def load_split(root: Path, split: str) -> list[dict]:
    return json.loads((root / f"{split}_data.json").read_text())


def all_entries(root: Path) -> list[dict]:
    return [e for split in synth.SPLITS for e in load_split(root, split)]


def decode_pyav(path: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """Frames [T, H, W, 3], their times (s), and the container duration (s)."""
    import av

    with av.open(str(path)) as container:
        frames = [(float(f.time), f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]
        duration_s = container.duration / 1e6
    return np.stack([f for _, f in frames]), np.array([t for t, _ in frames]), duration_s


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def majority_pair(times: list[list[int]]) -> tuple[int, int]:
    pairs = [tuple(p) for p in times]
    return Counter(pairs).most_common(1)[0][0]


# ---------------------------------------------------------------------------------- format


def test_schema_of_every_entry(dataset):
    for split in synth.SPLITS:
        entries = load_split(dataset, split)
        assert entries, split
        for entry in entries:
            assert set(entry) == KEYS
            assert type(entry["annotation_id"]) is int
            assert type(entry["num_segments"]) is int and entry["num_segments"] == 6
            for key in ("description", "video", "dl_link"):
                assert isinstance(entry[key], str) and entry[key], key
            times = entry["times"]
            assert isinstance(times, list) and len(times) == 4
            for pair in times:
                assert isinstance(pair, list) and len(pair) == 2
                assert all(type(x) is int for x in pair)
                assert 0 <= pair[0] <= pair[1] <= 5
    ids = [e["annotation_id"] for e in all_entries(dataset)]
    assert len(ids) == len(set(ids))


def test_lists_match_json_and_files(dataset):
    on_disk = {p.name for p in (dataset / "videos").iterdir()}
    listed: list[str] = []
    for split in synth.SPLITS:
        names = (dataset / f"{split}_list.txt").read_text().splitlines()
        assert names and len(names) == len(set(names))
        assert set(names) == {e["video"] for e in load_split(dataset, split)}
        listed += names
    assert len(listed) == len(set(listed)) == 24  # splits are disjoint and cover every video
    assert set(listed) == on_disk
    # Untidy names like the real ones: several extensions and a bare trailing dot.
    suffixes = {name.rsplit(".", 1)[1] for name in listed}
    assert {"mp4", "mov", "avi", "m4v", ""} <= suffixes
    assert any(name.count(".") >= 2 for name in listed)


def test_split_sizes():
    sizes = synth.split_sizes(4500)
    assert sum(sizes.values()) == 4500 and sizes["test"] >= 1000
    assert 0.68 <= sizes["train"] / 4500 <= 0.73 and 0.05 <= sizes["val"] / 4500 <= 0.08
    for n in (3, 5, 12):
        small = synth.split_sizes(n)
        assert sum(small.values()) == n and min(small.values()) >= 1
    with pytest.raises(synth.SynthError, match="at least 3"):
        synth.split_sizes(2)


def test_vocabulary_covers_every_sentence(dataset):
    vocab = synth.vocabulary()
    assert vocab == sorted(set(vocab)) and all(re.fullmatch(r"[a-z]+", w) for w in vocab)
    assert synth.vocabulary() == vocab
    for entry in all_entries(dataset):
        assert re.fullmatch(r"[a-z .]+", entry["description"]), entry["description"]
        assert set(words(entry["description"])) <= set(vocab), entry["description"]
    # A larger sample of plans reaches every template.
    plans, _ = synth.plan_dataset(300, seed=1)
    used = {w for p in plans for s in p.sentences for w in words(s.description)}
    assert used <= set(vocab)
    assert {"background", "left", "crosses", "see", "trail"} <= used


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_output_different_seed_differs(tmp_path):
    kwargs = dict(videos=12, fps=FPS, size=32, progress=False)
    a = tmp_path / "a"
    b = tmp_path / "b"
    c = tmp_path / "c"
    synth.generate(a, seed=3, workers=1, **kwargs)
    synth.generate(b, seed=3, workers=2, **kwargs)  # worker count must not matter
    synth.generate(c, seed=4, workers=1, **kwargs)
    for name in ["synth_meta.json"] + [f"{s}_data.json" for s in synth.SPLITS]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for video in sorted(p.name for p in (a / "videos").iterdir()):
        frames_a, times_a, _ = decode_pyav(a / "videos" / video)
        frames_b, times_b, _ = decode_pyav(b / "videos" / video)
        np.testing.assert_array_equal(frames_a, frames_b, err_msg=video)
        np.testing.assert_array_equal(times_a, times_b, err_msg=video)

    assert (a / "test_data.json").read_bytes() != (c / "test_data.json").read_bytes()
    assert sorted(p.name for p in (a / "videos").iterdir()) != sorted(
        p.name for p in (c / "videos").iterdir()
    )
    # Content differs too, not only names: compare the first frames of video index 0.
    meta_a = json.loads((a / "synth_meta.json").read_text())["videos"]
    meta_c = json.loads((c / "synth_meta.json").read_text())["videos"]
    first_a = next(n for n, v in meta_a.items() if v["index"] == 0)
    first_c = next(n for n, v in meta_c.items() if v["index"] == 0)
    frames_c, _, _ = decode_pyav(c / "videos" / first_c)
    frames_a0, _, _ = decode_pyav(a / "videos" / first_a)
    n = min(len(frames_a0), len(frames_c))
    assert not np.array_equal(frames_a0[:n], frames_c[:n])


# ------------------------------------------------------------------------------- durations


def test_durations_decode_with_pyav_and_decord(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())["videos"]
    decord = pytest.importorskip("decord")
    for name, info in meta.items():
        intended_s = info["duration_s"]
        assert intended_s % 5 == 0 and 5 <= intended_s <= 90
        path = dataset / "videos" / name
        frames, times_s, duration_s = decode_pyav(path)
        assert abs(duration_s - intended_s) <= 0.5, (name, duration_s, intended_s)
        assert abs(times_s[-1] + 1 / FPS - intended_s) <= 0.5, name
        assert len(frames) == round(intended_s * FPS)
        reader = decord.VideoReader(str(path))
        assert len(reader) == len(frames), name
        assert abs(reader.get_frame_timestamp(len(reader) - 1)[1] - intended_s) <= 0.5, name
        # decord and PyAV decode the same pixels (up to colour-conversion rounding).
        middle = len(frames) // 2
        decoded = reader.get_batch([0, middle]).asnumpy().astype(int)
        assert np.abs(decoded - frames[[0, middle]].astype(int)).mean() < 3.0, name


def test_lengths_spread():
    for seed in range(3):
        plans, _ = synth.plan_dataset(40, seed=seed)
        durations_s = [p.duration_s for p in plans]
        assert min(durations_s) <= 15 and max(durations_s) >= 60, (seed, durations_s)
    plans, _ = synth.plan_dataset(1500, seed=0)
    durations_s = np.array([p.duration_s for p in plans])
    assert durations_s.min() == 5 and durations_s.max() == 90
    assert np.mean(durations_s <= 15) >= 0.08 and np.mean(durations_s >= 60) >= 0.2
    # Four equal-count length buckets (quantile edges) all fill: no quantile collapses.
    edges = np.quantile(durations_s, [0.25, 0.5, 0.75])
    assert len(set(edges.tolist())) == 3


# ---------------------------------------------------------------------------------- content


def _classify(pixels: np.ndarray, references: dict[str, tuple[int, int, int]]) -> np.ndarray:
    """Name index of the nearest reference colour for each pixel ``[M, 3]``."""
    refs = np.array(list(references.values()), dtype=float)  # (R, 3)
    dist = np.linalg.norm(pixels[:, None, :].astype(float) - refs[None], axis=-1)  # (M, R)
    return dist.argmin(axis=1)


def test_described_colour_visible_at_moment_middle(dataset):
    """At the middle of every described moment, the colour the sentence names is the dominant
    shape colour of the decoded frame, over a good part of a small shape's area (4:2:0 chroma
    in the .avi files blends edge pixels with the background)."""
    references = {**REFERENCE_RGB, **REFERENCE_BACKGROUND_RGB}
    names = list(references)
    min_px = 0.6 * (0.1 * 64) ** 2
    checked = 0
    for entry in all_entries(dataset):
        k = majority_pair(entry["times"])[0]
        named = [w for w in words(entry["description"]) if w in REFERENCE_RGB]
        assert len(named) == 1, entry["description"]
        frames, times_s, _ = decode_pyav(dataset / "videos" / entry["video"])
        frame = frames[np.argmin(np.abs(times_s - (5 * k + 2.5)))]
        counts = Counter(names[i] for i in _classify(frame.reshape(-1, 3), references))
        shape_counts = {c: counts.get(c, 0) for c in REFERENCE_RGB}
        best = max(shape_counts, key=shape_counts.get)
        assert best == named[0] and shape_counts[best] >= min_px, (entry, shape_counts)
        if "background" in words(entry["description"]):
            border = np.concatenate([frame[0], frame[-1], frame[:, 0], frame[:, -1]])
            votes = Counter(names[i] for i in _classify(border, references))
            bg = [w for w in words(entry["description"]) if w in REFERENCE_BACKGROUND_RGB]
            assert votes.most_common(1)[0][0] == bg[0], entry
        checked += 1
    assert checked >= 48


def test_described_moments_only_in_first_30_s(dataset):
    meta = json.loads((dataset / "synth_meta.json").read_text())["videos"]
    by_id = {e["annotation_id"]: e for e in all_entries(dataset)}
    long_videos = 0
    for name, info in meta.items():
        n_moments = round(info["duration_s"] / 5)
        long_videos += n_moments > 6
        assert 2 <= len(info["sentences"]) <= 4
        for sentence in info["sentences"]:
            k = sentence["moment"]
            assert 0 <= k < min(6, n_moments)
            assert info["moments"][k]["described"]
            entry = by_id[sentence["annotation_id"]]
            assert entry["video"] == name and entry["description"] == sentence["description"]
            assert majority_pair(entry["times"]) == (k, k)
            assert max(p[1] for p in entry["times"]) <= min(5, n_moments - 1)
        described = [j for j, m in enumerate(info["moments"]) if m["described"]]
        assert described and max(described) < 6
    assert long_videos >= 5  # the check above is not vacuous


# ------------------------------------------------------------------------------ output dir


def test_refuses_foreign_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    with pytest.raises(synth.SynthError, match="not empty"):
        synth.generate(tmp_path, videos=3, size=16, workers=1, progress=False)
    assert synth.main(["--out", str(tmp_path), "--videos", "3", "--no-progress"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_reuse_force_and_changed_parameters(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["--out", str(out), "--videos", "4", "--size", "16", "--workers", "1", "--no-progress"]
    assert synth.main(args) == 0
    meta_path = out / "synth_meta.json"
    stamp = meta_path.stat().st_mtime_ns
    summary = synth.generate(out, videos=4, size=16, workers=1, progress=False)
    assert summary["skipped"] and summary["test"] == synth.split_sizes(4)["test"]
    assert meta_path.stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert synth.main(args) == 0
    assert "already holds" in capsys.readouterr().out

    with pytest.raises(synth.SynthError, match="--force"):
        synth.generate(out, videos=5, size=16, workers=1, progress=False)
    summary = synth.generate(out, videos=5, size=16, workers=1, progress=False, force=True)
    assert not summary["skipped"]
    assert len(list((out / "videos").iterdir())) == 5

    # An interrupted run (marker left behind) is regenerated without --force.
    (out / "videos" / next(iter(sorted(p.name for p in (out / "videos").iterdir())))).unlink()
    (out / synth.IN_PROGRESS_NAME).write_text("{}")
    summary = synth.generate(out, videos=5, size=16, workers=1, progress=False)
    assert not summary["skipped"] and len(list((out / "videos").iterdir())) == 5
    assert not (out / synth.IN_PROGRESS_NAME).exists()
