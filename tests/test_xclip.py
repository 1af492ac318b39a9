"""X-CLIP head: fast scorer against a NumPy loop reference, masking, chunking, cost, training."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

from baselines.xclip import (
    XCLIPCheckpointError,
    XCLIPHead,
    xclip_reference_scores,
)
from tvrbench.backbone import TextFeatures
from tvrbench.retrieval import RetrievalModule, symmetric_infonce

D, MAX_WORDS, MAX_FRAMES, TAU = 32, 10, 9, 0.01


def make_head(mask_padding: bool = True, seed: int = 0, **kwargs) -> XCLIPHead:
    """A head whose every matrix (identity at init) and temporal parameter is perturbed with
    seeded noise, so that each W matters in the comparison."""
    torch.manual_seed(seed)
    head = XCLIPHead(
        D,
        max_words=MAX_WORDS,
        max_frames=MAX_FRAMES,
        temporal_layers=2,
        mask_padding=mask_padding,
        **kwargs,
    )
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return head


def make_inputs(bt=3, bv=4, length=8, n=7, seed=1):
    """Random text features and frames with padded words and frames (random content there)."""
    g = torch.Generator().manual_seed(seed)
    word_mask = torch.ones(bt, length, dtype=torch.bool)
    word_mask[0, 5:] = False
    if bt > 1:
        word_mask[1, 3:] = False
    frame_mask = torch.ones(bv, n, dtype=torch.bool)
    frame_mask[0, 2:] = False
    if bv > 3:
        frame_mask[2, 5:] = False
        frame_mask[3, 1:] = False
    text = TextFeatures(
        sentence=3 * torch.randn(bt, D, generator=g),
        words=3 * torch.randn(bt, length, D, generator=g),
        word_mask=word_mask,
    )
    frames = 3 * torch.randn(bv, n, D, generator=g)
    return text, frames, frame_mask


def states(head: XCLIPHead, text: TextFeatures, frames, frame_mask):
    return head.text_state(text), head.video_state(frames, frame_mask)


def xclip_module(**head_args) -> RetrievalModule:
    """The shared module on the tiny CLIP with an X-CLIP head built with ``head_args``."""
    return RetrievalModule(head=partial(XCLIPHead, **head_args), clip="tiny")


# ---------------------------------------------------------------------- NumPy reference


def np_unit(x: np.ndarray) -> np.ndarray:
    """L2 normalisation along the last axis (a zero vector stays zero, as F.normalize)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def np_aosm(x: np.ndarray, weight: np.ndarray, real: np.ndarray) -> float:
    """Σ_k x_k [softmax(x/τ) W]_k over the real positions k, [aW]_k = Σ_m a_m W_mk."""
    idx = np.flatnonzero(real)
    logits = x[idx] / TAU
    a = np.exp(logits - logits.max())
    a /= a.sum()
    total = 0.0
    for k in idx:
        mixed = sum(a[p] * weight[m, k] for p, m in enumerate(idx))
        total += x[k] * mixed
    return float(total)


