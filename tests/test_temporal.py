"""The shared seqTransf temporal encoder: blocks, masking, both initialisations (SPEC §2.4)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tvrbench.backbone import build_tiny_clip
from tvrbench.temporal import (
    TemporalEncoder,
    copy_clip_text_layer,
    initialise_temporal,
)

WIDTH = 64  # the tiny CLIP's width = its projection width D
SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared" / "clip-tokenizer"


def tiny_clip(layers: int = 2, max_words: int = 32, seed: int = 0) -> nn.Module:
    """A tiny CLIP whose text layers have non-trivial LayerNorms (random init leaves them 1/0)."""
    model = build_tiny_clip(
        vocab_size=51, eos_token_id=3, layers=layers, max_words=max_words, seed=seed,
        attn_implementation="eager",
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for layer in model.text_model.encoder.layers:
            for norm in (layer.layer_norm1, layer.layer_norm2):
                norm.weight.add_(0.3 * torch.randn(norm.weight.shape, generator=g))
                norm.bias.add_(0.3 * torch.randn(norm.bias.shape, generator=g))
    return model


def additive_key_mask(frame_mask: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool → ``[B, 1, N, N]`` additive mask of padded keys (transformers' layout)."""
    b, n = frame_mask.shape
    mask = torch.zeros(b, 1, n, n)
    return mask.masked_fill(~frame_mask[:, None, None, :], torch.finfo(mask.dtype).min)


# --------------------------------------------------------------------------------- identity


def test_identity_initialisation_is_the_identity_and_masks_keys():
    torch.manual_seed(0)
    enc = TemporalEncoder(WIDTH, layers=2, max_frames=8)
    before = copy.deepcopy(enc.state_dict())
    assert initialise_temporal(enc, "identity", tiny_clip()) == (
        "temporal encoder: identity initialisation"
    )
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    f = torch.randn(2, 5, WIDTH)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    torch.testing.assert_close(enc(f, mask), 2 * f + enc.position.weight[:5], rtol=0, atol=1e-5)


def test_unknown_initialisation_is_an_error():
    with pytest.raises(ValueError, match="identity, clip_text"):
        initialise_temporal(TemporalEncoder(WIDTH, layers=1), "random", tiny_clip())


def test_blocks_compute_what_pytorch_pre_ln_encoder_layers_compute():
    """The block is a drop-in for the earlier ``nn.TransformerEncoderLayer(norm_first=True)``:
    same parameter names, same initial weights for a seed, same outputs (with the same activation
    and LayerNorm epsilon, 1e-12)."""
    dim, layers, heads = WIDTH, 3, 1
    torch.manual_seed(0)
    ours = TemporalEncoder(dim, layers=layers, max_frames=8, activation="gelu")
    torch.manual_seed(0)
    position = nn.Embedding(8, dim)
    nn.init.normal_(position.weight, std=0.02)
    layer = nn.TransformerEncoderLayer(
        dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
        layer_norm_eps=1e-12,
    )  # fmt: skip
    stock = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
    for block in stock.layers:
        for proj in (block.self_attn.out_proj, block.linear2):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
    want = {"position.weight": position.weight}
    want |= {f"transformer.{k}": v for k, v in stock.state_dict().items()}
    got = ours.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)  # same seed, same weights

    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
        stock.load_state_dict({k[len("transformer.") :]: v for k, v in ours.state_dict().items()
                               if k.startswith("transformer.")})  # fmt: skip
        x = torch.randn(3, 6, dim)
        mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5]).bool()
        torch.testing.assert_close(
            ours.transformer(x, mask), stock(x, src_key_padding_mask=~mask), rtol=0, atol=1e-5
        )


# -------------------------------------------------------------------------------- clip_text


def test_clip_text_block_computes_what_the_clip_text_layer_computes():
    """Block i after clip_text = CLIP text layer i on the same input without the causal mask,
    with and without padded keys, to 1e-5 (the CLIP layer given the blocks' LayerNorm epsilon,
    1e-12, as the official code does when it loads CLIP's weights into its blocks)."""
    clip = tiny_clip(layers=2)
    enc = TemporalEncoder(WIDTH, layers=2, max_frames=8)
    note = initialise_temporal(enc, "clip_text", clip)
    assert note.startswith("temporal encoder: clip_text initialisation")
    assert "layers 0-1" in note and "2 heads" in note and "quick_gelu" in note
    for layer in clip.text_model.encoder.layers:
        layer.layer_norm1.eps = layer.layer_norm2.eps = 1e-12
    torch.manual_seed(1)
    x = torch.randn(3, 7, WIDTH)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] + [0] * 6]).bool()
    with torch.no_grad():
        for block, layer in zip(enc.transformer.layers, clip.text_model.encoder.layers):
            assert block.self_attn.num_heads == layer.self_attn.num_heads == 2
            full = torch.ones_like(mask)
            torch.testing.assert_close(block(x, full), layer(x, None), rtol=0, atol=1e-5)
            got, want = block(x, mask), layer(x, additive_key_mask(mask))
            torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)


