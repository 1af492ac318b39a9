"""X-Pool: the folded fast scorer against NumPy and against the one-shot reference layout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from head_inputs import random_frames, text_features
from torch.utils.flop_counter import FlopCounterMode

from baselines.xpool import XPoolHead
from tvrbench.retrieval import RetrievalModule, symmetric_infonce


def perturbed_head(dim: int, num_heads: int, seed: int, dropout: float = 0.3) -> XPoolHead:
    """A head whose every parameter (LayerNorm gains and biases included) is off its init."""
    head = XPoolHead(dim, num_heads=num_heads, dropout=dropout)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return head


def fast_scores(head: XPoolHead, sentence, frames, mask) -> torch.Tensor:
    return head.score(head.text_state(text_features(sentence)), head.video_state(frames, mask))


def reference_scores(head: XPoolHead, sentence, frames, mask) -> torch.Tensor:
    """The head's one-shot reference, from the same states as the fast scorer."""
    text, video = head.text_state(text_features(sentence)), head.video_state(frames, mask)
    return head.reference_score(text, video)


def np_layer_norm(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(axis=-1, keepdims=True) + eps)


def np_cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ------------------------------------------------------------------------- identity init


def test_identity_init_one_frame_scores_cosine_with_the_centred_frame():
    """At init (identity projections, zero biases, LayerNorms at (1, 0)), eval mode, a video with
    one real frame f: the softmax weight is 1, o = LN1(f), and LN2, the doubling residual 2a and
    LN3 only rescale a centred vector, so score = cos(t, f − mean_d(f))."""
    torch.manual_seed(0)
    d = 16
    head = XPoolHead(d).eval()
    sentence = torch.randn(3, d)
    frames = torch.zeros(4, 5, d)
    frames[:, 0] = torch.randn(4, d)
    mask = torch.zeros(4, 5, dtype=torch.bool)
    mask[:, 0] = True
    got = fast_scores(head, sentence, frames, mask).detach().numpy()
    t, f = sentence.numpy(), frames[:, 0].numpy()
    want = np.array([[np_cos(ti, fj - fj.mean()) for fj in f] for ti in t])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_identity_init_attention_pooling_matches_numpy():
    """At init, eval mode, one head: z_{v|t} is a positive multiple of Σ_j α_j x_j with
    x_j = LN1(f_j) and α = softmax over real frames of LN1(t)·x_j / sqrt(D); so the score is
    cos(t, Σ_j α_j x_j). Padded frames take no weight."""
    torch.manual_seed(0)
    d = 16
    head = XPoolHead(d).eval()
    sentence = torch.randn(4, d)
    frames, mask = random_frames(5, 6, d, seed=1)
    got = fast_scores(head, sentence, frames, mask).detach().numpy()
    t, f, m = sentence.numpy().astype(np.float64), frames.numpy().astype(np.float64), mask.numpy()
    want = np.zeros((4, 5))
    for i in range(4):
        q = np_layer_norm(t[i])
        for j in range(5):
            x = np_layer_norm(f[j][m[j]])  # (n_real, D)
            logits = x @ q / math.sqrt(d)
            alpha = np.exp(logits - logits.max())
            alpha /= alpha.sum()
            want[i, j] = np_cos(t[i], alpha @ x)
    np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------- fast vs reference