def numpy_scores(head: XCLIPHead, text: TextFeatures, frames, frame_mask) -> np.ndarray:
    """``[4, Bt, Bv]`` S_vs, S_vw, S_sf, S_fw from SPEC §2.5, one pair and one index at a time,
    in float64, starting from the raw features (v_j from the head's temporal encoder)."""
    with torch.no_grad():
        v = head.temporal(frames, frame_mask) if head.temporal is not None else frames
    t = text.sentence.double().numpy()
    w = text.words.double().numpy()
    f, v = frames.double().numpy(), v.double().numpy()
    wm, fm = text.word_mask.numpy(), frame_mask.numpy()
    weights = {n: p.detach().double().numpy() for n, p in head.named_parameters()}
    bt, length, _ = w.shape
    bv, n, _ = f.shape
    out = np.zeros((4, bt, bv))
    for a in range(bt):
        t_hat, w_hat = np_unit(t[a]), np_unit(w[a])  # (D,), (L, D)
        real_w = wm[a] if head.mask_padding else np.ones(length, dtype=bool)
        for b in range(bv):
            real_f = fm[b] if head.mask_padding else np.ones(n, dtype=bool)
            f_hat = np_unit(f[b])  # (N, D): the ORIGINAL CLIP frames
            v_hat = np_unit(v[b])  # (N, D)
            mean = sum(v_hat[j] for j in range(n) if fm[b, j]) / fm[b].sum()  # always masked
            v_bar = np_unit(mean)
            s_vs = t_hat @ weights["global_weight"] @ v_bar
            u = np.array([w_hat[i] @ v_bar for i in range(length)])
            s_vw = np_aosm(u, weights["video_word_weight"], real_w)
            r = np.array([t_hat @ f_hat[j] for j in range(n)])
            s_sf = np_aosm(r, weights["sentence_frame_weight"], real_f)
            m = np.array(
                [
                    [(w_hat[i] @ weights["local_weight"]) @ f_hat[j] for j in range(n)]
                    for i in range(length)
                ]
            )  # (L, N)
            c = np.array([np_aosm(m[:, j], weights["fw_word_weight"], real_w) for j in range(n)])
            d = np.array(
                [np_aosm(m[i, :], weights["fw_frame_weight"], real_f) for i in range(length)]
            )
            s_fw = 0.5 * (
                np_aosm(c, weights["fw_frame_weight2"], real_f)
                + np_aosm(d, weights["fw_word_weight2"], real_w)
            )
            out[:, a, b] = [s_vs, s_vw, s_sf, s_fw]
    return out


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize(("length", "n"), [(8, 7), (MAX_WORDS, MAX_FRAMES)])
def test_each_score_matches_numpy_loops(mask_padding, length, n):
    head = make_head(mask_padding)
    text, frames, frame_mask = make_inputs(length=length, n=n)
    t_state, v_state = states(head, text, frames, frame_mask)
    with torch.no_grad():
        fast = head.score_components(t_state, v_state).double().numpy()
        plain = xclip_reference_scores(head, t_state, v_state).double().numpy()
        score = head.score(t_state, v_state).double().numpy()
    want = numpy_scores(head, text, frames, frame_mask)
    assert fast.shape == plain.shape == (4, 3, 4)
    for c, name in enumerate(["S_vs", "S_vw", "S_sf", "S_fw"]):
        np.testing.assert_allclose(fast[c], want[c], atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_allclose(plain[c], want[c], atol=1e-5, rtol=0, err_msg=name)
    np.testing.assert_allclose(score, want.mean(0), atol=1e-5, rtol=0)
    # The components are genuinely different quantities.
    assert np.abs(fast[0] - fast[3]).max() > 1e-3


def test_video_vector_is_normalised_masked_mean_of_normalised_temporal_frames():
    head = make_head()
    _, frames, frame_mask = make_inputs()
    with torch.no_grad():
        v = head.temporal(frames, frame_mask).double().numpy()
        got = head.video_state(frames, frame_mask)["video_vector"].double().numpy()
    fm = frame_mask.numpy()
    for b in range(frames.shape[0]):
        want = np_unit(np_unit(v[b])[fm[b]].mean(0))
        np.testing.assert_allclose(got[b], want, atol=1e-6)


def test_identity_init_global_score_is_the_cosine():
    """At init W_g = I, so S_vs = cos(t, v̄); with one real word and one real frame every AOSM
    reduces to its single similarity (softmax weight 1, W_kk = 1)."""
    torch.manual_seed(0)
    head = XCLIPHead(D, max_words=4, max_frames=3, temporal_layers=1, use_temporal=False)
    text, frames, frame_mask = make_inputs(bt=2, bv=2, length=4, n=3)
    text.word_mask[:] = False
    text.word_mask[:, 0] = True
    frame_mask[:] = False
    frame_mask[:, 0] = True
    with torch.no_grad():
        comps = head.score_components(*states(head, text, frames, frame_mask))
    t = torch.nn.functional.normalize(text.sentence, dim=-1)
    w0 = torch.nn.functional.normalize(text.words[:, 0], dim=-1)
    f0 = torch.nn.functional.normalize(frames[:, 0], dim=-1)  # v̄ = f̂_0 without temporal
    assert torch.allclose(comps[0], t @ f0.t(), atol=1e-6)
    assert torch.allclose(comps[1], w0 @ f0.t(), atol=1e-6)
    assert torch.allclose(comps[2], t @ f0.t(), atol=1e-6)
    assert torch.allclose(comps[3], w0 @ f0.t(), atol=1e-6)


def test_parameter_count():
    head = XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, use_temporal=False)
    n_params = sum(p.numel() for p in head.parameters())
    assert n_params == 2 * D**2 + 3 * MAX_WORDS**2 + 3 * MAX_FRAMES**2
    for p in head.parameters():
        assert torch.equal(p, torch.eye(p.shape[0]))