def test_clip_text_encoder_is_the_text_layers_over_frames_plus_text_positions():
    clip = tiny_clip(layers=3)
    enc = TemporalEncoder(WIDTH, layers=2, max_frames=10)
    initialise_temporal(enc, "clip_text", clip)
    positions = clip.text_model.embeddings.position_embedding.weight  # (32, D)
    assert torch.equal(enc.position.weight, positions[:10])
    torch.manual_seed(2)
    f = torch.randn(2, 6, WIDTH)
    mask = torch.tensor([[1] * 6, [1] * 2 + [0] * 4]).bool()
    for layer in clip.text_model.encoder.layers:
        layer.layer_norm1.eps = layer.layer_norm2.eps = 1e-12  # the blocks' (official) epsilon
    with torch.no_grad():
        h = f + positions[:6]
        for layer in clip.text_model.encoder.layers[:2]:  # layers 0..layers-1 only
            h = layer(h, additive_key_mask(mask))
        got = enc(f, mask)
    torch.testing.assert_close(got[mask], (h + f)[mask], rtol=0, atol=1e-5)


def test_clip_text_keeps_padded_frames_out_of_real_ones():
    enc = TemporalEncoder(WIDTH, layers=2, max_frames=8)
    initialise_temporal(enc, "clip_text", tiny_clip())
    torch.manual_seed(3)
    f = torch.randn(2, 5, WIDTH)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5]).bool()
    g = f.clone()
    g[0, 3:] = 100 * torch.randn(2, WIDTH)
    with torch.no_grad():
        out_f, out_g = enc(f, mask), enc(g, mask)
        unmasked = enc(f, torch.ones_like(mask))
    torch.testing.assert_close(out_f[0, :3], out_g[0, :3], rtol=0, atol=1e-5)
    assert (unmasked[0, :3] - out_f[0, :3]).abs().max() > 1e-3


def test_clip_text_is_trainable_and_independent_of_the_clip_weights():
    clip = tiny_clip()
    enc = TemporalEncoder(WIDTH, layers=1, max_frames=8)
    initialise_temporal(enc, "clip_text", clip)
    layer = clip.text_model.encoder.layers[0]
    before = layer.mlp.fc1.weight.detach().clone()
    enc(torch.randn(2, 4, WIDTH), torch.ones(2, 4, dtype=torch.bool)).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    with torch.no_grad():
        enc.transformer.layers[0].linear1.weight.add_(1.0)
    assert torch.equal(layer.mlp.fc1.weight, before)  # copied, not shared


@pytest.mark.parametrize(
    ("dim", "layers", "max_frames", "reason"),
    [
        (32, 1, 8, "CLIP text width 64 != D 32"),
        (WIDTH, 4, 8, "CLIP has 2 text layers, the encoder 4"),
        (WIDTH, 1, 40, "max_frames 40 > 32 CLIP text positions"),
    ],
)
def test_clip_text_falls_back_to_identity_with_a_note(dim, layers, max_frames, reason):
    torch.manual_seed(0)
    enc = TemporalEncoder(dim, layers=layers, max_frames=max_frames)
    before = copy.deepcopy(enc.state_dict())
    note = initialise_temporal(enc, "clip_text", tiny_clip(layers=2, max_words=32))
    assert note == f"temporal encoder: identity initialisation (clip_text fell back: {reason})"
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert (
        enc.transformer.layers[0].activation_name == "quick_gelu"
    )  # the official blocks' activation


def test_copy_adopts_heads_and_activation_but_keeps_the_official_layer_norm_eps():
    """The official blocks load CLIP's weights into until_module.LayerNorm (eps 1e-12): the copy
    takes CLIP's heads and activation, not its LayerNorm epsilon."""
    clip = tiny_clip()
    config = copy.deepcopy(clip.config.text_config)
    config.layer_norm_eps = 1e-6
    config.hidden_act = "gelu"
    enc = TemporalEncoder(WIDTH, layers=1, max_frames=4)
    block = enc.transformer.layers[0]
    assert (block.self_attn.num_heads, block.activation_name) == (1, "quick_gelu")
    copy_clip_text_layer(block, clip.text_model.encoder.layers[0], config)
    assert (block.self_attn.num_heads, block.activation_name) == (2, "gelu")
    assert block.norm1.eps == block.norm2.eps == 1e-12


