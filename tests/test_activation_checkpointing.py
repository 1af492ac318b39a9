"""Activation checkpointing: same loss and gradients as without (tiny CLIP, fp32), really
recomputed (CLIP layers, CenterCLIP's own ViT path, temporal blocks), ``auto`` resolution and the
step-memory estimate against a hand computation, and the peak-memory meter against known sizes."""

from __future__ import annotations

import warnings
from functools import partial
from types import SimpleNamespace

import pytest
import torch

from baselines.centerclip import CenterCLIPModule
from baselines.xclip import XCLIPHead
from tvrbench.memory import (
    MEASURED_ACTIVATIONS,
    MIB,
    estimate_step_memory,
    parse_activation_checkpointing,
    peak_bytes,
    resolve_activation_checkpointing,
)
from tvrbench.retrieval import RetrievalModule
from tvrbench.temporal import TemporalBlock


def tiny_batch(batch: int = 3, frames: int = 4, words: int = 8, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    frame_mask = torch.arange(frames)[None] < torch.tensor([frames, frames - 1, 2])[:batch, None]
    input_ids = torch.randint(4, 40, (batch, words), generator=gen)
    input_ids[:, -1] = 3  # end of text
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones(batch, words, dtype=torch.long),
        "frames": torch.randn(batch, frames, 3, 32, 32, generator=gen)  # (B, N, 3, H, W)
        * frame_mask[:, :, None, None, None],
        "frame_mask": frame_mask,
        "index": torch.arange(batch),
        "bucket": torch.zeros(batch, dtype=torch.long),
    }


def loss_and_grads(module, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    module.train()
    module.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*self.log.*")
        loss = module.training_step(batch, 0)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


def count_calls(modules: list[torch.nn.Module]) -> list[int]:
    """Forward calls of each module (a checkpointed one runs again in the backward pass)."""
    calls = [0]
    for m in modules:
        m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.mark.parametrize(
    "build",
    [
        lambda: RetrievalModule(head=partial(XCLIPHead, max_frames=4, max_words=8), clip="tiny"),
        lambda: CenterCLIPModule(clip="tiny", num_segments=2, num_clusters=3, start_block=2),
    ],
    ids=["xclip", "centerclip"],
)
def test_same_loss_and_gradients(build) -> None:
    torch.manual_seed(0)
    module = build().float()
    batch = tiny_batch()
    base_loss, base_grads = loss_and_grads(module, batch)
    # The first sub-module of each layer: a recomputation (which stops once it has rebuilt what
    # the backward pass needs) always runs it again.
    mlps = [layer.layer_norm1 for layer in module.backbone.clip.vision_model.encoder.layers]
    mlps += [layer.layer_norm1 for layer in module.backbone.clip.text_model.encoder.layers]
    blocks = [m.norm1 for m in module.modules() if isinstance(m, TemporalBlock)]
    clip_calls, block_calls = count_calls(mlps), count_calls(blocks)
    loss_and_grads(module, batch)
    plain = clip_calls[0], block_calls[0]

    module.set_activation_checkpointing(True)
    assert module.backbone.activation_checkpointing
    clip_calls[0] = block_calls[0] = 0
    loss, grads = loss_and_grads(module, batch)
    # Every checkpointed layer ran twice: forward, then again in the backward pass.
    assert clip_calls[0] == 2 * plain[0] > 0
    assert block_calls[0] == 2 * plain[1]
    assert loss == pytest.approx(base_loss, abs=1e-5)
    assert grads.keys() == base_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, base_grads[name], atol=1e-5, rtol=1e-5, msg=name)

    module.set_activation_checkpointing(False)
    assert not module.backbone.activation_checkpointing
    clip_calls[0] = 0
    loss_and_grads(module, batch)
    assert clip_calls[0] == plain[0]


def test_setting_parsed_and_bad_value_named() -> None:
    assert parse_activation_checkpointing("auto") == "auto"
    assert parse_activation_checkpointing(True) is True
    assert parse_activation_checkpointing("false") is False
    with pytest.raises(ValueError, match="activation_checkpointing: 'sometimes'"):
        parse_activation_checkpointing("sometimes")
    with pytest.raises(ValueError, match="activation_checkpointing"):
        RetrievalModule(head=XCLIPHead, clip="tiny", activation_checkpointing="maybe")


def test_auto_resolution() -> None:
    def estimate():
        return SimpleNamespace(total_bytes=10 * 1024**3)

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not resolve_activation_checkpointing("auto", cpu, estimate).enabled
    assert resolve_activation_checkpointing(True, cpu, estimate).enabled
    on = resolve_activation_checkpointing("auto", cuda, estimate, free_bytes=9 * 1024**3)
    off = resolve_activation_checkpointing("auto", cuda, estimate, free_bytes=11 * 1024**3)
    assert on.enabled and "10.0 GiB" in on.reason and not off.enabled


def test_estimate_by_hand() -> None:
    """The tiny CLIP (17 tokens of width 64 in 2 layers per frame; 8 tokens of width 64 in 2
    layers per text) scales the ViT-B/32 figures by its size relative to ViT-B/32's."""
    config = RetrievalModule(head=XCLIPHead, clip="tiny").backbone.clip.config
    fig = MEASURED_ACTIVATIONS[("bf16", False)]
    frame_scale = (17 * 64 * 2) / (50 * 768 * 12)
    text_scale = (8 * 64 * 2) / (64 * 512 * 12)
    expected_mib = 5 * (6 * fig.per_frame_mib * frame_scale + fig.per_text_mib * text_scale)
    est = estimate_step_memory(config, 5, 6, 8, "bf16-mixed", False, 1000)
    assert est.activation_bytes == pytest.approx(expected_mib * MIB, abs=1)
    assert est.parameter_bytes == 16_000
    frozen = estimate_step_memory(config, 5, 6, 8, "32-true", False, 10, towers_trained=False)
    assert frozen.total_bytes == 160
    assert fig.per_frame_mib > MEASURED_ACTIVATIONS[("bf16", True)].per_frame_mib > 0


def test_apply_resolves_from_the_trainer() -> None:
    module = RetrievalModule(
        head=partial(XCLIPHead, max_frames=4, max_words=8),
        clip="tiny",
        activation_checkpointing=True,
    )
    module.trainer = SimpleNamespace(  # type: ignore[assignment]
        datamodule=SimpleNamespace(
            batch_size=4, max_words=8, sampling=SimpleNamespace(max_frames=4)
        ),
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="32-true",
    )
    assert module.activation_checkpointing_used is None
    module.setup("fit")
    assert module.activation_checkpointing_used is True
    assert module.backbone.activation_checkpointing
    assert all(m.checkpoint_blocks for m in module.modules() if hasattr(m, "checkpoint_blocks"))


def test_peak_meter_known_sizes() -> None:
    """Two live 1 MiB buffers at the peak, one freed before a third is made: 2 MiB."""
    n = MIB // 4  # float32 elements of 1 MiB

    def fn() -> None:
        a = torch.ones(n)
        b = a + 1
        del a
        c = b * 2
        del b, c

    assert peak_bytes(fn, torch.device("cpu")).peak_bytes == 2 * MIB
