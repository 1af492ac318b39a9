"""GLCCL head: efficient scoring against the plain reference, masking, pooling, CSC, training."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tvrbench.backbone import TextFeatures
from tvrbench.glccl import (
    GLCCLHead,
    TemporalEncoder,
    csc_loss,
    glccl_reference_scores,
    glim_pool,
)
from tvrbench.retrieval import symmetric_infonce

D, MAX_WORDS, MAX_FRAMES = 32, 10, 9


def make_head(mask_padding: bool = True, seed: int = 0, **kwargs) -> GLCCLHead:
    """A head whose identity-initialised matrices and zero-initialised projections have been
    perturbed, so that every parameter matters in the comparison."""
    torch.manual_seed(seed)
    head = GLCCLHead(
        D,
        max_words=MAX_WORDS,
        max_frames=MAX_FRAMES,
        temporal_layers=2,
        mask_padding=mask_padding,
        **kwargs,
    )
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return head


def make_inputs(bt=3, bv=4, length=8, n=7, seed=1):
    """Random text features and frames with padded words and frames (random content)."""
    g = torch.Generator().manual_seed(seed)
    word_mask = torch.ones(bt, length, dtype=torch.bool)
    word_mask[0, 5:] = False
    word_mask[1, 3:] = False
    frame_mask = torch.ones(bv, n, dtype=torch.bool)
    frame_mask[0, 2:] = False
    frame_mask[2, 5:] = False
    frame_mask[3, 1:] = False
    text = TextFeatures(
        sentence=3 * torch.randn(bt, D, generator=g),
        words=3 * torch.randn(bt, length, D, generator=g),
        word_mask=word_mask,
    )
    frames = 3 * torch.randn(bv, n, D, generator=g)
    return text, frames, frame_mask


# ------------------------------------------------------------- independent NumPy reference


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def _aosm(x: np.ndarray, weight: np.ndarray, temperature: float) -> float:
    """``Σ_i x_i [softmax(x/temperature) W]_i`` with ``[pW]_i = Σ_k p_k W_ki``."""
    p = _softmax(x / temperature)
    return float(sum(x[i] * sum(p[k] * weight[k, i] for k in range(len(x))) for i in range(len(x))))


def numpy_glccl_components(
    weights: dict[str, np.ndarray],
    sentence: np.ndarray,
    words: np.ndarray,
    word_mask: np.ndarray,
    frames: np.ndarray,
    frame_mask: np.ndarray,
    tau: float,
    mask_padding: bool,
    temperature: float = 0.01,
) -> np.ndarray:
    """GLCCL's four scores ``[4, Bt, Bv]`` (float64), one pair at a time, from SPEC §2.4:
    GLIM ``softmax_j(q·v_j/τ)`` on raw dot products, pooled features L2-normalised, every L×L
    pooling ``Σ_i x_i [softmax(x/0.01) W]_i``. With ``mask_padding`` only the real words and real
    frames exist (the matrices restricted to the real word positions); without, every position
    of the text tensor and every frame slot takes part."""
    bt, length, _ = words.shape
    bv, n, _ = frames.shape
    out = np.zeros((4, bt, bv))
    for a in range(bt):
        idx = [i for i in range(length) if word_mask[a, i] or not mask_padding]
        t_hat = _unit(sentence[a])
        w_hat = [_unit(words[a, i]) for i in idx]

        def sub(name: str, idx: list[int] = idx) -> np.ndarray:
            return weights[name][np.ix_(idx, idx)]

        for b in range(bv):
            v = [frames[b, j] for j in range(n) if frame_mask[b, j] or not mask_padding]

            def glim(query: np.ndarray, v: list[np.ndarray] = v) -> np.ndarray:
                attn = _softmax(np.array([query @ f_j for f_j in v]) / tau)
                return _unit(sum(attn[j] * v[j] for j in range(len(v))))

            video = glim(sentence[a])  # ṽ̂
            pooled = [glim(words[a, i]) for i in idx]  # f̃̂_i, one per word
            s_vs = (t_hat @ weights["global_weight"]) @ video
            u = np.array([w_i @ video for w_i in w_hat])
            s_vw = _aosm(u, sub("video_word_weight"), temperature)
            r = np.array([t_hat @ f_i for f_i in pooled])
            s_sf = _aosm(r, sub("sentence_frame_weight"), temperature)
            m = np.array(
                [[(w_i @ weights["local_weight"]) @ f_k for f_k in pooled] for w_i in w_hat]
            )  # (words i, frames k)
            c = np.array(  # per frame k, over words i
                [_aosm(m[:, k], sub("fw_word_weight"), temperature) for k in range(len(idx))]
            )
            d = np.array(  # per word i, over frames k
                [_aosm(m[i, :], sub("fw_frame_weight"), temperature) for i in range(len(idx))]
            )
            s_fw = 0.5 * (
                _aosm(c, sub("fw_frame_weight2"), temperature)
                + _aosm(d, sub("fw_word_weight2"), temperature)
            )
            out[:, a, b] = s_vs, s_vw, s_sf, s_fw
    return out


def numpy_csc(components: np.ndarray) -> float:
    """``mean_i V_ii / (Σ_{i≠j} V_ij / B²)``, V the unbiased variance over the components."""
    c, bsz, _ = components.shape
    mean = components.sum(0) / c
    var = ((components - mean) ** 2).sum(0) / (c - 1)  # (B, B)
    diagonal = sum(var[i, i] for i in range(bsz)) / bsz
    off_diagonal = sum(var[i, j] for i in range(bsz) for j in range(bsz) if i != j) / bsz**2
    return diagonal / off_diagonal


WEIGHT_NAMES = (
    "global_weight",
    "local_weight",
    "video_word_weight",
    "sentence_frame_weight",
    "fw_word_weight",
    "fw_frame_weight",
    "fw_frame_weight2",
    "fw_word_weight2",
)


def random_matrix_head(mask_padding: bool, seed: int = 0, **kwargs) -> GLCCLHead:
    """A head whose eight scoring matrices are far from the identity (random, not symmetric),
    so a transposed or swapped matrix changes the scores."""
    head = make_head(mask_padding, seed=seed, **kwargs)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name in WEIGHT_NAMES:
            weight = getattr(head, name)
            noise = torch.randn(weight.shape, generator=g)  # (D, D) rows of norm ~1, or (L, L)
            scale = D**-0.5 if name in ("global_weight", "local_weight") else 1.0
            weight.copy_(torch.eye(len(weight)) + scale * noise)
    return head


def numpy_scores_of(head: GLCCLHead, t_state, v_state) -> np.ndarray:
    """The NumPy reference on the raw state entries and the head's parameters."""

    def f64(x: torch.Tensor) -> np.ndarray:
        return x.detach().double().numpy()

    return numpy_glccl_components(
        {name: f64(getattr(head, name)) for name in WEIGHT_NAMES},
        f64(t_state["sentence"]),
        f64(t_state["words"]),
        t_state["word_mask"].numpy(),
        f64(v_state["frames"]),
        v_state["frame_mask"].numpy(),
        tau=head.tau,
        mask_padding=head.mask_padding,
    )


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize(("length", "n"), [(3, 2), (8, 7), (MAX_WORDS, MAX_FRAMES)])
def test_scores_match_numpy_reference(mask_padding, length, n):
    head = random_matrix_head(mask_padding)
    text, frames, frame_mask = make_inputs(length=length, n=n)
    t_state, v_state = head.text_state(text), head.video_state(frames, frame_mask)
    expected = numpy_scores_of(head, t_state, v_state)  # (4, Bt, Bv) float64
    assert np.abs(expected[0] - expected[3]).max() > 1e-3  # four different quantities
    # float32, as scored in practice: the 0.01 softmaxes magnify rounding, so relative to scale.
    atol = 2e-5 * max(1.0, float(np.abs(expected).max()))
    with torch.no_grad():
        components = head.score_components(t_state, v_state).double().numpy()
        plain = glccl_reference_scores(head, t_state, v_state).double().numpy()
        score = head.score(t_state, v_state).double().numpy()
        reference = head.reference_score(t_state, v_state).double().numpy()
    assert components.shape == plain.shape == expected.shape == (4, 3, 4)
    for c in range(4):
        np.testing.assert_allclose(components[c], expected[c], atol=atol, rtol=0)
        np.testing.assert_allclose(plain[c], expected[c], atol=atol, rtol=0)
    np.testing.assert_allclose(score, expected.mean(0), atol=atol, rtol=0)
    np.testing.assert_allclose(reference, expected.mean(0), atol=atol, rtol=0)
    # float64 end to end (the efficient scorer keeps its inputs' precision): near-exact.
    head64 = head.double()
    text64 = TextFeatures(text.sentence.double(), text.words.double(), text.word_mask)
    t64, v64 = head64.text_state(text64), head64.video_state(frames.double(), frame_mask)
    with torch.no_grad():
        components64 = head64.score_components(t64, v64).numpy()
    np.testing.assert_allclose(components64, numpy_scores_of(head64, t64, v64), atol=1e-9, rtol=0)


