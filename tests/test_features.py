"""The cached-feature protocol: extraction, caching keys, batches, scores equal to the full path,
head-only training through Lightning, and CenterCLIP's refusal."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from conftest import quiet_trainer

from baselines.meanp import MeanPHead
from baselines.xpool import XPoolHead
from tvrbench.features import (
    BATCH_KEYS,
    CachedFeatureDataModule,
    CachedFeaturesError,
    CachedFeaturesUnsupportedError,
    check_cached_protocol,
    extract_features,
    load_features,
)
from tvrbench.glccl import GLCCLHead
from tvrbench.retrieval import RetrievalModule

MAX_FRAMES = 6
MAX_WORDS = 32


@pytest.fixture(scope="module")
def didemo(tmp_path_factory):
    """A synthetic DiDeMo-format set (16 videos: train 11, val 1, test 4) and its DataModule."""
    from tvrbench.data.datamodule import DiDeMoDataModule
    from tvrbench.data.synth import generate

    root = tmp_path_factory.mktemp("synth-features")
    generate(root, videos=16, seed=5, fps=1.0, size=32, workers=1, progress=False)
    dm = DiDeMoDataModule(
        str(root),
        image_size=32,
        max_words=MAX_WORDS,
        max_frames=MAX_FRAMES,
        sample_fps=0.2,
        clip_seconds=None,
        num_buckets=2,
        batch_size=4,
        eval_batch_size=3,
        cache_dir=str(tmp_path_factory.mktemp("frame-cache")),
    )
    for split in ("train", "val", "test"):
        dm.setup_split(split)
    return dm


@pytest.fixture(scope="module")
def feature_files(didemo, tmp_path_factory):
    """Features of every split from the tiny backbone (seeded, so every module's is the same)."""
    out = tmp_path_factory.mktemp("features")
    backbone = RetrievalModule(head=MeanPHead, clip="tiny").backbone
    return {s: extract_features(backbone, didemo, s, out, batch_size=3) for s in didemo._datasets}


def _module(name: str):
    torch.manual_seed(0)
    head = {
        "meanp": MeanPHead,
        "xpool": partial(XPoolHead, dropout=0.0),
        "glccl": partial(GLCCLHead, max_words=MAX_WORDS, max_frames=MAX_FRAMES),
    }[name]
    return RetrievalModule(head=head, clip="tiny", freeze_backbone=True)


@torch.no_grad()
def _gallery_scores(module, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Full ``[n, n]`` similarity of a split from its batches, and the indices in row order."""
    texts, videos, index = [], [], []
    for batch in loader:
        texts.append(module.batch_text_state(batch))
        videos.append(module.batch_video_state(batch))
        index.append(batch["index"])
    text = {k: torch.cat([t[k] for t in texts]) for k in texts[0]}
    video = {k: torch.cat([v[k] for v in videos]) for k in videos[0]}
    return module.similarity(text, video), torch.cat(index)


def test_file_contents_match_the_datamodule(didemo, feature_files):
    data = load_features(feature_files["test"])
    ds = didemo.dataset("test")
    n, dim = len(ds), 64
    assert data["sentence"].shape == (n, dim) and data["sentence"].dtype == torch.float16
    assert data["words"].shape == (n, MAX_WORDS, dim) and data["words"].dtype == torch.float16
    assert data["frame_emb"].shape == (n, MAX_FRAMES, dim)
    assert data["frame_emb"].dtype == torch.float16
    assert torch.equal(data["index"], torch.arange(n))
    assert torch.equal(data["attention_mask"], ds.attention_mask.bool())
    assert data["video"] == [v.video for v in ds.videos]
    assert data["bucket"].tolist() == list(ds.bucket_ids)
    assert data["duration_s"].tolist() == pytest.approx(list(ds.durations_s))
    assert data["frame_mask"].sum(1).tolist() == [min(k, MAX_FRAMES) for k in ds.num_frames]
    # Padded frames are zero, like the backbone's output.
    assert (data["frame_emb"][~data["frame_mask"]] == 0).all()
    assert data["bucket_names"] == didemo.bucket_names("test")


def test_extraction_is_cached_by_backbone_and_settings(didemo, feature_files, tmp_path):
    backbone = RetrievalModule(head=MeanPHead, clip="tiny").backbone
    path = feature_files["test"]
    mtime = path.stat().st_mtime_ns
    again = extract_features(backbone, didemo, "test", path.parent)
    assert again == path and path.stat().st_mtime_ns == mtime  # same key: reused
    with torch.no_grad():
        backbone.clip.visual_projection.weight.mul_(1.5)  # another checkpoint
    other = extract_features(backbone, didemo, "test", path.parent)
    assert other != path and other.exists()
    a, b = load_features(path), load_features(other)
    assert a["backbone"] != b["backbone"]
    assert not torch.equal(a["frame_emb"], b["frame_emb"])
    assert torch.equal(a["sentence"], b["sentence"])  # the text tower did not change
    # An explicit file whose stored key differs is rewritten.
    target = tmp_path / "test.pt"
    target.write_bytes(path.read_bytes())
    assert extract_features(backbone, didemo, "test", target) == target
    assert load_features(target)["key"] == b["key"]


@pytest.mark.parametrize("name", ["meanp", "xpool", "glccl"])
def test_cached_scores_equal_the_full_path(name, didemo, feature_files):
    module = _module(name).eval()
    full, full_index = _gallery_scores(module, didemo.test_dataloader())
    cached_dm = CachedFeatureDataModule(test_path=str(feature_files["test"]), eval_batch_size=2)
    cached, cached_index = _gallery_scores(module, cached_dm.test_dataloader())
    assert torch.equal(full_index, cached_index)
    assert cached.shape == full.shape == (len(full_index),) * 2
    # fp16 storage rounds features by up to 2^-11 ≈ 4.9e-4 relative; the scores (|s| < 1) move
    # by well under that (observed ≤ 7e-5 for all three heads).
    atol = 5e-4
    torch.testing.assert_close(cached, full, atol=atol, rtol=0)
    # ... and the fp16 features are not trivially equal to something else: a shuffled gallery
    # scores differently.
    assert (cached - full[:, torch.roll(torch.arange(len(full)), 1)]).abs().max() > atol


def test_batches_follow_the_contract(feature_files):
    dm = CachedFeatureDataModule(train_path=str(feature_files["train"]), batch_size=4, seed=3)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == set(BATCH_KEYS)
    assert batch["sentence"].shape == (4, 64) and batch["words"].shape == (4, MAX_WORDS, 64)
    assert batch["frame_emb"].shape == (4, MAX_FRAMES, 64)
    assert batch["frame_mask"].dtype == torch.bool and batch["index"].dtype == torch.long
    assert isinstance(batch["video"], list) and len(batch["video"]) == 4
    data = load_features(feature_files["train"])
    rows = batch["index"]
    assert torch.equal(batch["frame_emb"], data["frame_emb"][rows])
    assert batch["video"] == [data["video"][i] for i in rows.tolist()]
    # Shuffled with a seeded generator: reproducible, and not in file order.
    orders = [torch.cat([b["index"] for b in dm.train_dataloader()]) for _ in range(2)]
    assert torch.equal(orders[0], orders[1])
    assert not torch.equal(orders[0], torch.arange(len(orders[0])))
    assert dm.bucket_names("train") == data["bucket_names"]


@pytest.mark.parametrize("name", ["xpool", "glccl"])  # meanP has no head parameters to train
def test_head_only_training_runs_on_cached_features(name, feature_files):
    module = _module(name)
    backbone_before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in module.head.state_dict().items()}
    dm = CachedFeatureDataModule(
        train_path=str(feature_files["train"]),
        val_path=str(feature_files["val"]),
        batch_size=4,
    )
    trainer = quiet_trainer(fast_dev_run=2)
    trainer.fit(module, datamodule=dm)
    after = module.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone_before.items())
    after_head = module.head.state_dict()
    changed = [k for k, v in head_before.items() if not torch.equal(v, after_head[k])]
    assert changed, "no head parameter was updated"
    assert module.last_eval["stage"] == "val"
    assert module.last_eval["bucket_names"] == dm.bucket_names("val")


def test_centerclip_cannot_use_cached_features(feature_files):
    from baselines.centerclip import CenterCLIPModule

    module = CenterCLIPModule(clip="tiny", freeze_backbone=True)
    with pytest.raises(CachedFeaturesUnsupportedError, match="inside the vision transformer"):
        check_cached_protocol(module)
    dm = CachedFeatureDataModule(train_path=str(feature_files["train"]), batch_size=4)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False)
    with pytest.raises(CachedFeaturesUnsupportedError):
        trainer.fit(module, datamodule=dm)
    check_cached_protocol(_module("meanp"))  # per-frame CLIP methods pass


def test_other_backbone_and_bad_files_are_rejected(feature_files, tmp_path):
    module = _module("meanp")
    with torch.no_grad():
        module.backbone.clip.visual_projection.weight.mul_(2.0)
    dm = CachedFeatureDataModule(train_path=str(feature_files["train"]), batch_size=4)
    trainer = L.Trainer(fast_dev_run=1, accelerator="cpu", logger=False)
    with pytest.raises(CachedFeaturesError, match="another backbone"):
        trainer.fit(module, datamodule=dm)
    with pytest.raises(CachedFeaturesError, match="no such"):
        load_features(tmp_path / "absent.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CachedFeaturesError, match="junk.pt"):
        load_features(junk)
    torch.save({"format": 1, "video": []}, tmp_path / "partial.pt")
    with pytest.raises(CachedFeaturesError, match="missing entries"):
        load_features(tmp_path / "partial.pt")


def test_meanp_evaluates_on_cached_features(feature_files):
    module = _module("meanp")
    dm = CachedFeatureDataModule(test_path=str(feature_files["test"]), eval_batch_size=2)
    trainer = quiet_trainer()
    (metrics,) = trainer.test(module, datamodule=dm, verbose=False)
    n = len(load_features(feature_files["test"])["video"])
    assert metrics["test/n_queries"] == n
    assert module.last_eval["bucket_names"] == dm.bucket_names("test")