@pytest.mark.parametrize("num_heads", [2, 4])  # one head: test_head_contract.py
def test_fast_scores_equal_one_shot_reference(num_heads):
    head = perturbed_head(32, num_heads, seed=num_heads).eval()
    sentence = torch.randn(6, 32, generator=torch.Generator().manual_seed(7))
    frames, mask = random_frames(9, 7, 32, seed=8)
    got = fast_scores(head, sentence, frames, mask)
    want = reference_scores(head, sentence, frames, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_training_mode_dropout_matches_reference_under_the_same_seed():
    """The dropout mask falls on the W_l branch, laid out [Bv, Bt, D] in both computations; with
    the same generator state both draw the same mask."""
    head = perturbed_head(32, 2, seed=3, dropout=0.3).train()
    sentence = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    frames, mask = random_frames(4, 6, 32, seed=2)
    text, video = head.text_state(text_features(sentence)), head.video_state(frames, mask)
    torch.manual_seed(123)
    got = head.score(text, video)
    torch.manual_seed(123)
    want = reference_scores(head, sentence, frames, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.manual_seed(124)
    assert not torch.allclose(head.score(text, video), want, atol=1e-3)  # dropout is active


def test_gradients_equal_reference_gradients():
    head = perturbed_head(32, 2, seed=5, dropout=0.0).train()
    sentence = torch.randn(6, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    frames, mask = random_frames(6, 5, 32, seed=2)
    frames.requires_grad_(True)

    def grads(scores):
        head.zero_grad()
        sentence.grad = frames.grad = None
        symmetric_infonce(10.0 * scores).backward()
        out = {n: p.grad.clone() for n, p in head.named_parameters()}
        out["sentence"], out["frames"] = sentence.grad.clone(), frames.grad.clone()
        return out

    got = grads(fast_scores(head, sentence, frames, mask))
    want = grads(reference_scores(head, sentence, frames, mask))
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)


def test_reference_reads_only_the_raw_embeddings():
    """The reference starts from the raw sentence and frames the states carry, not from anything
    the fast path folded (dropping the folded entries changes nothing)."""
    head = perturbed_head(32, 2, seed=9).eval()
    sentence = 5.0 * torch.randn(4, 32, generator=torch.Generator().manual_seed(1))
    frames, mask = random_frames(6, 5, 32, seed=2)
    text, video = head.text_state(text_features(sentence)), head.video_state(frames, mask)
    torch.testing.assert_close(text["sentence_emb"], sentence, rtol=0, atol=0)
    assert (video["frame_emb"][~mask] == 0).all()
    raw_text = {"sentence_emb": text["sentence_emb"]}
    raw_video = {k: video[k] for k in ("frame_emb", "frame_mask")}
    with torch.no_grad():
        torch.testing.assert_close(
            head.reference_score(raw_text, raw_video),
            head.score(text, video),
            rtol=0,
            atol=1e-5,
        )


def test_non_finite_padding_does_not_change_any_score():
    """Finite padding is the head contract (test_head_contract.py); X-Pool also zeroes
    non-finite padded content before its folded per-frame products."""
    head = perturbed_head(32, 2, seed=13).eval()
    sentence = torch.randn(5, 32, generator=torch.Generator().manual_seed(1))
    frames, mask = random_frames(6, 4, 32, seed=2)
    base = fast_scores(head, sentence, frames, mask)
    junk = 100.0 * torch.randn(6, 3, 32)
    junk[1, 2, 5] = float("inf")
    junk[2, 0, 0] = float("nan")
    padded = torch.cat([frames, junk], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(6, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(
        fast_scores(head, sentence, padded, padded_mask), base, rtol=0, atol=1e-6
    )


# ----------------------------------------------------------------------------- cost model


def test_pair_flops_bound_the_counted_work_and_the_reference_costs_d_squared():
    d, n, b = 64, 8, 32
    head = perturbed_head(d, 1, seed=17).eval()
    sentence = torch.randn(b, d)
    frames, mask = random_frames(b, n, d, seed=3)
    text, video = head.text_state(text_features(sentence)), head.video_state(frames, mask)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.score(text, video)
    fast_per_pair = counter.get_total_flops() / 2 / (b * b)  # multiply-adds
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.reference_score(text, video)
    # The reference also projects texts (q) and frames (k, v) per item, not per pair.
    per_item = d * d * b + 2 * d * d * b * n
    reference_total = counter.get_total_flops() / 2 - per_item
    reference_per_pair = reference_total / (b * b)
    # Matrix products only (the counter skips element-wise work): logits, pooling, cosine dot.
    assert 3 * n * d <= fast_per_pair <= head.pair_flops(16, n, d)
    assert 2 * d * d <= reference_per_pair <= head.reference_pair_flops(16, n, d)


# ------------------------------------------------------------------------ head training


def test_every_head_parameter_gets_a_gradient_and_loss_decreases():
    torch.manual_seed(0)
    d = 32
    head = XPoolHead(d, num_heads=2, dropout=0.3).train()
    sentence = torch.randn(8, d)
    frames, mask = random_frames(8, 6, d, seed=4)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for step in range(20):
        opt.zero_grad()
        text, video = head.text_state(text_features(sentence)), head.video_state(frames, mask)
        loss = symmetric_infonce(20.0 * head.score(text, video))
        loss.backward()
        if step == 0:
            missing = [n for n, p in head.named_parameters() if p.grad is None]
            assert not missing
            assert all(p.grad.abs().sum() > 0 for p in head.parameters())
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


# ----------------------------------------------------------------------------- the module


def test_xpool_module_builds_head_and_trains_under_lightning():
    from functools import partial

    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    head = partial(XPoolHead, num_heads=2, dropout=0.1)
    module = RetrievalModule(head=head, clip="tiny", lr=1e-3)
    assert module.head.dim == module.backbone.embed_dim and module.head.num_heads == 2
    g = torch.Generator().manual_seed(0)
    b, n = 3, 3
    ids = torch.randint(4, 51, (b, 6), generator=g)
    ids[:, 0], ids[:, -1] = 2, 3
    frame_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones(b, 6, dtype=torch.long),
        "frames": torch.randn(b, n, 3, 32, 32, generator=g) * frame_mask[..., None, None, None],
        "frame_mask": frame_mask,
        "index": torch.arange(b),
        "bucket": torch.zeros(b, dtype=torch.long),
    }
    module.zero_grad()
    symmetric_infonce(module(batch)).backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    before = module.head.q_proj.weight.detach().clone()
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, module.head.q_proj.weight.detach())