@pytest.mark.parametrize("mask_padding", [True, False])
def test_csc_loss_matches_numpy(mask_padding):
    head = random_matrix_head(mask_padding, csc_weight=0.3)
    text, frames, frame_mask = make_inputs(bt=4, bv=4, length=6, n=5, seed=7)
    t_state, v_state = head.text_state(text), head.video_state(frames, frame_mask)
    expected = numpy_scores_of(head, t_state, v_state)  # (4, B, B)
    with torch.no_grad():
        components = head.score_components(t_state, v_state)
        loss = head.extra_loss(t_state, v_state)
    assert csc_loss(components.double()).item() == pytest.approx(
        numpy_csc(components.double().numpy()), rel=1e-9
    )
    assert loss.item() == pytest.approx(0.3 * numpy_csc(expected), rel=1e-4)


def test_glim_pool_limits():
    torch.manual_seed(0)
    frames = torch.randn(3, 5, D)
    frame_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]).bool()
    query = torch.randn(2, D)
    # A padded frame that matches the query best must still be ignored.
    frames[0, 3] = 10 * query[0]

    flat = glim_pool(query, frames, frame_mask, tau=1e9)  # (2, 3, 5)
    mean_weights = frame_mask.float() / frame_mask.sum(1, keepdim=True)
    assert torch.allclose(flat, mean_weights.expand(2, 3, 5), atol=1e-6)
    pooled = torch.einsum("qbn,bnd->qbd", flat, frames)
    masked_mean = (frames * frame_mask[..., None]).sum(1) / frame_mask.sum(1)[:, None]
    assert torch.allclose(pooled, masked_mean.expand(2, 3, D), atol=1e-5)

    sharp = glim_pool(query, frames, frame_mask, tau=1e-4)
    for q in range(2):
        for b in range(3):
            dots = [
                float(query[q] @ frames[b, j]) if frame_mask[b, j] else -float("inf")
                for j in range(5)
            ]
            best = max(range(5), key=dots.__getitem__)
            expected = torch.zeros(5)
            expected[best] = 1.0
            assert torch.allclose(sharp[q, b], expected, atol=1e-6)

    # Without a mask the padded best-matching frame wins.
    unmasked = glim_pool(query, frames, None, tau=1e-4)
    assert unmasked[0, 0, 3] > 0.999


