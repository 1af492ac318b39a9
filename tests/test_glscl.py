"""GLSCL head: GIM, SLIM concepts, losses by hand, masking, fast vs plain scoring, training."""

from __future__ import annotations

import math
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.flop_counter import FlopCounterMode

from baselines.glscl import (
    GLSCLHead,
    decoder_heads_for,
    inter_diversity_loss,
    intra_consistency_loss,
)
from tvrbench.backbone import TextFeatures
from tvrbench.retrieval import RetrievalModule, symmetric_infonce

ROOT = Path(__file__).resolve().parents[1]
D, MAX_FRAMES, Q = 32, 9, 4


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: intra-op threads cost more than they save (on a loaded machine,
    ten times more), so the tests run on one and restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_head(mask_padding: bool = True, seed: int = 0, perturb: bool = True, **kwargs):
    """A small head in eval mode; ``perturb`` moves every parameter off its initialisation (the
    temporal encoder's zero projections included) so that every weight matters."""
    torch.manual_seed(seed)
    args = dict(
        max_frames=MAX_FRAMES,
        temporal_layers=2,
        num_queries=Q,
        decoder_layers=2,
        ffn_dim=48,
        mask_padding=mask_padding,
    )
    args.update(kwargs)
    head = GLSCLHead(D, **args)
    if perturb:
        with torch.no_grad():
            for p in head.parameters():
                p.add_(0.1 * torch.randn_like(p))
    return head.eval()


def make_inputs(bt=3, bv=4, length=6, n=7, seed=1):
    """Random text features and frames with padded words and frames (random content)."""
    g = torch.Generator().manual_seed(seed)
    word_mask = torch.ones(bt, length, dtype=torch.bool)
    word_mask[0, 4:] = False
    if bt > 1:
        word_mask[1, 2:] = False
    frame_mask = torch.ones(bv, n, dtype=torch.bool)
    frame_mask[0, 2:] = False
    if bv > 3:
        frame_mask[2, 5:] = False
        frame_mask[3, 1:] = False
    text = TextFeatures(
        sentence=2 * torch.randn(bt, D, generator=g),
        words=2 * torch.randn(bt, length, D, generator=g),
        word_mask=word_mask,
    )
    frames = 2 * torch.randn(bv, n, D, generator=g)
    return text, frames, frame_mask


def states(head, text, frames, frame_mask):
    return head.text_state(text), head.video_state(frames, frame_mask)


# ------------------------------------------------------------------------- construction


def test_decoder_heads_and_identical_layers():
    assert [decoder_heads_for(d) for d in (512, 64, 12, 20, 7)] == [8, 8, 6, 5, 7]
    head = make_head(perturb=False, ffn_dim=64)
    layers = list(head.decoder.layers)
    assert len(layers) == 2 and layers[0].multihead_attn.num_heads == 8
    assert layers[0].linear1.out_features == 64 and not layers[0].norm_first
    first = layers[0].state_dict()
    for layer in layers[1:]:
        for name, value in layer.state_dict().items():
            assert torch.equal(value, first[name]), name
    # U[0, 1) queries.
    assert head.queries.shape == (Q, D)
    queries = head.queries.detach()
    assert 0.0 <= float(queries.min()) and float(queries.max()) < 1.0


# --------------------------------------------------------------------------------- SLIM


def _attention(attn, query, memory, ignore):
    """nn.MultiheadAttention's math written out: ``[B, Q, D]``, ``[B, M, D]`` → ``[B, Q, D]``."""
    d, heads = query.shape[-1], attn.num_heads
    hd = d // heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    q = query @ w[:d].t() + b[:d]
    k = memory @ w[d : 2 * d].t() + b[d : 2 * d]
    v = memory @ w[2 * d :].t() + b[2 * d :]

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, hd).transpose(1, 2)  # (B, H, ., hd)

    logits = split(q) @ split(k).transpose(-1, -2) / math.sqrt(hd)  # (B, H, Q, M)
    if ignore is not None:
        logits = logits.masked_fill(ignore[:, None, None, :], float("-inf"))
    out = (logits.softmax(-1) @ split(v)).transpose(1, 2).reshape(query.shape)  # (B, Q, D)
    return out @ attn.out_proj.weight.t() + attn.out_proj.bias