# ------------------------------------------------------------------------------ padding


def _pad(text: TextFeatures, frames, frame_mask, extra_words=2, extra_frames=2, seed=5):
    """Append padded words and frames and re-randomise the content of every padded position."""
    g = torch.Generator().manual_seed(seed)
    bt, _, _ = text.words.shape
    bv, _, _ = frames.shape
    words = torch.cat([text.words, torch.zeros(bt, extra_words, D)], 1)
    word_mask = torch.cat([text.word_mask, torch.zeros(bt, extra_words, dtype=torch.bool)], 1)
    words = torch.where(word_mask[..., None], words, 5 * torch.randn(words.shape, generator=g))
    frames2 = torch.cat([frames, torch.zeros(bv, extra_frames, D)], 1)
    mask2 = torch.cat([frame_mask, torch.zeros(bv, extra_frames, dtype=torch.bool)], 1)
    frames2 = torch.where(mask2[..., None], frames2, 5 * torch.randn(frames2.shape, generator=g))
    return TextFeatures(text.sentence, words, word_mask), frames2, mask2


def test_reference_mode_padding_joins_every_aosm():
    """Masked padding changes nothing (test_head_contract.py). The reference AOSM lets padded
    words/frames join S_vw, S_sf and S_fw; S_vs uses only t̂ and v̄, whose mean is masked in
    both modes."""
    head = make_head(mask_padding=False)
    text, frames, frame_mask = make_inputs(length=7, n=6)
    padded = _pad(text, frames, frame_mask, extra_words=3, extra_frames=3)
    with torch.no_grad():
        before = head.score_components(*states(head, text, frames, frame_mask))
        after = head.score_components(*states(head, *padded))
    diff = (before - after).abs().amax(dim=(1, 2))  # per component
    assert diff[0] <= 1e-5
    assert (diff[1:] > 1e-3).all(), diff


def test_zero_padded_frames_are_finite_in_reference_mode():
    """The backbone returns zeros for padded frames: their cosines are 0, never NaN."""
    head = make_head(mask_padding=False)
    text, frames, frame_mask = make_inputs()
    frames = frames * frame_mask[..., None]
    with torch.no_grad():
        assert torch.isfinite(head.score(*states(head, text, frames, frame_mask))).all()


# ------------------------------------------------------------------------ chunking, cost