def constructed_components():
    """Four 2×2 score matrices whose element-wise values across the components are
    (0,0) → 0,0,0,4; (0,1) → 0,2,0,2; (1,0) → 0,6,0,6; (1,1) → 1,2,3,4."""
    c = torch.zeros(4, 2, 2)
    c[:, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 4.0])
    c[:, 0, 1] = torch.tensor([0.0, 2.0, 0.0, 2.0])
    c[:, 1, 0] = torch.tensor([0.0, 6.0, 0.0, 6.0])
    c[:, 1, 1] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    return c


def test_csc_loss_by_hand():
    # Unbiased variances (sum of squared deviations / 3):
    #   V00: mean 1,   deviations -1,-1,-1,3          → 12/3 = 4
    #   V01: mean 1,   deviations -1,1,-1,1           → 4/3
    #   V10: mean 3,   deviations -3,3,-3,3           → 36/3 = 12
    #   V11: mean 2.5, deviations -1.5,-.5,.5,1.5     → 5/3
    # numerator   = (4 + 5/3) / 2         = 17/6
    # denominator = (4/3 + 12) / 4 (B² = 4 entries, diagonal zeroed) = 10/3
    # loss = (17/6) / (10/3) = 0.85
    components = constructed_components()
    assert csc_loss(components).item() == pytest.approx(0.85, abs=1e-6)

    head = make_head(csc_weight=0.5)
    head.score_components = lambda text, video: components  # type: ignore[method-assign]
    assert head.extra_loss({}, {}).item() == pytest.approx(0.425, abs=1e-6)
    assert make_head(csc_weight=0.0).extra_loss({}, {}) is None


