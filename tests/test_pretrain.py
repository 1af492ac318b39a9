"""The tiny-CLIP pretraining: its pairs and batches, its Lightning fit against a hand-written
reference loop, its files and its reuse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tvrbench.backbone import TINY, ClipBackbone, load_tokenizer
from tvrbench.bench import pretrain as pt
from tvrbench.data.video import normalize_frames
from tvrbench.retrieval import symmetric_infonce, warmup_cosine

SENTENCES = ["a red circle", "the blue square", "a green circle moves", "red moves left"]


@pytest.fixture(scope="module")
def pair_data():
    """6 videos of 6 random 32-px frames at 0, 5, ..., 25 s; two moments each, with sentences
    shared between videos (so batches must drop duplicates)."""
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8) for _ in range(6)]
    times_s = [np.arange(6) * 5.0 for _ in range(6)]
    moments = [
        [
            (SENTENCES[v % 4], [[0, 1], [0, 1], [2, 2]]),  # consensus: chunks 0-1
            (SENTENCES[(v + 1) % 4] + f" {v}", [[3, 5]]),
        ]
        for v in range(6)
    ]
    return frames, times_s, moments


def test_moment_frame_indices_consensus_and_bounds():
    times_s = np.array([0.0, 4.9, 5.0, 9.99, 10.0, 15.0])
    assert pt.moment_frame_indices(times_s, [[0, 1], [2, 2], [0, 1]]) == [0, 1, 2, 3]
    assert pt.moment_frame_indices(times_s, [[2, 2], [3, 3]]) == [4]  # tie: the first
    assert pt.moment_frame_indices(times_s, []) == [0, 1]  # no annotation: chunk 0


def test_batches_one_pair_per_sentence_and_deterministic(pair_data):
    frames, times_s, moments = pair_data
    pairs = pt.build_pairs(times_s, moments)
    sentence_id = {s: i for i, s in enumerate(sorted({p.sentence for p in pairs}))}
    pair_sentence = torch.tensor([sentence_id[p.sentence] for p in pairs])
    batches = pt.DistinctSentenceBatches(pair_sentence, batch_size=16, num_batches=9, seed=3)
    drawn = list(batches)
    assert len(drawn) == len(batches) == 9
    assert drawn == list(batches)  # same order on every iteration
    for batch in drawn:
        texts = [pairs[i].sentence for i in batch]
        assert len(texts) == len(set(texts)) and 0 < len(batch) <= 16
    assert drawn != list(pt.DistinctSentenceBatches(pair_sentence, 16, 9, seed=4))


def test_dataset_batch_layout(pair_data):
    frames, times_s, moments = pair_data
    pairs = pt.build_pairs(times_s, moments)
    sentences = sorted({p.sentence for p in pairs})
    ids = torch.arange(len(sentences) * 4).view(-1, 4)
    ds = pt.MomentPairDataset(frames, pairs, ids, ids > 0, {s: i for i, s in enumerate(sentences)})
    batch = ds[[0, 5, 2]]
    assert batch["frames"].shape == (3, 32, 32, 3) and batch["frames"].dtype == torch.uint8
    pair = pairs[5]
    np.testing.assert_array_equal(batch["frames"][1].numpy(), frames[pair.video][pair.frame])
    assert batch["input_ids"][1].tolist() == ids[sentences.index(pairs[5].sentence)].tolist()
    assert batch["attention_mask"].shape == (3, 4)


def _reference_pretrain(frames, times_s, moments, config):
    """The hand-written loop the Lightning fit replaced (same seeds, batches, optimiser, clip)."""
    pairs = pt.build_pairs(times_s, moments)
    torch.manual_seed(config.seed)
    backbone = ClipBackbone.from_pretrained(TINY).train()
    sentences = sorted({p.sentence for p in pairs})
    tokens = load_tokenizer(TINY)(
        sentences, padding="max_length", truncation=True, max_length=config.max_words,
        return_tensors="pt",
    )  # fmt: skip
    sid = torch.tensor([sentences.index(p.sentence) for p in pairs])
    opt = torch.optim.AdamW(backbone.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(0.05 * config.max_steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, config.max_steps, warmup)
    )
    losses = []
    for batch in pt.DistinctSentenceBatches(sid, config.batch_size, config.max_steps, config.seed):
        images = np.stack([frames[pairs[i].video][pairs[i].frame] for i in batch])
        image = backbone.encode_images(normalize_frames(torch.from_numpy(images)))
        text = backbone.encode_text(tokens.input_ids[sid[batch]], tokens.attention_mask[sid[batch]])
        image, sentence = (torch.nn.functional.normalize(x, dim=-1) for x in (image, text.sentence))
        loss = symmetric_infonce(backbone.logit_scale() * sentence @ image.t())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return backbone.clip.state_dict(), losses


def test_lightning_fit_matches_reference_loop_and_writes_only_its_files(pair_data, tmp_path):
    frames, times_s, moments = pair_data
    config = pt.PretrainConfig(minutes=5.0, max_steps=4, batch_size=16, lr=1e-3, seed=1)
    out = pt.pretrain_tiny_clip(frames, times_s, moments, tmp_path / "clip.pt", config, False)
    assert out == tmp_path / "clip.pt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.json", "clip.pt"]
    meta = json.loads((tmp_path / "clip.json").read_text())
    assert meta["steps"] == 4 and meta["pairs"] == len(pt.build_pairs(times_s, moments))
    assert meta["config"]["seed"] == 1 and meta["chance_loss"] == pytest.approx(math.log(16))
    assert meta["final_chance_loss"] == pytest.approx(math.log(meta["final_batch_size"]))
    state = torch.load(out, weights_only=True)
    reference, losses = _reference_pretrain(frames, times_s, moments, config)
    assert meta["final_loss"] == pytest.approx(losses[-1], rel=1e-4)
    assert state.keys() == reference.keys()
    for name, value in reference.items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)
    # The weights changed, and they load into a fresh tiny CLIP.
    fresh = ClipBackbone.from_pretrained(TINY).clip
    assert any(not torch.equal(fresh.state_dict()[k], v) for k, v in state.items())
    fresh.load_state_dict(state)


def test_existing_file_is_reused(pair_data, tmp_path, monkeypatch):
    frames, times_s, moments = pair_data
    out = tmp_path / "clip.pt"
    out.write_bytes(b"already there")
    monkeypatch.setattr(pt.L, "Trainer", lambda *a, **k: pytest.fail("must not train"))
    assert pt.pretrain_tiny_clip(frames, times_s, moments, out) == out
    assert out.read_bytes() == b"already there"


def test_time_budget_stops_early(pair_data, tmp_path):
    frames, times_s, moments = pair_data
    config = pt.PretrainConfig(minutes=1e-7, max_steps=200, batch_size=8)
    out = pt.pretrain_tiny_clip(frames, times_s, moments, tmp_path / "c.pt", config, False)
    steps = json.loads(out.with_suffix(".json").read_text())["steps"]
    assert 1 <= steps < 200


def test_no_pairs_is_an_error(tmp_path):
    frames = [np.zeros((1, 32, 32, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match="no \\(frame, sentence\\) pair"):
        pt.pretrain_tiny_clip(frames, [np.array([3.0])], [[("x", [[1, 1]])]], tmp_path / "c.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_pretrain_on_cuda(pair_data, tmp_path):
    frames, times_s, moments = pair_data
    config = pt.PretrainConfig(max_steps=3, batch_size=16)
    out = pt.pretrain_tiny_clip(
        frames, times_s, moments, tmp_path / "c.pt", config, False, accelerator="cuda"
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["steps"] == 3 and meta["accelerator"] == "cuda"
    state = torch.load(out, weights_only=True)
    assert all(v.device.type == "cpu" for v in state.values())  # loadable without a GPU
