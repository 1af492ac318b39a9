"""The controlled-length (stress) test set: timeline, provenance, sampling, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_WORDS, quiet_trainer

from tvrbench.data import video as video_lib
from tvrbench.data.datamodule import DiDeMoDataModule
from tvrbench.data.stress import (
    DIDEMO_INJECTED_LENGTHS_S,
    SYNTHETIC_INJECTED_LENGTHS_S,
    DistractorPool,
    StressDataModule,
    StressTestSet,
    grid_offset_s,
    kept_relevant_frames,
    plan_composition,
    source_frames,
    stress_dataloader,
)
from tvrbench.data.video import SamplingConfig, full_grid_sampling, sample_times

CONTRACT_KEYS = (
    "input_ids",
    "attention_mask",
    "frames",
    "frame_mask",
    "index",
    "bucket",
    "duration_s",
    "video",
)
DURATIONS_S = {"train": [3.0, 6.0, 12.0], "val": [4.0, 7.5, 10.0], "test": [2.5, 5.0, 9.0]}
FPS = 4


def _write_coded_video(path: Path, seconds: float, code: int, size: int = 64) -> None:
    """Left half: grey level of video ``code`` (unique per video); right half: frame ``i``'s
    level, so every decoded frame tells which video it came from."""
    import av

    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"qscale": "1"}
        for i in range(round(seconds * FPS)):
            img = np.zeros((size, size, 3), dtype=np.uint8)
            img[:, : size // 2] = 20 + 24 * code
            img[:, size // 2 :] = 8 + 5 * i  # distinct up to 12 s
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


@pytest.fixture(scope="module")
def coded_didemo(tmp_path_factory) -> Path:
    """A DiDeMo-format dataset whose videos are told apart by their pixels (3 per split)."""
    root = tmp_path_factory.mktemp("coded")
    (root / "videos").mkdir()
    rng = np.random.default_rng(0)
    code, ann_id = 0, 0
    for split, durations in DURATIONS_S.items():
        entries, names = [], []
        for j, dur in enumerate(durations):
            name = f"{split}{j}@N00_{2000 + j}.mp4"
            _write_coded_video(root / "videos" / name, dur, code)
            code += 1
            names.append(name)
            for _ in range(2):
                words = rng.choice(TINY_WORDS, size=4)
                entries.append(
                    {
                        "annotation_id": ann_id,
                        "description": " ".join(words),
                        "video": name,
                        "times": [[0, 0]],
                        "dl_link": "",
                        "num_segments": 6,
                    }
                )
                ann_id += 1
        (root / f"{split}_data.json").write_text(json.dumps(entries))
        (root / f"{split}_list.txt").write_text("\n".join(names) + "\n")
    return root


def _dm(root, tokenizer, cache, max_frames) -> DiDeMoDataModule:
    dm = DiDeMoDataModule(
        str(root),
        tokenizer=tokenizer,
        max_words=16,
        max_frames=max_frames,
        sample_fps=1.0,
        clip_seconds=None,
        image_size=32,
        cache_dir=str(cache),
        num_buckets=2,
        eval_batch_size=2,
        num_workers=1,
    )
    dm.setup_split("test")
    dm.setup_split("val")
    return dm


@pytest.fixture(scope="module")
def wide(coded_didemo, tiny_tokenizer_dir, tmp_path_factory) -> DiDeMoDataModule:
    """16 frames at 1 fps: no natural video is thinned, composed ones past 16 s are."""
    return _dm(coded_didemo, tiny_tokenizer_dir, tmp_path_factory.mktemp("cache"), 16)


@pytest.fixture(scope="module")
def thin(coded_didemo, tiny_tokenizer_dir, tmp_path_factory) -> DiDeMoDataModule:
    """4 frames at 1 fps: thinning from 4 s, so full grids come from their own cache entries."""
    return _dm(coded_didemo, tiny_tokenizer_dir, tmp_path_factory.mktemp("cache"), 4)


def _full_grid(dm, split: str) -> list[np.ndarray]:
    store = source_frames(dm)
    return [store.get(split, i) for i in range(len(dm.dataset(split)))]


def _provenance(frame: np.ndarray, grids: dict[str, list[np.ndarray]]) -> set[tuple[str, int, int]]:
    """Every (split, video, frame) whose full-grid frame equals ``frame`` pixel for pixel."""
    return {
        (split, i, k)
        for split, videos in grids.items()
        for i, frames in enumerate(videos)
        for k in np.flatnonzero((frames == frame).all(axis=(1, 2, 3)))
    }


# ------------------------------------------------------------------------------------ options


def test_test_split_as_distractor_is_refused_in_one_line(wide):
    for make in (
        lambda: StressTestSet(wide, 20, distractor_split="test"),
        lambda: StressDataModule(wide, 20, distractor_split="test"),
        lambda: stress_dataloader(wide, 20, distractor_split="test"),
    ):
        with pytest.raises(ValueError, match="distractor_split='test' is refused") as err:
            make()
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="placement"):
        StressTestSet(wide, 20, placement="anywhere")
    with pytest.raises(ValueError, match="injected_length_s"):
        StressTestSet(wide, -1)


def test_default_lengths():
    assert DIDEMO_INJECTED_LENGTHS_S == [0, 30, 60, 120, 240]
    assert SYNTHETIC_INJECTED_LENGTHS_S[0] == 0
    assert 18 / 0.2 in SYNTHETIC_INJECTED_LENGTHS_S  # the synthetic thinning onset
    assert SYNTHETIC_INJECTED_LENGTHS_S == sorted(SYNTHETIC_INJECTED_LENGTHS_S)


# -------------------------------------------------------------------------------- unmodified


@pytest.mark.parametrize("length_s", [0.0, 2.5])
def test_no_lengthening_gives_the_unmodified_test_batch(wide, length_s):
    want = list(wide.test_dataloader())
    got = list(stress_dataloader(wide, length_s))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key in CONTRACT_KEYS:
            if key == "video":
                assert g[key] == w[key]
            else:
                assert g[key].dtype == w[key].dtype and torch.equal(g[key], w[key]), key
        assert torch.equal(g["relevant_mask"], w["frame_mask"])
        assert torch.all(g["relevant_fraction"] == 1.0) and torch.all(g["offset_s"] == 0)


# ---------------------------------------------------------------------------------- timeline


@pytest.mark.parametrize("placement", ["random", "start", "middle", "end"])
def test_timeline_length_and_original_frames_at_the_offset(wide, placement):
    length_s = 14.0  # every test video lengthened; 14 grid frames <= 16: nothing thinned
    ds = StressTestSet(wide, length_s, placement=placement, seed=3)
    base = wide.dataset("test")
    for i in range(len(ds)):
        item, plain = ds[i], base[i]
        d_v = base.durations_s[i]
        assert item["duration_s"] == pytest.approx(length_s)
        assert sum(s.duration_s for s in ds.plan(i).stretches) == pytest.approx(length_s - d_v)
        np.testing.assert_allclose(item["frame_times_s"], sample_times(length_s, wide.sampling))
        rel = item["relevant_mask"]
        assert item["frames"].shape[0] == len(item["frame_times_s"]) == 14
        # v's own frames appear in order at the offset, pixel for pixel, at shifted times
        assert torch.equal(item["frames"][rel], plain["frames"])
        own_times = sample_times(d_v, wide.sampling) + item["offset_s"]
        np.testing.assert_allclose(item["frame_times_s"][rel], own_times, atol=1e-6)
        assert rel.nonzero().squeeze(1).diff().eq(1).all()  # one contiguous run
        assert item["relevant_fraction"] == pytest.approx(d_v / length_s)


def test_distractors_come_from_the_distractor_split_never_the_test_split(wide):
    wide.setup_split("train")
    grids = {split: _full_grid(wide, split) for split in ("train", "val", "test")}
    test_names = {v.video for v in wide.dataset("test").videos}
    for split in ("val", "train"):
        ds = StressTestSet(wide, 30.0, distractor_split=split, seed=1)
        for i in range(len(ds)):
            plan, frames = ds.plan(i), ds.frames(i)
            assert plan.stretches and all(s.split == split for s in plan.stretches)
            assert not {s.video for s in plan.stretches} & test_names
            for k, frame in enumerate(frames):
                found = _provenance(frame, grids)
                if plan.relevant_mask[k]:
                    assert found == {("test", i, int(plan.frame_index[k]))}
                else:
                    stretch = plan.stretches[plan.frame_source[k]]
                    assert found == {(split, stretch.index, int(plan.frame_index[k]))}


def test_same_seed_same_frames_other_seed_other_offsets(wide):
    a, b = StressTestSet(wide, 40.0, seed=7), StressTestSet(wide, 40.0, seed=7)
    for i in range(len(a)):
        assert torch.equal(a[i]["frames"], b[i]["frames"])
        assert a.plan(i).stretches == b.plan(i).stretches
    offsets = {s: [p.offset_s for p in StressTestSet(wide, 40.0, seed=s).plans] for s in range(4)}
    assert len({tuple(v) for v in offsets.values()}) > 1


def test_placement_offsets(wide):
    fps = wide.sampling.sample_fps
    for placement in ("start", "middle", "end"):
        ds = StressTestSet(wide, 20.0, placement=placement)
        for p in ds.plans:
            free = p.composed_duration_s - p.source_duration_s
            assert 0 <= p.offset_s <= free + 1e-9
            assert (p.offset_s * fps) == pytest.approx(round(p.offset_s * fps))  # on the grid
            if placement == "start":
                assert p.offset_s == 0
            elif placement == "end":
                assert free - p.offset_s < 1 / fps
            else:
                assert abs(p.offset_s - free / 2) <= 0.5 / fps + 1e-9
    assert grid_offset_s(10.0, 30.0, 0.2, "end") == 20.0
    assert grid_offset_s(10.0, 30.0, 0.2, "middle") == 10.0
    assert grid_offset_s(10.0, 30.0, 0.2, "random", u=0.99) == 20.0


# ---------------------------------------------------------------------------------- thinning


@pytest.mark.parametrize("length_s", [8.0, 20.0, 45.0])
@pytest.mark.parametrize("placement", ["random", "start", "end"])
def test_thinned_relevant_frames_match_the_closed_form(thin, length_s, placement):
    sampling = thin.sampling
    assert length_s > sampling.max_frames / sampling.sample_fps
    ds = StressTestSet(thin, length_s, placement=placement, seed=2)
    own = _full_grid(thin, "test")
    for i in range(len(ds)):
        item, plan = ds[i], ds.plan(i)
        assert len(item["frames"]) == sampling.max_frames  # thinned to max_frames
        want = kept_relevant_frames(
            plan.source_duration_s,
            length_s,
            plan.offset_s,
            sampling.sample_fps,
            sampling.max_frames,
        )
        assert int(item["relevant_mask"].sum()) == want
        rel = item["relevant_mask"].numpy()
        # kept frames of v are v's own grid frames at the composed times minus the offset
        local = np.rint((item["frame_times_s"].numpy()[rel] - plan.offset_s) - 0.5).astype(int)
        assert np.array_equal(item["frames"].numpy()[rel], own[i][local])


def test_closed_form_equals_the_sampler():
    pool = DistractorPool("val", (0, 1), ("a", "b"), (7.0, 61.0))
    for fps in (0.2, 1.0, 2.0):
        for max_frames in (1, 4, 7, 18, 64):
            sampling = SamplingConfig(fps, max_frames, None, 8)
            for d_v in (0.4, 5.0, 7.3, 40.0, 90.0):
                for length_s in (0.0, 10.0, 45.0, 90.0, 181.0, 360.0):
                    for placement in ("start", "middle", "end", "random"):
                        plan = plan_composition(5, "v", d_v, length_s, sampling, pool, placement)
                        got = kept_relevant_frames(d_v, length_s, plan.offset_s, fps, max_frames)
                        assert got == plan.relevant_frames, (fps, max_frames, d_v, length_s)
    # by hand: 360 s at 0.2 fps = 72 grid frames, 18 picks round(j * 71 / 17); v = grid 20..27
    assert kept_relevant_frames(40.0, 360.0, 100.0, 0.2, 18) == 2  # picks 21 and 25
    assert kept_relevant_frames(40.0, 90.0, 0.0, 0.2, 18) == 8  # no thinning


# --------------------------------------------------------------------------- cost and wiring


def test_full_grids_decoded_once_for_every_length(
    coded_didemo, tiny_tokenizer_dir, tmp_path, counting_decode
):
    calls = counting_decode
    dm = _dm(coded_didemo, tiny_tokenizer_dir, tmp_path / "cache", 4)
    dm.setup_split("test")
    dm.setup_split("val")
    # clip_seconds None: the set-up decodes every video once, as its full grid
    assert calls and len(calls) == len(set(calls))
    thinned = [d for d in dm.dataset("test").durations_s if d > 4.5]
    assert thinned  # videos > 4 s are thinned to 4 frames: the stress needs their full grid
    calls.clear()
    for length_s in (30.0, 45.0, 90.0):
        ds = StressTestSet(dm, length_s, seed=1)
        [ds[i] for i in range(len(ds))]
    assert calls == []  # every full grid came from the set-up's decode
    # ... and it is the grid a direct decode gives
    store = source_frames(dm)
    for i, v in enumerate(dm.dataset("test").videos):
        direct = video_lib.decode_video(v.path, full_grid_sampling(dm.sampling), dm.reader).frames
        np.testing.assert_array_equal(store.get("test", i), direct)


def test_summary(wide):
    ds = StressTestSet(wide, 20.0, seed=0)
    s = ds.summary()
    d = np.asarray(wide.dataset("test").durations_s)
    assert s["videos"] == s["lengthened_videos"] == 3
    assert s["mean_relevant_fraction"] == pytest.approx(float(np.mean(d / 20.0)))
    assert s["mean_frames"] == pytest.approx(16.0)  # 20 grid frames thinned to 16
    want = [kept_relevant_frames(p.source_duration_s, 20.0, p.offset_s, 1.0, 16) for p in ds.plans]
    assert s["mean_relevant_frames"] == pytest.approx(float(np.mean(want)))
    assert s["mean_composed_duration_s"] == pytest.approx(20.0)


def test_batches_and_stress_datamodule_under_trainer_test(wide):
    from baselines.meanp import MeanPHead
    from tvrbench.retrieval import RetrievalModule

    sdm = StressDataModule(wide, 30.0, batch_size=2)
    assert sdm.bucket_names("test") == wide.bucket_names("test")
    batch = next(iter(sdm.test_dataloader()))
    n = wide.sampling.max_frames
    assert batch["frames"].shape == (2, n, 32, 32, 3)
    assert batch["frame_times_s"].shape == batch["relevant_mask"].shape == (2, n)
    assert batch["relevant_fraction"].shape == (2,)
    assert not (batch["relevant_mask"] & ~batch["frame_mask"]).any()

    torch.manual_seed(0)
    module = RetrievalModule(head=MeanPHead, clip="tiny")
    (metrics,) = quiet_trainer().test(module, datamodule=sdm, verbose=False)
    assert metrics["test/n_queries"] == 3
    assert module.last_eval["bucket_names"] == wide.bucket_names("test")


def test_every_length_evaluated_when_each_test_moves_the_module_away(wide, monkeypatch):
    """Lightning's strategy teardown moves the module off the measuring device after every
    ``trainer.test`` (CUDA → CPU). Emulated on CPU: after each test the module goes to
    float64, where float32 inputs cannot meet it. Every length must still be evaluated and
    measured — the module is placed before each use, not once."""
    import lightning as L

    from baselines.meanp import MeanPHead
    from tvrbench.bench import stress as bench_stress
    from tvrbench.bench.stress import StressSettings, evaluate_lengths
    from tvrbench.retrieval import RetrievalModule

    moved: list[str] = []

    class MoveAwayAtTeardown(L.Callback):
        def teardown(self, trainer, pl_module, stage):
            pl_module.to(torch.float64)
            moved.append(stage)

    real_trainer = bench_stress._test_trainer

    def trainer_that_moves_away(*args, **kwargs):
        trainer = real_trainer(*args, **kwargs)
        trainer.callbacks.append(MoveAwayAtTeardown())
        return trainer

    monkeypatch.setattr(bench_stress, "_test_trainer", trainer_that_moves_away)
    # Every measurement must find the module back where it measures (float32 here; on CUDA,
    # the device): a float64 module would run silently (CLIP casts its inputs), so check it.
    from tvrbench.bench import measure

    placements: list[torch.dtype] = []

    def checked(fn):
        def run(module, *args, **kwargs):
            placements.append(next(module.parameters()).dtype)
            return fn(module, *args, **kwargs)

        return run

    for name in ("method_flops", "video_latency", "query_latency"):
        monkeypatch.setattr(measure, name, checked(getattr(measure, name)))
    torch.manual_seed(0)
    module = RetrievalModule(head=MeanPHead, clip="tiny")
    sample = next(iter(wide.test_dataloader()))
    sample = {k: sample[k][:1] for k in ("input_ids", "attention_mask", "frames", "frame_mask")}
    settings = StressSettings(
        [0.0, 20.0, 40.0], bootstrap_samples=10, latency_repeats=1, latency_warmup=0, progress=False
    )
    rows, ranks = evaluate_lengths(module, wide, sample, settings, torch.device("cpu"))
    assert [r["injected_length_s"] for r in rows if r.get("postproc", "none") == "none"] == [
        0.0,
        20.0,
        40.0,
    ]
    assert all(r["latency_video_ms"] > 0 and r["gflops_video"] > 0 for r in rows)
    assert len(ranks) == 3
    assert moved == ["test"] * 3  # it really was moved away after every test
    assert placements and set(placements) == {torch.float32}