def _pad(text: TextFeatures, frames, frame_mask, extra_words=2, extra_frames=2, seed=5):
    """Append padded words and frames with random content and re-randomise existing padding."""
    g = torch.Generator().manual_seed(seed)
    bt, length, _ = text.words.shape
    bv, n, _ = frames.shape
    words = torch.cat([text.words, torch.zeros(bt, extra_words, D)], 1)
    word_mask = torch.cat([text.word_mask, torch.zeros(bt, extra_words, dtype=torch.bool)], 1)
    words = torch.where(word_mask[..., None], words, 5 * torch.randn(words.shape, generator=g))
    frames2 = torch.cat([frames, torch.zeros(bv, extra_frames, D)], 1)
    mask2 = torch.cat([frame_mask, torch.zeros(bv, extra_frames, dtype=torch.bool)], 1)
    frames2 = torch.where(mask2[..., None], frames2, 5 * torch.randn(frames2.shape, generator=g))
    return TextFeatures(text.sentence, words, word_mask), frames2, mask2


def test_reference_mode_padding_takes_part_in_every_component():
    """Masked padding changes nothing (test_head_contract.py); the reference behaviour lets
    padding into GLIM and the word poolings, so all four components move."""
    head = make_head(mask_padding=False)
    text, frames, frame_mask = make_inputs(length=7, n=6)
    padded = _pad(text, frames, frame_mask, extra_words=3, extra_frames=3)
    with torch.no_grad():
        before = head.score_components(head.text_state(text), head.video_state(frames, frame_mask))
        after = head.score_components(head.text_state(padded[0]), head.video_state(*padded[1:]))
    diff = (before - after).abs().amax(dim=(1, 2))  # per component
    assert (diff > 1e-3).all()


def test_temporal_encoder_starts_as_identity_and_masks_keys():
    torch.manual_seed(0)
    enc = TemporalEncoder(64, layers=2, max_frames=8)
    assert enc.transformer.layers[0].self_attn.num_heads == 1
    f = torch.randn(2, 5, 64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    assert torch.allclose(enc(f, mask), 2 * f + enc.position.weight[:5], atol=1e-5)
    assert TemporalEncoder(512, layers=1).transformer.layers[0].self_attn.num_heads == 8

    with torch.no_grad():
        for p in enc.parameters():
            p.add_(0.1 * torch.randn_like(p))
    g = f.clone()
    g[0, 3:] = 100 * torch.randn(2, 64)  # padded frames of video 0
    out_f, out_g = enc(f, mask), enc(g, mask)
    assert torch.allclose(out_f[0, :3], out_g[0, :3], atol=1e-5)
    assert (enc(f, torch.ones_like(mask))[0, :3] - out_f[0, :3]).abs().max() > 1e-3


def _loss(head, text, frames, frame_mask, scale=20.0):
    t_state, v_state = head.text_state(text), head.video_state(frames, frame_mask)
    loss = symmetric_infonce(scale * head.score(t_state, v_state))
    return loss + head.extra_loss(t_state, v_state)


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    head = GLCCLHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, temporal_layers=2)
    text, frames, frame_mask = make_inputs(bt=4, bv=4)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    # Zero-initialised residual projections block the gradient of the rest of each block on the
    # very first step only: take one step, then require a non-zero gradient everywhere.
    for _ in range(2):
        opt.zero_grad()
        _loss(head, text, frames, frame_mask).backward()
        for name, p in head.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
        opt.step()
    for name, p in head.named_parameters():
        assert p.grad.abs().max() > 0, name


def test_loss_decreases_on_fixed_batch():
    torch.manual_seed(0)
    head = GLCCLHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, temporal_layers=2)
    text, frames, frame_mask = make_inputs(bt=6, bv=6, seed=3)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = _loss(head, text, frames, frame_mask)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.8 * losses[0], losses