def explicit_concepts(head, memory, real):
    """Post-LN decoder blocks from the head's own weights, then row normalisation."""
    x = head.queries.expand(memory.shape[0], -1, -1)
    ignore = ~real if head.mask_padding else None
    for layer in head.decoder.layers:

        def ln(y, norm):
            return F.layer_norm(y, (D,), norm.weight, norm.bias, norm.eps)

        x = ln(x + _attention(layer.self_attn, x, x, None), layer.norm1)
        x = ln(x + _attention(layer.multihead_attn, x, memory, ignore), layer.norm2)
        ffn = torch.relu(x @ layer.linear1.weight.t() + layer.linear1.bias)
        x = ln(x + ffn @ layer.linear2.weight.t() + layer.linear2.bias, layer.norm3)
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_concepts_equal_explicit_decoder(mask_padding):
    head = make_head(mask_padding)
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        t_state, v_state = states(head, text, frames, frame_mask)
        want_t = explicit_concepts(head, text.words, text.word_mask)
        want_v = explicit_concepts(head, head.temporal(frames, frame_mask), frame_mask)
    assert t_state["concepts"].shape == (3, Q, D) and v_state["concepts"].shape == (4, Q, D)
    torch.testing.assert_close(t_state["concepts"], want_t, rtol=0, atol=1e-5)
    torch.testing.assert_close(v_state["concepts"], want_v, rtol=0, atol=1e-5)
    norms = v_state["concepts"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_local_score_is_mean_of_concept_dots():
    head = make_head()
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        t_state, v_state = states(head, text, frames, frame_mask)
        got = head.local_score(t_state, v_state)
    c_t, c_v = t_state["concepts"].double().numpy(), v_state["concepts"].double().numpy()
    want = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            want[i, j] = sum(float(c_t[i, q] @ c_v[j, q]) for q in range(Q)) / Q
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)


# ---------------------------------------------------------------------------------- GIM


