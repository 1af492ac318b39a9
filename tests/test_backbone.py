"""CLIP backbone: the real loading path exercised with a tiny model saved and loaded back."""

import pytest
import torch

from tvrbench.backbone import (
    BackboneNotFoundError,
    ClipBackbone,
    build_tiny_clip,
    build_tiny_tokenizer,
    load_clip_model,
    load_tokenizer,
)

WORDS = ["a", "red", "blue", "circle", "square", "moves", "the", "screen", "across"]


@pytest.fixture(scope="module")
def tiny():
    tok = build_tiny_tokenizer(WORDS, max_length=12)
    model = build_tiny_clip(len(tok), tok.eos_token_id, tok.pad_token_id, tok.bos_token_id)
    return tok, ClipBackbone(model).eval()


def _tokens(tok, texts, length=12):
    return tok(texts, padding="max_length", max_length=length, truncation=True, return_tensors="pt")


def test_tokenizer_wraps_and_pads():
    tok = build_tiny_tokenizer(WORDS)
    ids = tok("A red circle.")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids  # lower-cased, punctuation known
    assert tok.convert_ids_to_tokens(ids)[1:-1] == ["a", "red", "circle", "."]
    assert tok.unk_token_id in tok("a zebra")["input_ids"]


def test_shapes_and_sentence_is_projected_eot(tiny):
    tok, bb = tiny
    enc = _tokens(tok, ["a red circle moves", "the blue square"])
    with torch.no_grad():
        out = bb.encode_text(enc.input_ids, enc.attention_mask)
    d = bb.embed_dim
    assert out.sentence.shape == (2, d) and out.words.shape == (2, 12, d)
    assert out.word_mask.dtype == torch.bool
    assert torch.equal(out.word_mask, enc.attention_mask.bool())
    eot = (enc.input_ids == tok.eos_token_id).int().argmax(dim=1)
    torch.testing.assert_close(out.sentence, out.words[torch.arange(2), eot])


def test_padding_does_not_change_text_embedding(tiny):
    tok, bb = tiny
    short = _tokens(tok, ["a red circle"], length=8)
    long = _tokens(tok, ["a red circle"], length=12)
    with torch.no_grad():
        a = bb.encode_text(short.input_ids, short.attention_mask).sentence
        b = bb.encode_text(long.input_ids, long.attention_mask).sentence
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_frame_mask_honoured(tiny):
    _, bb = tiny
    torch.manual_seed(0)
    frames = torch.randn(2, 3, 3, 32, 32)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with torch.no_grad():
        emb = bb.encode_frames(frames, mask)
        frames2 = frames.clone()
        frames2[~mask] = torch.randn_like(frames2[~mask])
        emb2 = bb.encode_frames(frames2, mask)
        single = bb.encode_images(frames[0, 1:2])
    assert emb.shape == (2, 3, bb.embed_dim)
    assert torch.all(emb[~mask] == 0)
    torch.testing.assert_close(emb, emb2)
    torch.testing.assert_close(emb[0, 1:2], single, atol=1e-5, rtol=1e-5)


def test_save_pretrained_roundtrip_through_real_loading_path(tiny, tmp_path):
    tok, bb = tiny
    bb.clip.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = ClipBackbone(load_clip_model(str(tmp_path))).eval()
    tok2 = load_tokenizer(str(tmp_path))
    enc, enc2 = _tokens(tok, ["a red circle moves"]), _tokens(tok2, ["a red circle moves"])
    assert torch.equal(enc.input_ids, enc2.input_ids)
    frames = torch.randn(1, 2, 3, 32, 32)
    mask = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        for a, b in [
            (bb.encode_text(**enc).words, loaded.encode_text(**enc2).words),
            (bb.encode_frames(frames, mask), loaded.encode_frames(frames, mask)),
        ]:
            assert torch.equal(a, b)
    assert torch.equal(bb.logit_scale(), loaded.logit_scale())


def test_eager_and_sdpa_agree(tiny, tmp_path):
    tok, bb = tiny
    bb.clip.save_pretrained(tmp_path)
    eager = ClipBackbone(load_clip_model(str(tmp_path), attn_implementation="eager")).eval()
    enc = _tokens(tok, ["the blue square moves across the screen"])
    with torch.no_grad():
        torch.testing.assert_close(
            bb.encode_text(**enc).words, eager.encode_text(**enc).words, atol=1e-5, rtol=1e-5
        )