def test_training_step_scores_once():
    head = make_head()
    text, frames, frame_mask = make_inputs(bt=4, bv=4)
    t_state, v_state = head.text_state(text), head.video_state(frames, frame_mask)
    calls = []
    inner = head._components
    head._components = lambda t, v: calls.append(1) or inner(t, v)  # type: ignore[method-assign]
    head.score(t_state, v_state)
    reused = head.extra_loss(t_state, v_state)
    assert len(calls) == 1
    fresh = head.extra_loss(t_state, v_state)  # nothing cached any more: recomputed
    assert len(calls) == 2
    assert torch.allclose(reused, fresh)
    with torch.no_grad():  # evaluation never keeps components
        head.score(t_state, v_state)
        head.extra_loss(t_state, v_state)
    assert len(calls) == 4


def test_pair_flops_counts_every_matmul():
    length, n = 6, 5
    head = make_head()
    g = torch.Generator().manual_seed(0)
    text = TextFeatures(
        torch.randn(1, D, generator=g),
        torch.randn(1, length, D, generator=g),
        torch.ones(1, length, dtype=torch.bool),
    )
    t_state = head.text_state(text)
    frames = torch.randn(1, n, D, generator=g)
    v_state = head.video_state(frames, torch.ones(1, n, dtype=torch.bool))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.score(t_state, v_state)
    matmul_macs = counter.get_total_flops() // 2
    # Element-wise multiply-adds the counter does not see: Gram row dots (L+1)·N, S_vs N,
    # pooled sums of S_vw and S_sf 2L, first S_fw poolings 2L², second ones 2L.
    elementwise = (length + 1) * n + n + 2 * length + 2 * length**2 + 2 * length
    assert GLCCLHead.pair_flops(length, n, D) == matmul_macs + elementwise
    # SPEC's order of magnitude at L = N = 64, D = 512: below the reference's ≈12.6 M.
    assert 4e6 < GLCCLHead.pair_flops(64, 64, 512) < 12.6e6


def test_pair_bytes_grows_with_sizes():
    head = make_head()
    small = make_inputs(length=4, n=3)
    large = make_inputs(length=8, n=7)
    b_small = head.pair_bytes(head.text_state(small[0]), head.video_state(*small[1:]))
    b_large = head.pair_bytes(head.text_state(large[0]), head.video_state(*large[1:]))
    # At least the GEMM output and the L×L frame-word matrix, in float32.
    assert b_large >= 4 * ((2 * 8 + 2) * 7 + 8 * 8)
    assert b_small < b_large


def test_too_many_frames_or_words_is_a_clear_error():
    head = make_head()
    text, frames, frame_mask = make_inputs(length=MAX_WORDS + 1, n=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="max_frames"):
        head.video_state(frames, torch.ones_like(frame_mask))
    with pytest.raises(ValueError, match="max_words"):
        head.text_state(text)


def test_module_forward_on_fake_batch():
    pytest.importorskip("tvrbench.data.synth")
    from functools import partial

    from tvrbench.retrieval import RetrievalModule

    torch.manual_seed(0)
    head = partial(GLCCLHead, max_words=32, max_frames=4, temporal_layers=1)
    module = RetrievalModule(head=head, clip="tiny")
    b = 3
    input_ids = torch.randint(4, 20, (b, 32))
    attention_mask = torch.zeros(b, 32, dtype=torch.long)
    attention_mask[:, :6] = 1
    attention_mask[0, :10] = 1
    frame_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).bool()
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "frames": torch.randn(b, 4, 3, 32, 32),
        "frame_mask": frame_mask,
        "index": torch.arange(b),
        "bucket": torch.zeros(b, dtype=torch.long),
    }
    logits = module(batch)
    assert logits.shape == (b, b) and torch.isfinite(logits).all()

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
    before = module.head.global_weight.detach().clone()
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert "train/extra_loss" in trainer.callback_metrics
    assert not torch.equal(before, module.head.global_weight.detach())


@pytest.mark.parametrize("name", ["glccl.yaml", "glccl_published.yaml"])
def test_method_configs_parse(name):
    from pathlib import Path

    from jsonargparse import ActionConfigFile, ArgumentParser

    from tvrbench.retrieval import RetrievalModule

    path = Path(__file__).resolve().parents[1] / "configs" / "method" / name
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(RetrievalModule, "model")
    cfg = parser.parse_args(["--config", str(path)])
    assert cfg.model.class_path == "tvrbench.retrieval.RetrievalModule"
    assert cfg.model.init_args.head.class_path == "tvrbench.glccl.GLCCLHead"
    assert cfg.model.init_args.head.init_args.csc_weight == 0.5
    # The L×L matrices and frame positions are the data config's (placed when composed).
    raw_head = _method_config(path.stem)["model"]["init_args"]["head"]["init_args"]
    assert not {"max_words", "max_frames"} & set(raw_head)


