"""The precision story (tvrbench.precision): under bf16 autocast only the CLIP towers run in bf16;
every head's states, intermediate outputs, similarities, logits and losses are float32, and
CenterCLIP's k-medoids picks the same medoids as in float32."""

from __future__ import annotations

import pytest
import torch
from batches import tiny_batch
from head_inputs import TINY_METHODS, tiny_method
from torch import nn

from baselines.centerclip import batched_kmedoids


def _record_output_dtypes(root: nn.Module, seen: dict[str, set[torch.dtype]]) -> list:
    def hook(name):
        def record(_module, _inputs, output):
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for out in outputs:
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    seen.setdefault(name, set()).add(out.dtype)

        return record

    return [m.register_forward_hook(hook(n or "<root>")) for n, m in root.named_modules()]


@pytest.mark.parametrize("name", list(TINY_METHODS))
def test_heads_states_logits_and_losses_are_float32_under_bf16_autocast(name):
    module = tiny_method(name)
    # uint8 frames, as the loader yields them: the module normalises them on the device.
    lengths = {"word_lengths": [16, 5, 3], "frame_lengths": [8, 3, 1]}
    loaded = tiny_batch(3, 8, words=16, uint8=True, **lengths)
    batch = module.on_after_batch_transfer(loaded, 0)
    head_dtypes: dict[str, set[torch.dtype]] = {}
    tower_dtypes: dict[str, set[torch.dtype]] = {}
    hooks = _record_output_dtypes(module.head, head_dtypes)
    hooks += _record_output_dtypes(module.backbone.clip.text_model, tower_dtypes)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            text, video = module.batch_text_state(batch), module.batch_video_state(batch)
            sim = module.similarity(text, video)
            logits = module(batch)
            loss = module.training_step(batch, 0)
    finally:
        for h in hooks:
            h.remove()
    # The towers did run in bf16 (autocast was on): the test can tell the two apart.
    assert torch.bfloat16 in set().union(*tower_dtypes.values())
    for part, state in (("text", text), ("video", video)):
        for key, value in state.items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, f"{name}: {part} state {key} {value.dtype}"
    bf16_layers = {k: v for k, v in head_dtypes.items() if v != {torch.float32}}
    assert not bf16_layers, f"{name}: head layers not in float32: {bf16_layers}"
    assert sim.dtype == logits.dtype == loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_kmedoids_under_bf16_autocast_picks_the_float32_medoids():
    """Token-like points (unit-variance, 98 per segment, 7 medoids): with the cluster costs
    summed in bf16 (3 significant digits) other members win for seed 0; in float32 they do
    not. The reference is the same routine outside any autocast."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(4, 98, 32, generator=g)  # (B, M, C)
    mask = torch.ones(4, 98, dtype=torch.bool)
    mask[1, 60:] = False
    ref_medoids, ref_assign = batched_kmedoids(points, mask, k=7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        medoids, assign = batched_kmedoids(points, mask, k=7)
    assert torch.equal(medoids, ref_medoids)
    assert torch.equal(assign, ref_assign)