def test_gim_matches_numpy_and_ignores_padded_frames():
    head = make_head()
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        t_state, v_state = states(head, text, frames, frame_mask)
        got = head.global_score(t_state, v_state)
    t = t_state["sentence"].double().numpy()
    v, m = v_state["frames"].double().numpy(), v_state["frame_mask"].numpy()
    want = np.zeros((3, 4))
    for i in range(3):
        for j in range(4):
            real = v[j][m[j]]  # (n_real, D)
            logits = real @ t[i] / 3.0
            a = np.exp(logits - logits.max())
            a /= a.sum()
            pooled = a @ real
            want[i, j] = pooled @ t[i] / (np.linalg.norm(pooled) * np.linalg.norm(t[i]))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)

    # τ → ∞: ṽ is the mean of the real frames; a padded frame matching t best changes nothing.
    flat = make_head(tau=1e9, use_temporal=False)
    frames2 = frames.clone()
    frames2[0, 3] = 50 * text.sentence[0]  # padded frame of video 0
    with torch.no_grad():
        t_state, v_state = states(flat, text, frames2, frame_mask)
        got = flat.global_score(t_state, v_state)
    mean = (frames * frame_mask[..., None]).sum(1) / frame_mask.sum(1, keepdim=True)
    want_mean = F.normalize(text.sentence, dim=-1) @ F.normalize(mean, dim=-1).t()
    torch.testing.assert_close(got, want_mean, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ scoring


@pytest.mark.parametrize("mask_padding", [True, False])
def test_score_is_global_plus_lambda_local(mask_padding):
    """S = S_g + λ·S_l (fast against reference scoring: test_head_contract.py)."""
    head = make_head(mask_padding)
    text, frames, frame_mask = make_inputs(bt=5, bv=6)
    with torch.no_grad():
        t_state, v_state = states(head, text, frames, frame_mask)
        fast = head.score(t_state, v_state)
        s_g, s_l = head.global_score(t_state, v_state), head.local_score(t_state, v_state)
    torch.testing.assert_close(fast, s_g + 0.5 * s_l, rtol=0, atol=1e-6)
    assert s_l.abs().max() > 1e-3  # both parts really contribute


def _pad(text: TextFeatures, frames, frame_mask, extra=2, seed=5):
    """Append padded words and frames and re-randomise every padded position's content."""
    g = torch.Generator().manual_seed(seed)
    bt, length, _ = text.words.shape
    bv, n, _ = frames.shape
    words = torch.cat([text.words, torch.zeros(bt, extra, D)], 1)
    word_mask = torch.cat([text.word_mask, torch.zeros(bt, extra, dtype=torch.bool)], 1)
    words = torch.where(word_mask[..., None], words, 5 * torch.randn(words.shape, generator=g))
    frames2 = torch.cat([frames, torch.zeros(bv, extra, D)], 1)
    mask2 = torch.cat([frame_mask, torch.zeros(bv, extra, dtype=torch.bool)], 1)
    frames2 = torch.where(mask2[..., None], frames2, 5 * torch.randn(frames2.shape, generator=g))
    return TextFeatures(text.sentence, words, word_mask), frames2, mask2


@pytest.mark.parametrize("mask_padding", [True, False])
def test_padding_changes_nothing_when_masked(mask_padding):
    head = make_head(mask_padding)
    text, frames, frame_mask = make_inputs(n=6)
    with torch.no_grad():
        before = states(head, text, frames, frame_mask)
        after = states(head, *_pad(text, frames, frame_mask))
        s_before, s_after = head.score(*before), head.score(*after)
        g_before, g_after = head.global_score(*before), head.global_score(*after)
    concept_diff = max(
        (before[k]["concepts"] - after[k]["concepts"]).abs().max().item() for k in (0, 1)
    )
    assert (g_before - g_after).abs().max() <= 1e-5  # GIM is masked in both modes
    if mask_padding:  # the scores: test_head_contract.py
        assert concept_diff <= 1e-5
    else:  # reference behaviour: SLIM attends to the padded positions
        assert concept_diff > 1e-3
        assert (s_before - s_after).abs().max() > 1e-4


def test_eval_is_deterministic_and_training_uses_dropout():
    head = make_head()
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        first = states(head, text, frames, frame_mask)
        second = states(head, text, frames, frame_mask)
        for a, b in zip(first, second):
            for key in a:
                assert torch.equal(a[key], b[key]), key
        head.train()
        torch.manual_seed(1)
        dropped = head.video_state(frames, frame_mask)["concepts"]
    assert (dropped - first[1]["concepts"]).abs().max() > 1e-3


def test_score_is_float32_under_bf16_autocast():
    head = make_head()
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t_state, v_state = states(head, text, frames, frame_mask)
            inside = head.score(t_state, v_state)
            reference = head.reference_score(t_state, v_state)
        outside = head.score(t_state, v_state)
    for state in (t_state, v_state):
        for key, value in state.items():
            assert value.dtype in (torch.float32, torch.bool), key
    assert inside.dtype == reference.dtype == torch.float32
    assert torch.equal(inside, outside)
    assert (inside - reference).abs().max() <= 1e-5


# ------------------------------------------------------------------------------- losses


def test_losses_on_hand_built_concepts():
    # Every concept of every item the same unit vector e1: G_pq = 1 → hinge 0.1 off the diagonal;
    # identical text and video concepts → MSE 0; K_qq = (1/Q) Σ_b 1 = B/Q = 1 (B = Q = 2), so the
    # diagonal term is β · 2 · 0.25².
    same = torch.zeros(2, 2, 3)
    same[..., 0] = 1.0
    assert inter_diversity_loss(same).item() == pytest.approx(0.1, abs=1e-7)
    icl = intra_consistency_loss(same, same, beta=0.005)
    assert icl.item() == pytest.approx(0.005 * 2 * 0.0625, abs=1e-8)
    # Orthogonal concepts (G_pq = 0 off the diagonal): no diversity penalty.
    ortho = torch.eye(3)[None].repeat(4, 1, 1)  # (B, Q, D)
    assert inter_diversity_loss(ortho).item() == 0.0
    # Text concepts opposite to the video ones (B = 4, Q = D = 3): the batch means are I and −I,
    # squared difference 4 on 3 of the 9 entries → MSE 4/3; K_qq = (1/3) · 4 · (−1) = −4/3.
    icl = intra_consistency_loss(ortho, -ortho, beta=0.005)
    assert icl.item() == pytest.approx(4 / 3 + 0.005 * 3 * (-4 / 3 - 0.75) ** 2, abs=1e-6)


def test_losses_match_loops_from_the_formulas():
    g = torch.Generator().manual_seed(3)
    c_v = F.normalize(0.5 * torch.randn(5, 3, 4, generator=g) + 1.0, dim=-1)  # (B, Q, D), similar
    c_t = F.normalize(torch.randn(5, 3, 4, generator=g), dim=-1)
    v, t = c_v.double().numpy(), c_t.double().numpy()
    b, q, _ = v.shape
    gram = sum(v[i] @ v[i].T for i in range(b)) / b  # (Q, Q)
    hinge = [max(0.0, gram[p, r] - 0.9) for p in range(q) for r in range(q) if p != r]
    want_idl = float(np.mean(hinge))
    k = sum(v[i] @ t[i].T for i in range(b)) / q
    want_icl = float(np.mean((v.mean(0) - t.mean(0)) ** 2))
    want_icl += 0.005 * sum((k[p, p] - 0.75) ** 2 for p in range(q))
    assert want_idl > 0  # the correlated concepts exceed the margin somewhere
    assert inter_diversity_loss(c_v).item() == pytest.approx(want_idl, abs=1e-6)
    assert intra_consistency_loss(c_v, c_t).item() == pytest.approx(want_icl, abs=1e-6)

    head = make_head(idl_weight=1e-4, icl_weight=1.0, icl_beta=0.005)
    got = head.extra_loss({"concepts": c_t}, {"concepts": c_v})
    assert got.item() == pytest.approx(2e-4 * want_idl + want_icl, abs=1e-6)
    assert make_head(idl_weight=0.0, icl_weight=0.0).extra_loss({}, {}) is None
    with pytest.raises(ValueError, match="matched pairs"):
        head.extra_loss({"concepts": c_t}, {"concepts": c_v[:4]})


# --------------------------------------------------------------------------------- cost


def test_pair_flops_counts_the_matmuls_and_spec_figures():
    head = make_head()
    text, frames, frame_mask = make_inputs(bt=1, bv=1, n=5)
    with torch.no_grad():
        t_state, v_state = states(head, text, frames, torch.ones_like(frame_mask))
        with FlopCounterMode(display=False) as counter:
            head.score(t_state, v_state)
    matmul_macs = counter.get_total_flops() // 2
    elementwise = 2 * 5 + 3  # a·x, (G a)·a, three scalar products
    assert head.pair_flops(6, 5, D) == matmul_macs + elementwise
    published = GLSCLHead(512, num_queries=8)
    assert published.pair_flops(64, 64, 512) == 64 * 512 + 64**2 + 2 * 64 + 8 * 512 + 3
    assert published.reference_pair_flops(64, 64, 512) == 2 * 64 * 512 + 8 * 512 + 2 * 512
    assert 70e3 < published.reference_pair_flops(64, 64, 512) < 72e3  # SPEC: ≈ 71 K
    assert 0.185e9 < published.concept_flops(64) < 0.195e9  # SPEC: ≈ 0.19 G per item


def test_concept_flops_match_flop_counter():
    head = make_head()
    memory, real = torch.randn(1, 7, D), torch.ones(1, 7, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter:  # grad on: no fused attention fast path
        head.concepts(memory, real)
    # The counter sees the projections and the FFN; CPU scaled-dot-product attention (the scores
    # and weighted sums, 2·Q²·D + 2·Q·M·D per layer) is invisible to it.
    attention = 2 * (2 * Q * Q * D + 2 * Q * 7 * D)
    assert head.concept_flops(7) == counter.get_total_flops() // 2 + attention


def test_pair_bytes_grows_with_frames():
    head = make_head()
    small, large = make_inputs(n=3), make_inputs(n=8)
    b_small = head.pair_bytes(*states(head, *small))
    b_large = head.pair_bytes(*states(head, *large))
    assert b_large >= 4 * 4 * 8 and b_small < b_large  # at least logits, softmax, G a, a·x


def test_too_many_frames_is_a_clear_error():
    head = make_head()
    _, frames, frame_mask = make_inputs(n=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="max_frames"):
        head.video_state(frames, frame_mask)


# ----------------------------------------------------------------------------- training


def _loss(head, text, frames, frame_mask, scale=20.0):
    t_state, v_state = states(head, text, frames, frame_mask)
    loss = symmetric_infonce(scale * head.score(t_state, v_state))
    return loss + head.extra_loss(t_state, v_state)


def test_every_parameter_gets_a_gradient():
    head = make_head(perturb=False, dropout=0.0).train()
    text, frames, frame_mask = make_inputs(bt=4, bv=4)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    # The temporal encoder's zero-initialised projections block the rest of each block's
    # gradient on the first step only: take one step, then require a gradient everywhere.
    for _ in range(2):
        opt.zero_grad()
        _loss(head, text, frames, frame_mask).backward()
        opt.step()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def fake_batch(b: int = 6, frames: int = 4, words: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.zeros(b, words, dtype=torch.long)
    for i in range(b):
        attention_mask[i, : 5 + i] = 1
    frame_mask = torch.arange(frames)[None] < torch.tensor([4, 3, 2, 1, 4, 3])[:b, None]
    pixels = torch.randn(b, frames, 3, 32, 32, generator=g)  # (B, N, 3, H, W)
    return {
        "input_ids": torch.randint(4, 20, (b, words), generator=g) * attention_mask,
        "attention_mask": attention_mask,
        "frames": pixels * frame_mask[..., None, None, None],
        "frame_mask": frame_mask,
        "index": torch.arange(b),
        "bucket": torch.zeros(b, dtype=torch.long),
    }


def tiny_module(**head_args) -> RetrievalModule:
    """The shared module on the tiny CLIP with a GLSCL head (small sizes, ``head_args`` on top)."""
    torch.manual_seed(0)
    args = dict(max_frames=4, temporal_layers=1, ffn_dim=256, temporal_init="identity")
    args.update(head_args)
    return RetrievalModule(head=partial(GLSCLHead, **args), clip="tiny")


def test_training_steps_lower_the_loss_on_tiny_clip():
    module = tiny_module(dropout=0.0).train()
    assert module.init_notes == ["temporal encoder: identity initialisation"]
    assert module.head.decoder.layers[0].multihead_attn.num_heads == 8
    batch = fake_batch()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        for step in range(12):
            opt.zero_grad()
            loss = module.training_step(batch, step)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.7 * losses[0], losses

    module.eval()  # evaluation states are deterministic
    with torch.no_grad():
        first, second = module(batch), module(batch)
    assert torch.equal(first, second) and first.dtype == torch.float32


def test_module_fit_logs_the_extra_loss():
    import lightning as L
    from torch.utils.data import DataLoader

    module = tiny_module()
    batch = fake_batch()
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = module.head.queries.detach().clone()
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/extra_loss" in trainer.callback_metrics
    assert not torch.equal(before, module.head.queries.detach())


# ------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", ["glscl.yaml", "glscl_published.yaml"])
def test_method_configs_parse(name):
    from jsonargparse import ActionConfigFile, ArgumentParser

    path = ROOT / "configs" / "method" / name
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(RetrievalModule, "model")
    parser.add_argument("--trainer", type=dict, default={})
    parser.add_argument("--data", type=dict, default={})
    cfg = parser.parse_args(["--config", str(path)])
    args, head = cfg.model.init_args, cfg.model.init_args.head.init_args
    assert cfg.model.class_path == "tvrbench.retrieval.RetrievalModule"
    assert cfg.model.init_args.head.class_path == "baselines.glscl.GLSCLHead"
    assert (head.num_queries, head.decoder_layers, head.tau) == (8, 3, 3.0)
    assert (head.idl_weight, head.icl_beta, head.local_weight) == (1e-4, 0.005, 0.5)
    # The frame positions are the data config's (placed when composed), not the method file's.
    raw_head = yaml.safe_load(path.read_text())["model"]["init_args"]["head"]
    assert "max_frames" not in raw_head["init_args"]
    if name == "glscl_published.yaml":
        assert (args.lr, args.backbone_lr, head.ffn_dim) == (1e-4, 1e-7, 2048)
        assert head.temporal_init == "clip_text"
        assert cfg.trainer == {"max_epochs": 5}
        assert cfg.data == {"init_args": {"batch_size": 32}}
    else:
        assert (args.lr, args.backbone_lr) == (1e-3, 3e-4)
        assert head.temporal_init == "identity"


def test_published_sections_reach_the_bench():
    from tvrbench.bench.config import load_recipe
    from tvrbench.methods import load_method

    recipe = load_recipe("published", ROOT / "configs" / "recipe")
    mfile = load_method("glscl", ROOT / "configs" / "method", recipe.method_file)
    assert mfile.trainer == {"max_epochs": 5}
    assert mfile.data == {"batch_size": 32}