# ------------------------------------------------------------------- ablation and recipe configs

ABLATIONS = {
    "glccl_no_csc": ("csc_weight", 0.0),
    "glccl_no_temporal": ("use_temporal", False),
    "glccl_reference_mask": ("mask_padding", False),
}


def _method_config(name: str) -> dict:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "method" / f"{name}.yaml"
    return yaml.safe_load(path.read_text())


def _flat(section: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``."""
    out = {}
    for key, value in section.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
@pytest.mark.parametrize("recipe", ["", "_published"])
def test_ablation_configs_change_exactly_one_value(ablation, recipe):
    """Each ablation is a full config equal to its base (glccl.yaml / glccl_published.yaml) but
    for one value of the head: no new code path."""
    base, config = _method_config(f"glccl{recipe}"), _method_config(f"{ablation}{recipe}")
    key, value = ABLATIONS[ablation]
    flat, base_flat = _flat(config), _flat(base)
    changed = {k for k in flat.keys() | base_flat.keys() if flat.get(k) != base_flat.get(k)}
    assert changed == {f"model.init_args.head.init_args.{key}"}
    assert flat[f"model.init_args.head.init_args.{key}"] == value
    assert set(config) == set(base) == {"model"}


def test_glccl_configs_name_their_temporal_initialisation():
    import yaml

    for name in ("glccl", *ABLATIONS):
        head = _method_config(name)["model"]["init_args"]["head"]["init_args"]
        assert head["temporal_init"] == "identity"
        published = _method_config(f"{name}_published")
        assert published["model"]["init_args"]["head"]["init_args"]["temporal_init"] == "clip_text"
        # positions from CLIP's 77 text positions: the data's max_frames (the method's or the
        # shared DiDeMo data config's) must fit
        data = yaml.safe_load(
            (Path(__file__).resolve().parents[1] / "configs/data/didemo.yaml").read_text()
        )["data"]["init_args"]
        data.update(published.get("data", {}).get("init_args", {}))
        assert data["max_frames"] <= 77


@pytest.mark.parametrize(
    ("method", "source"),
    [
        ("meanp", "ArrowLuo/CLIP4Clip"),
        ("xpool", "layer6ai-labs/xpool"),
        ("centerclip", "mzhaoshuai/CenterCLIP"),
        ("glccl", "JingXiaolun/GLCCL"),
        *[(name, "JingXiaolun/GLCCL") for name in ABLATIONS],
    ],
)
def test_published_configs_cite_their_source_and_hold_only_recipe_sections(method, source):
    """A published config: the model section, and optionally trainer and data sections (data
    only as init_args, so it overrides the composed data config) where the paper differs."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "method" / f"{method}_published.yaml"
    comments = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    assert source in comments
    config = _method_config(f"{method}_published")
    assert set(config) <= {"model", "trainer", "data"}
    assert set(config["model"]) == {"class_path", "init_args"}
    assert config["model"]["init_args"]["clip"] == "openai/clip-vit-base-patch32"
    if "data" in config:
        assert set(config["data"]) == {"init_args"}
    spec = {  # SPEC §2.7
        "meanp": ({"max_epochs": 5}, {"batch_size": 128}, (1e-4, 1e-7, 1e-6)),
        "xpool": ({"max_epochs": 5}, {"max_frames": 12, "batch_size": 32}, (1e-5, 1e-6, 1e-6)),
        "centerclip": ({"max_epochs": 8}, {"max_frames": 64, "max_words": 77}, (1e-2, 1e-5, 1e-6)),
    }.get(method, ({}, {}, (1e-4, 1e-7, 1e-6)))
    trainer, data, (lr, backbone_lr, eps) = spec
    assert config.get("trainer", {}) == trainer
    assert config.get("data", {}).get("init_args", {}) == data
    args = config["model"]["init_args"]
    assert (args["lr"], args["backbone_lr"], args["eps"], args["weight_decay"]) == (
        lr, backbone_lr, eps, 0.2,
    )  # fmt: skip


def test_shared_layers_docstring_examples():
    import doctest

    import tvrbench.layers

    assert doctest.testmod(tvrbench.layers).failed == 0
