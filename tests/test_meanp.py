"""CLIP4Clip meanP: head vs a NumPy reference, padding, chunking, training through tiny CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from head_inputs import random_frames, text_features

from baselines.meanp import MeanPHead, masked_mean_normalised
from tvrbench.retrieval import RetrievalModule, symmetric_infonce


def numpy_meanp(sentence: np.ndarray, frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    scores = np.zeros((sentence.shape[0], frames.shape[0]))
    for i, t in enumerate(sentence):
        for j in range(frames.shape[0]):
            real = frames[j][mask[j]]
            unit = real / np.linalg.norm(real, axis=1, keepdims=True)
            mean = unit.mean(axis=0)
            scores[i, j] = t @ mean / (np.linalg.norm(t) * np.linalg.norm(mean))
    return scores


def test_meanp_matches_numpy_reference():
    torch.manual_seed(0)
    sentence = torch.randn(5, 16)
    frames, mask = random_frames(7, 6, 16, seed=1)
    head = MeanPHead()
    got = head.score(head.text_state(text_features(sentence)), head.video_state(frames, mask))
    want = numpy_meanp(sentence.numpy(), frames.numpy(), mask.numpy())
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


def test_meanp_non_finite_padding_never_reaches_the_mean():
    """Finite padding is the head contract (test_head_contract.py); meanP also keeps NaN and
    inf in padded slots out of its mean (a select, not a product with the mask)."""
    frames, mask = random_frames(6, 5, 16, seed=2)
    base = masked_mean_normalised(frames, mask)
    junk = torch.full((6, 3, 16), float("nan"))
    junk[:, 1] = float("inf")
    padded = torch.cat([frames, junk], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(masked_mean_normalised(padded, padded_mask), base, rtol=0, atol=0)


def test_meanp_pair_flops_is_one_dot_product():
    """The fast scorer already is the formula: the reference is the default, at the same cost."""
    assert MeanPHead.pair_flops(num_words=32, num_frames=64, dim=512) == 512
    assert MeanPHead.reference_pair_flops(32, 64, 512) is None


# ------------------------------------------------------------------------------ the module


def tiny_batch(bsz: int, n_frames: int, seed: int, vocab: int = 51, words: int = 8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (bsz, words), generator=g)
    lengths = torch.randint(3, words + 1, (bsz,), generator=g)
    pos = torch.arange(words)[None, :]
    ids[:, 0] = 2  # start of text
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 3), ids)  # end of text
    ids = torch.where(pos >= lengths[:, None], torch.zeros_like(ids), ids)  # padding
    attention_mask = (pos < lengths[:, None]).long()
    n_real = torch.randint(1, n_frames + 1, (bsz,), generator=g)
    n_real[0] = n_frames
    frame_mask = torch.arange(n_frames)[None, :] < n_real[:, None]
    frames = torch.randn(bsz, n_frames, 3, 32, 32, generator=g) * frame_mask[..., None, None, None]
    return {
        "input_ids": ids,
        "attention_mask": attention_mask,
        "frames": frames,
        "frame_mask": frame_mask,
        "index": torch.arange(bsz),
        "bucket": torch.zeros(bsz, dtype=torch.long),
    }


def batch_loss(module, batch) -> torch.Tensor:
    """The training objective without a Trainer: InfoNCE on the scaled batch logits."""
    return symmetric_infonce(module(batch))


def fit_two_steps(module, batch) -> float:
    """Two optimizer steps through Lightning (CPU); returns the last logged training loss."""
    import lightning as L
    from torch.utils.data import DataLoader

    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    return float(trainer.callback_metrics["train/loss"])


@pytest.fixture(scope="module")
def module() -> RetrievalModule:
    torch.manual_seed(0)
    return RetrievalModule(head=MeanPHead, clip="tiny")


def test_meanp_module_every_parameter_gets_a_gradient(module):
    batch = tiny_batch(4, 3, seed=0)
    module.zero_grad()
    loss = batch_loss(module, batch)
    assert torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_meanp_module_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    module = RetrievalModule(head=MeanPHead, clip="tiny")
    batch = tiny_batch(4, 2, seed=1)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = batch_loss(module, batch)
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_meanp_module_trains_under_lightning():
    torch.manual_seed(0)
    module = RetrievalModule(head=MeanPHead, clip="tiny", lr=1e-3, backbone_lr=1e-4)
    before = module.backbone.clip.visual_projection.weight.detach().clone()
    assert np.isfinite(fit_two_steps(module, tiny_batch(4, 3, seed=2)))
    assert not torch.equal(before, module.backbone.clip.visual_projection.weight.detach())


# ------------------------------------------------------------------------------- the configs


@pytest.mark.parametrize("method", ["meanp", "xpool", "centerclip"])
def test_method_configs_name_real_constructor_arguments(method):
    """Both recipes: the module and head classes exist and take every init_arg; the tiny one
    builds, its head as configured and not among the checkpoint's hyperparameters."""
    from pathlib import Path

    from tvrbench.methods import build_module, check_arguments, load_method

    head = {"meanp": "MeanPHead", "xpool": "XPoolHead", "centerclip": "MeanPHead"}[method]
    config_dir = Path(__file__).resolve().parents[1] / "configs" / "method"
    for name in (method, f"{method}_published"):
        config = load_method(name, config_dir)
        check_arguments(config.model(), config.path)
        assert config.init_args["head"]["class_path"].endswith(f".{head}")
        if name == method:
            built = build_module(config.model())
            assert built.hparams.clip == "tiny" and "head" not in built.hparams
            assert type(built.head).__name__ == head