def test_identity_block_is_the_official_block_formula():
    """A block with random weights = the official ResidualAttentionBlock written in NumPy
    (module_cross.py: x + attn(LN(x)), x + c_proj(QuickGELU(c_fc(LN(x)))); TF-style LayerNorm
    with eps 1e-12 inside the square root; one head here), in float64. A LayerNorm eps of 1e-5
    or exact GELU would miss at this tolerance: the inputs have a tiny variance on purpose."""
    torch.manual_seed(3)
    dim = 8
    enc = TemporalEncoder(dim, layers=1, max_frames=4).double()
    block = enc.transformer.layers[0]
    block.self_attn.num_heads = 1
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.5)
    x = 1e-3 * torch.randn(1, 3, dim, dtype=torch.float64)
    got = block(x, torch.ones(1, 3, dtype=torch.bool))[0].detach().numpy()

    w = {k: v.detach().numpy() for k, v in block.state_dict().items()}
    xs = x[0].numpy()

    def tf_layer_norm(v, gain, bias):
        u = v.mean(-1, keepdims=True)
        s = ((v - u) ** 2).mean(-1, keepdims=True)
        return gain * (v - u) / np.sqrt(s + 1e-12) + bias

    h = tf_layer_norm(xs, w["norm1.weight"], w["norm1.bias"])
    qkv = h @ w["self_attn.in_proj_weight"].T + w["self_attn.in_proj_bias"]
    q, k, v = qkv[:, :dim], qkv[:, dim : 2 * dim], qkv[:, 2 * dim :]
    logits = q @ k.T / np.sqrt(dim)
    att = np.exp(logits - logits.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    xs = xs + (att @ v) @ w["self_attn.out_proj.weight"].T + w["self_attn.out_proj.bias"]
    h = tf_layer_norm(xs, w["norm2.weight"], w["norm2.bias"])
    a = h @ w["linear1.weight"].T + w["linear1.bias"]
    a = a / (1 + np.exp(-1.702 * a))  # QuickGELU
    want = xs + a @ w["linear2.weight"].T + w["linear2.bias"]
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------- through the module


def glccl_module(clip: str = "tiny", **head_args):
    """The shared module with a GLCCL head built with ``head_args``."""
    from functools import partial

    from tvrbench.glccl import GLCCLHead
    from tvrbench.retrieval import RetrievalModule

    return RetrievalModule(head=partial(GLCCLHead, **head_args), clip=clip)


def test_glccl_module_records_how_its_temporal_encoder_started():
    seeded = glccl_module(max_words=32, max_frames=4, temporal_layers=1)
    assert seeded.head.temporal_init == "clip_text"  # the reference default
    assert len(seeded.init_notes) == 1
    assert seeded.init_notes[0].startswith("temporal encoder: clip_text initialisation")
    text_layer = seeded.backbone.clip.text_model.encoder.layers[0]
    block = seeded.head.temporal.transformer.layers[0]
    assert torch.equal(block.linear1.weight, text_layer.mlp.fc1.weight)

    deep = glccl_module(max_words=32, max_frames=4, temporal_layers=4)
    assert deep.init_notes == [
        "temporal encoder: identity initialisation "
        "(clip_text fell back: CLIP has 2 text layers, the encoder 4)"
    ]
    plain = glccl_module(max_frames=4, temporal_layers=1, temporal_init="identity")
    assert plain.init_notes == ["temporal encoder: identity initialisation"]
    off = glccl_module(max_frames=4, use_temporal=False)
    assert off.head.temporal is None
    assert off.init_notes == ["temporal encoder: off (use_temporal=False)"]
    with pytest.raises(ValueError, match="temporal_init"):
        glccl_module(max_frames=4, temporal_init="text")


@pytest.mark.slow
def test_vit_b32_architecture_seeds_the_glccl_encoder_from_its_text_layers(tmp_path):
    """Real architecture, random weights: D = 512, 4 blocks from text layers 0-3 (8 heads,
    quick_gelu), 64 positions from the 77 text positions; the loaded backbone trains."""
    if not (SHARED_TOKENIZER / "vocab.json").exists():
        pytest.skip("shared CLIP tokenizer not available")
    from tvrbench.backbone import build_vit_b32_random, load_tokenizer

    folder = build_vit_b32_random(tmp_path / "vit-b32", SHARED_TOKENIZER)
    module = glccl_module(
        str(folder), max_words=64, max_frames=64, temporal_layers=4, temporal_init="clip_text"
    )
    assert module.backbone.embed_dim == 512 and module.backbone.image_size == 224
    assert module.backbone.max_words == 77
    assert load_tokenizer(str(folder))("a man is eating food.")["input_ids"] == [
        49406, 320, 786, 533, 4371, 1559, 269, 49407,
    ]  # fmt: skip
    assert module.init_notes == [
        "temporal encoder: clip_text initialisation (blocks from CLIP text layers 0-3, "
        "positions from text position rows 0-63; 8 heads, quick_gelu)"
    ]
    assert all(m.training for m in module.modules())
    text = module.backbone.clip.text_model
    enc = module.head.temporal
    assert torch.equal(enc.position.weight, text.embeddings.position_embedding.weight[:64])
    for block, layer in zip(enc.transformer.layers, text.encoder.layers[:4]):
        assert torch.equal(block.linear2.weight, layer.mlp.fc2.weight)
        assert torch.equal(block.self_attn.in_proj_weight[:512], layer.self_attn.q_proj.weight)
    torch.manual_seed(0)
    x = torch.randn(2, 64, 512)
    mask = torch.ones(2, 64, dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        got = enc.transformer.layers[0](x, mask)
        want = text.encoder.layers[0](x, additive_key_mask(mask))
    torch.testing.assert_close(got[mask], want[mask], rtol=0, atol=1e-5)