def test_missing_weights_give_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneNotFoundError, match="not found .* looked for"):
        load_clip_model(str(tmp_path / "no-such-dir"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BackboneNotFoundError, match="openai/clip-vit-base-patch32"):
        load_clip_model("openai/clip-vit-base-patch32")
    with pytest.raises(BackboneNotFoundError, match="tokenizer not found"):
        load_tokenizer(str(tmp_path / "no-such-dir"))


def test_real_clip_tokenizer_from_shared_files():
    from pathlib import Path

    shared = Path(__file__).resolve().parents[2] / "shared" / "clip-tokenizer"
    if not (shared / "vocab.json").exists():
        pytest.skip("shared CLIP tokenizer not available")
    tok = load_tokenizer(str(shared))
    assert tok("a man is eating food.")["input_ids"] == [
        49406, 320, 786, 533, 4371, 1559, 269, 49407,
    ]  # fmt: skip


# ------------------------------------------------------------------ vocabulary, hub, train mode


def test_tiny_tokenizer_vocabulary_is_frozen():
    """Token ids must never move: cached pretrained tiny CLIPs and results depend on them."""
    from tvrbench.vocabulary import PUNCTUATION, TINY_WORDS

    tok = load_tokenizer("tiny")
    specials = ["<|pad|>", "<|unk|>", "<|startoftext|>", "<|endoftext|>"]
    want = [*specials, ".", ",", "!", "?", "'", "-", *TINY_WORDS]
    assert list(PUNCTUATION) == want[4:10]
    assert len(TINY_WORDS) == 41 and list(TINY_WORDS) == sorted(TINY_WORDS)
    assert TINY_WORDS[:3] == ("a", "across", "an") and TINY_WORDS[-1] == "yellow"
    assert sorted(tok.get_vocab(), key=tok.get_vocab().get) == want
    assert tok("A red circle moves across the screen.")["input_ids"] == [
        2, 10, 35, 18, 30, 11, 43, 38, 4, 3,
    ]  # fmt: skip
    model = ClipBackbone.from_pretrained("tiny").clip
    assert model.config.text_config.vocab_size == len(want) == 51


def test_synthetic_generator_words_are_the_frozen_vocabulary():
    from tvrbench.data.synth import vocabulary
    from tvrbench.vocabulary import TINY_WORDS

    assert vocabulary() == list(TINY_WORDS)


def test_backbone_does_not_import_the_data_package():
    import ast
    from pathlib import Path

    import tvrbench.backbone as backbone
    import tvrbench.vocabulary as vocabulary

    for module in (backbone, vocabulary):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("tvrbench.data")], module.__name__


def test_reloaded_backbone_starts_in_training_mode(tiny, tmp_path):
    """from_pretrained returns eval mode; a module built on a saved CLIP must still train."""
    from baselines.meanp import MeanPHead
    from tvrbench.retrieval import RetrievalModule

    tok, bb = tiny
    bb.clip.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert all(m.training for m in ClipBackbone.from_pretrained(str(tmp_path)).modules())
    module = RetrievalModule(head=MeanPHead, clip=str(tmp_path))
    assert [n for n, m in module.named_modules() if not m.training] == []


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_local_files_only_is_passed_only_when_offline(monkeypatch, variable):
    import transformers

    from tvrbench.backbone import hub_kwargs

    calls: list[dict] = []

    def fake_from_pretrained(name, **kwargs):
        calls.append(kwargs)
        raise OSError("not here")

    monkeypatch.setattr(transformers.CLIPModel, "from_pretrained", fake_from_pretrained)
    for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(v, raising=False)
    assert hub_kwargs() == {}
    with pytest.raises(BackboneNotFoundError, match="then on the Hub"):
        load_clip_model("someone/some-clip")
    assert "local_files_only" not in calls[-1]
    monkeypatch.setenv(variable, "1")
    assert hub_kwargs() == {"local_files_only": True}
    with pytest.raises(BackboneNotFoundError, match=f"offline \\({variable} set"):
        load_clip_model("someone/some-clip")
    assert calls[-1]["local_files_only"] is True


def test_offline_uncached_hub_id_is_a_one_line_error_naming_hf_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub_id = "tvrbench-tests/no-such-clip"
    for load in (load_clip_model, load_tokenizer):
        with pytest.raises(BackboneNotFoundError) as info:
            load(hub_id)
        message = str(info.value)
        assert "\n" not in message
        assert f"`hf download {hub_id}`" in message and "huggingface-cli" not in message
        assert hub_id in message and "Hugging Face cache" in message
