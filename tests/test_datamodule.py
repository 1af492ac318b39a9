"""DiDeMoDataModule on a tiny generated DiDeMo-format dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import make_tiny_didemo
from torch.utils.data import DataLoader, DistributedSampler

from tvrbench.data.datamodule import (
    DataSetupError,
    DiDeMoDataModule,
    collate_batch,
)
from tvrbench.data.video import CLIP_MEAN, CLIP_STD
from tvrbench.retrieval import deduplicate_indices

REPO = Path(__file__).resolve().parents[1]


def _dm(root, tokenizer_dir, cache, **kw) -> DiDeMoDataModule:
    args = dict(
        tokenizer=tokenizer_dir,
        max_words=16,
        max_frames=8,
        image_size=32,
        batch_size=2,
        cache_dir=str(cache),
        num_buckets=2,
    )
    args.update(kw)
    return DiDeMoDataModule(str(root), **args)


def test_batch_contract(tiny_didemo, tiny_tokenizer_dir, tmp_path):
    dm = _dm(tiny_didemo, tiny_tokenizer_dir, tmp_path / "cache", num_workers=1)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    b, n, L = 2, 8, 16
    spec = {
        "input_ids": ((b, L), torch.long),
        "attention_mask": ((b, L), torch.long),
        "frames": ((b, n, 32, 32, 3), torch.uint8),
        "frame_mask": ((b, n), torch.bool),
        "index": ((b,), torch.long),
        "bucket": ((b,), torch.long),
        "duration_s": ((b,), torch.float32),
    }
    assert set(batch) == set(spec) | {"video"}
    for key, (shape, dtype) in spec.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key
    assert batch["video"] == ["val0@N00_1000.mp4", "val1@N00_1001."]  # eval order = list order
    assert batch["index"].tolist() == [0, 1]
    # Durations 2.5 s and 3.5 s at 1 fps: 2 and 3 real frames, the rest zero padding.
    assert batch["frame_mask"].sum(1).tolist() == [2, 3]
    np.testing.assert_allclose(batch["duration_s"].numpy(), [2.5, 3.5], atol=1e-3)
    assert torch.all(batch["frames"][~batch["frame_mask"]] == 0)
    assert batch["frames"].is_contiguous()
    # Real frames: the generated grey levels as they were decoded (normalised on the device).
    pix = batch["frames"][0, 0, 16, 16, :].float()
    assert torch.allclose(pix, pix.mean(), atol=1.0)
    # Tokens: start + words + end, padded to max_words.
    tok = dm.tokenizer
    para = dm.dataset("val").videos[0].paragraph
    expected = tok(para)["input_ids"]
    assert batch["input_ids"][0, : len(expected)].tolist() == expected
    assert batch["attention_mask"][0].sum().item() == len(expected)
    s = dm.summary("val")
    assert (s["videos"], s["sentences"], s["names_without_extension"]) == (4, 8, 1)
    assert len(dm.bucket_names("val")) == 2 == len(s["buckets"])
    assert sum(r["videos"] for r in s["buckets"]) == 4


def _clip_normalise_reference(raw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The float32 CLIP normalisation batches used to carry, from the CLIP preprocessing
    definition: (x / 255 - mean) / std per channel, channels first, padded frames 0."""
    x = raw.astype(np.float64) / 255.0  # (B, N, S, S, 3)
    x = (x - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    x = np.moveaxis(x, -1, 2)  # (B, N, 3, S, S)
    return (x * mask[:, :, None, None, None]).astype(np.float32)


def test_frames_normalised_on_the_module_equal_the_cpu_normalisation(tmp_path):
    """uint8 batch frames, normalised after the batch transfer by the module, equal the float32
    CLIP normalisation of the padded batch (the contract before frames crossed as bytes)."""
    from tvrbench.retrieval import RetrievalModule

    rng = np.random.default_rng(0)
    items = []
    for n in (3, 1):
        frames = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
        items.append(
            {
                "input_ids": torch.zeros(4, dtype=torch.long),
                "attention_mask": torch.ones(4, dtype=torch.long),
                "frames": torch.from_numpy(frames),
                "index": 0,
                "bucket": 0,
                "duration_s": 1.0,
                "video": "v",
            }
        )
    batch = collate_batch(items, max_frames=4)
    assert batch["frames"].dtype == torch.uint8
    expected = _clip_normalise_reference(batch["frames"].numpy(), batch["frame_mask"].numpy())
    moved = RetrievalModule.on_after_batch_transfer(None, dict(batch), 0)  # type: ignore[arg-type]
    assert moved["frames"].dtype == torch.float32
    assert moved["frames"].shape == (2, 4, 3, 4, 4)
    np.testing.assert_allclose(moved["frames"].numpy(), expected, atol=1e-6)
    # Already-prepared frames pass through unchanged (idempotent).
    again = RetrievalModule.on_after_batch_transfer(None, dict(moved), 0)  # type: ignore[arg-type]
    assert again["frames"] is moved["frames"]


def test_train_loader_seeded_shuffle_and_drop_last(tiny_didemo, tiny_tokenizer_dir, tmp_path):
    dm = _dm(tiny_didemo, tiny_tokenizer_dir, tmp_path / "cache", num_workers=1, seed=3)
    dm.setup("fit")
    order = [b["index"].tolist() for b in dm.train_dataloader()]
    again = [b["index"].tolist() for b in dm.train_dataloader()]
    assert order == again and len(order) == 3  # 6 videos, batch 2, drop_last
    assert sorted(sum(order, [])) == list(range(6))


def test_frame_cache_hit_on_second_setup(
    tiny_didemo, tiny_tokenizer_dir, tmp_path, counting_decode
):
    cache = tmp_path / "cache"
    _dm(tiny_didemo, tiny_tokenizer_dir, cache, num_workers=1).setup("validate")
    assert len(counting_decode) == 4
    counting_decode.clear()
    dm = _dm(tiny_didemo, tiny_tokenizer_dir, cache, num_workers=1, memory_limit_gb=0.0)
    dm.setup("validate")
    for _ in dm.val_dataloader():
        pass
    assert counting_decode == []


def test_bad_videos_skipped_and_listed(tmp_path, tiny_tokenizer_dir):
    root = make_tiny_didemo(tmp_path / "ds", {"test": [2.0, 3.0, 4.0, 5.0, 6.0]})
    vids = root / "videos"
    good = (vids / "test0@N00_1000.mp4").read_bytes()
    (vids / "test2@N00_1002.mp4").write_bytes(good[: len(good) // 2])  # truncated
    (vids / "test3@N00_1003.mp4").write_bytes(b"")  # empty
    (vids / "test4@N00_1004.mp4").unlink()  # missing
    manifest = tmp_path / "bad.csv"
    dm = _dm(root, tiny_tokenizer_dir, tmp_path / "cache", manifest_path=str(manifest))
    dm.setup("test")
    s = dm.summary("test")
    assert (s["videos"], s["unreadable_videos"], s["missing_videos"]) == (2, 2, 1)
    rows = list(csv.DictReader(manifest.open()))
    assert {r["video"] for r in rows} == {
        "test2@N00_1002.mp4",
        "test3@N00_1003.mp4",
        "test4@N00_1004.mp4",
    }
    assert all(r["split"] == "test" and r["reason"] for r in rows)
    assert rows == dm.bad_videos()
    assert [v.video for v in dm.dataset("test").videos] == ["test0@N00_1000.mp4", "test1@N00_1001."]
    with pytest.raises(DataSetupError, match="test2@N00_1002.mp4"):
        _dm(root, tiny_tokenizer_dir, tmp_path / "cache", on_bad_video="error").setup("test")


def test_limit_and_given_edges(tiny_didemo, tiny_tokenizer_dir, tmp_path):
    dm = _dm(
        tiny_didemo,
        tiny_tokenizer_dir,
        tmp_path / "cache",
        num_workers=1,
        train_limit=4,
        bucket_edges_s=[3.5, 5.0],
    )
    dm.setup("fit")
    ds = dm.dataset("train")
    assert len(ds) == 4 and dm.bucket_names("train") == ["0-3.5s", "3.5-5s", "5s+"]
    assert ds.bucket_ids == [0, 0, 1, 2]  # durations 2, 3, 4.5, 6
    assert dm.bucket_edges("train") == [3.5, 5.0]


def test_described_fraction_buckets(tmp_path, tiny_tokenizer_dir):
    # Every video's sentences are annotated with chunks 0 and 0-1: [0, 10) s, cut to the video.
    root = make_tiny_didemo(tmp_path / "data", {"test": [4.0, 12.0, 20.0, 40.0]})
    dm = _dm(
        root,
        tiny_tokenizer_dir,
        tmp_path / "cache",
        num_workers=1,
        bucket_by="described_fraction",
        bucket_edges_s=[0.3, 0.6, 0.9],
    )
    dm.setup("test")
    # fractions 4/4 = 1, 10/12 = 0.83, 10/20 = 0.5, 10/40 = 0.25
    assert dm.dataset("test").bucket_ids == [3, 2, 1, 0]
    assert dm.bucket_names("test") == ["0-0.3", "0.3-0.6", "0.6-0.9", "0.9+"]
    assert [r["videos"] for r in dm.summary("test")["buckets"]] == [1, 1, 1, 1]


def test_sampler_padding_is_undone_by_index(tiny_didemo, tiny_tokenizer_dir, tmp_path):
    dm = _dm(tiny_didemo, tiny_tokenizer_dir, tmp_path / "cache", num_workers=1)
    dm.setup("validate")
    ds = dm.dataset("val")  # 4 samples over 3 ranks: padded to 6
    gathered = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=False)
        loader = DataLoader(
            ds, batch_size=2, sampler=sampler, collate_fn=dm.val_dataloader().collate_fn
        )
        gathered += [b["index"] for b in loader]
    index = torch.cat(gathered)
    assert len(index) == 6 and len(set(index.tolist())) == 4
    keep = deduplicate_indices(index)
    assert index[keep].tolist() == [0, 1, 2, 3]
    # First occurrences (independent reference).
    ref = [index.tolist().index(i) for i in range(4)]
    assert keep.tolist() == ref


def test_collate_truncates_to_max_frames():
    item = {
        "input_ids": torch.zeros(4, dtype=torch.long),
        "attention_mask": torch.ones(4, dtype=torch.long),
        "frames": torch.full((5, 2, 2, 3), 255, dtype=torch.uint8),
        "index": 0,
        "bucket": 0,
        "duration_s": 5.0,
        "video": "v",
    }
    out = collate_batch([item], max_frames=3)
    assert out["frames"].shape == (1, 3, 2, 2, 3) and out["frame_mask"].all()
    assert out["frames"].dtype == torch.uint8 and bool((out["frames"] == 255).all())


def test_config_matches_constructor(tiny_didemo, tiny_tokenizer_dir, tmp_path):
    cfg = yaml.safe_load((REPO / "configs" / "data" / "didemo.yaml").read_text())["data"]
    assert cfg["class_path"] == "tvrbench.data.datamodule.DiDeMoDataModule"
    args = dict(cfg["init_args"])
    assert (args["max_words"], args["max_frames"], args["sample_fps"]) == (64, 64, 1.0)
    assert (args["clip_seconds"], args["image_size"]) == (31.0, 224)
    args.update(root=str(tiny_didemo), tokenizer=tiny_tokenizer_dir, cache_dir=str(tmp_path))
    DiDeMoDataModule(**args)  # every key is a constructor argument


def test_synthetic_dataset_if_available(tmp_path):
    synth = pytest.importorskip("tvrbench.data.synth")
    from tvrbench.data.synth import main as synth_main

    root = tmp_path / "synth"
    assert (
        synth_main(
            ["--out", str(root), "--videos", "6", "--seed", "0", "--workers", "1", "--no-progress"]
        )
        == 0
    )
    assert synth is not None
    dm = DiDeMoDataModule(
        str(root),
        image_size=32,
        max_frames=8,
        batch_size=2,
        cache_dir=str(tmp_path / "cache"),
        num_workers=1,
    )
    dm.setup(None)  # tokenizer "tiny": the synthetic vocabulary
    for split in ("train", "val", "test"):
        s = dm.summary(split)
        assert s["missing_videos"] == 0 and s["unreadable_videos"] == 0, s
        assert s["videos"] == len(dm.annotations(split).videos) > 0
        batch = next(iter(dm.val_dataloader() if split == "val" else dm.test_dataloader()))
        assert batch["frames"].shape[1:] == (8, 32, 32, 3)