class AllocatedBytes(TorchDispatchMode):
    """Sums the bytes of every new storage an op returns, keeping each alive (so none is
    freed and reused): the working set as if nothing were freed."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        self.seen = {t.untyped_storage().data_ptr() for t in known}
        self.kept: list[torch.Tensor] = []
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in self.seen:
                self.seen.add(t.untyped_storage().data_ptr())
                self.kept.append(t)
                self.total += t.untyped_storage().nbytes()
        return out


@pytest.mark.parametrize("mask_padding", [True, False])
@pytest.mark.parametrize(("bt", "bv", "length", "n"), [(1, 1, 8, 7), (4, 5, 10, 9), (2, 3, 3, 1)])
def test_pair_bytes_bounds_every_allocation(mask_padding, bt, bv, length, n):
    head = make_head(mask_padding)
    text, frames, frame_mask = make_inputs(bt=bt, bv=bv, length=length, n=n)
    t_state, v_state = states(head, text, frames, frame_mask)
    known = [*t_state.values(), *v_state.values(), *head.parameters()]
    with AllocatedBytes(known) as counter:
        head.score(t_state, v_state)  # with autograd on: the training working set
    per_pair = counter.total / (bt * bv)
    bound = head.pair_bytes(t_state, v_state)
    assert per_pair <= bound
    assert bound <= 2 * per_pair  # a bound, not a guess far above


def test_pair_flops_counts_every_multiply_add():
    length, n = 6, 5
    head = make_head()
    text, frames, frame_mask = make_inputs(bt=1, bv=1, length=length, n=n)
    text.word_mask[:] = True
    t_state, v_state = states(head, text, frames, torch.ones(1, n, dtype=torch.bool))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.score(t_state, v_state)
    matmul_macs = counter.get_total_flops() // 2
    # Element-wise Σ x·mixed the counter does not see: S_vw L, S_sf N, c and d 2·L·N, last L + N.
    elementwise = 2 * (length + n) + 2 * length * n
    assert XCLIPHead.pair_flops(length, n, D) == matmul_macs + elementwise
    # SPEC §2.5: ≈ 2.70 M at L = N = 64, D = 512 (0.24 M at 32/12).
    assert XCLIPHead.reference_pair_flops(64, 64, 512) == 2_703_872
    assert abs(XCLIPHead.reference_pair_flops(32, 12, 512) - 0.24e6) < 0.01e6
    assert abs(XCLIPHead.pair_flops(64, 64, 512) / 2_703_872 - 1) < 0.01


def test_too_many_frames_or_words_is_a_clear_error():
    head = make_head()
    text, frames, frame_mask = make_inputs(length=MAX_WORDS + 1, n=MAX_FRAMES + 1)
    with pytest.raises(ValueError, match="max_frames"):
        head.video_state(frames, torch.ones_like(frame_mask))
    with pytest.raises(ValueError, match="max_words"):
        head.text_state(text)
    no_temporal = XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, use_temporal=False)
    with pytest.raises(ValueError, match="max_frames"):
        no_temporal.video_state(frames, torch.ones_like(frame_mask))


def test_bf16_autocast_scores_in_float32():
    head = make_head()
    text, frames, frame_mask = make_inputs()
    with torch.no_grad():
        fp32 = head.score(*states(head, text, frames, frame_mask))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            t_state, v_state = states(head, text, frames.bfloat16(), frame_mask)
            mixed = head.score(t_state, v_state)
    assert mixed.dtype == torch.float32
    assert {v.dtype for v in (*t_state.values(), *v_state.values())} == {
        torch.float32,
        torch.bool,
    }
    assert (mixed - fp32).abs().max() < 0.1  # bf16 only in the temporal encoder's input


# ------------------------------------------------------------------------- checkpoints


def test_head_checkpoint_of_other_sizes_is_a_one_line_error():
    saved = XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, temporal_layers=1)
    other = XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES + 2, temporal_layers=1)
    with pytest.raises(XCLIPCheckpointError) as err:
        other.load_state_dict(saved.state_dict())
    message = str(err.value)
    assert "\n" not in message
    assert f"max_frames={MAX_FRAMES}" in message and f"max_frames={MAX_FRAMES + 2}" in message
    assert f"({MAX_FRAMES}, {MAX_FRAMES})" in message  # found
    assert f"({MAX_FRAMES + 2}, {MAX_FRAMES + 2})" in message  # expected
    # Same sizes: loads.
    XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, temporal_layers=1).load_state_dict(
        saved.state_dict()
    )


def test_module_checkpoint_of_other_sizes_is_a_one_line_error(tmp_path: Path):
    saved = xclip_module(max_words=32, max_frames=6, temporal_layers=1, temporal_init="identity")
    path = tmp_path / "xclip.pt"
    torch.save(saved.state_dict(), path)
    other = xclip_module(max_words=16, max_frames=6, temporal_layers=1, temporal_init="identity")
    with pytest.raises(XCLIPCheckpointError, match="max_words=32.*max_words=16") as err:
        other.load_state_dict(torch.load(path, weights_only=True))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- training


def fake_batch(b: int = 4, words: int = 32, frames: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.zeros(b, words, dtype=torch.long)
    for i in range(b):
        attention_mask[i, : 4 + 2 * i] = 1
    frame_mask = torch.arange(frames)[None] < torch.tensor([frames, 2, 1, 3, 2][:b])[:, None]
    pixels = torch.randn(b, frames, 3, 32, 32, generator=g)  # (B, N, 3, H, W)
    return {
        "input_ids": torch.randint(4, 20, (b, words), generator=g),
        "attention_mask": attention_mask,
        "frames": pixels * frame_mask[..., None, None, None],  # padding zero
        "frame_mask": frame_mask,
        "index": torch.arange(b),
        "bucket": torch.zeros(b, dtype=torch.long),
    }


def test_every_head_parameter_gets_a_gradient():
    head = XCLIPHead(D, max_words=MAX_WORDS, max_frames=MAX_FRAMES, temporal_layers=1)
    text, frames, frame_mask = make_inputs(bt=4, bv=4)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    # The temporal encoder's zero-initialised residual projections block the rest of each block
    # on the very first step only.
    for _ in range(2):
        opt.zero_grad()
        logits = 20.0 * head.score(*states(head, text, frames, frame_mask))
        symmetric_infonce(logits).backward()
        opt.step()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


@pytest.mark.filterwarnings(r"ignore:You are trying to `self.log\(\)`")
def test_training_steps_on_tiny_clip_lower_the_loss():
    torch.manual_seed(0)
    module = xclip_module(max_words=32, max_frames=4, temporal_layers=1, temporal_init="identity")
    assert module.init_notes == ["temporal encoder: identity initialisation"]
    batch = fake_batch()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    losses = []
    for step in range(8):
        opt.zero_grad()
        loss = module.training_step(batch, step)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses


def test_fit_and_test_through_lightning():
    import lightning as L
    from torch.utils.data import DataLoader

    torch.manual_seed(0)
    module = xclip_module(max_words=32, max_frames=4, temporal_layers=1, temporal_init="identity")
    batch = fake_batch()
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = module.head.video_word_weight.detach().clone()
    trainer.fit(module, DataLoader([batch, batch], batch_size=None))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not torch.equal(before, module.head.video_word_weight.detach())
    (metrics,) = trainer.test(module, DataLoader([batch], batch_size=None), verbose=False)
    assert metrics["test/n_queries"] == 4


def test_without_temporal_encoder_notes_it():
    module = xclip_module(max_words=32, max_frames=4, use_temporal=False)
    assert module.head.temporal is None
    assert module.init_notes == ["temporal encoder: off (use_temporal=False)"]


def test_clip_text_initialisation_when_available():
    try:
        module = xclip_module(max_words=32, max_frames=4, temporal_layers=1)
    except NotImplementedError:
        pytest.skip("tvrbench.temporal: clip_text initialisation not implemented yet")
    assert len(module.init_notes) == 1 and "clip_text" in module.init_notes[0]


# ----------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name", ["xclip.yaml", "xclip_published.yaml"])
def test_method_configs_parse(name):
    from jsonargparse import ActionConfigFile, ArgumentParser

    path = Path(__file__).resolve().parents[1] / "configs" / "method" / name
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_subclass_arguments(RetrievalModule, "model")
    cfg = parser.parse_args(["--config", str(path)])
    assert cfg.model.class_path == "tvrbench.retrieval.RetrievalModule"
    assert cfg.model.init_args.head.class_path == "baselines.xclip.XCLIPHead"
    args, head = cfg.model.init_args, cfg.model.init_args.head.init_args
    # The tables' sizes are the data config's (placed when composed), not the method file's.
    assert not {"max_words", "max_frames"} & set(
        yaml.safe_load(path.read_text())["model"]["init_args"]["head"]["init_args"]
    )
    if name == "xclip.yaml":
        assert (args.clip, head.temporal_init) == ("tiny", "identity")
    else:
        assert args.clip == "openai/clip-vit-base-patch32"
        assert (args.lr, args.backbone_lr, head.temporal_init) == (1e-4, 1e-7, "clip_text")


# -------------------------------------------------------------------------------- DDP


@pytest.mark.slow
def test_two_process_test_metrics_equal_one_process():
    """As tests/test_ddp.py for meanP: two gloo ranks (ddp_spawn) gather every X-CLIP state
    (per-word and per-frame tensors included) and give exactly the metrics of one process."""
    import lightning as L
    from torch.utils.data import DataLoader

    def run(devices: int) -> dict[str, float]:
        L.seed_everything(0)
        module = xclip_module(
            max_words=32, max_frames=4, temporal_layers=1, temporal_init="identity"
        )
        # 5 samples on 2 ranks: the distributed sampler repeats one, the evaluation drops it.
        samples = [{k: v[i] for k, v in fake_batch(b=5).items()} for i in range(5)]
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        (metrics,) = trainer.test(module, DataLoader(samples, batch_size=2), verbose=False)
        return metrics

    single, double = run(1), run(2)
    assert double["test/n_queries"] == single["test/n_queries"] == 5
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
