"""The head contract of docs/CONTRACTS.md, checked for every method's head alike.

States carry their items on the leading axis; ``score`` is a float32 ``[Bt, Bv]`` matrix that is
block-separable (any block of texts × videos scores as in the full matrix), so chunked scoring
equals one call; padding beyond the masks changes nothing where the head masks; the reference
scorer agrees with the fast one; ``pair_flops`` is a positive int; ``extra_loss`` is None or a
finite scalar. Method-specific behaviour (formulas, quirks, costs) stays in ``test_<method>.py``.
"""

from __future__ import annotations

import pytest
import torch
from head_inputs import TINY_METHODS, random_frames, random_text, tiny_method

from tvrbench.backbone import TextFeatures
from tvrbench.chunking import chunked_score, slice_state
from tvrbench.retrieval import RetrievalHead, State

BT, BV, WORDS, FRAMES = 5, 6, 6, 5  # within every tiny method's max_words / max_frames
ATOL = 1e-5

#: Every method's head, and the reference-behaviour variant of the heads that offer one.
CASES = [(name, {}) for name in TINY_METHODS] + [
    (name, {"mask_padding": False}) for name in ("xclip", "glscl", "glccl")
]


def case_id(case: tuple[str, dict]) -> str:
    name, overrides = case
    return name + "".join(f"-{k}={v}" for k, v in overrides.items())


@pytest.fixture(scope="module", params=CASES, ids=case_id)
def head(request) -> RetrievalHead:
    """The method's head on the tiny CLIP's width, every parameter moved off its (often
    identity) initialisation so each one matters, in eval mode (no dropout)."""
    name, overrides = request.param
    head = tiny_method(name, **overrides).head.eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return head


@pytest.fixture(scope="module")
def dim() -> int:
    return tiny_method("meanp").backbone.embed_dim


def states(head: RetrievalHead, dim: int, seed: int = 0, bt: int = BT, bv: int = BV):
    text = random_text(bt, WORDS, dim, seed=seed)
    frames, frame_mask = random_frames(bv, FRAMES, dim, seed=seed + 1)
    with torch.no_grad():
        return head.text_state(text), head.video_state(frames, frame_mask)


def score(head: RetrievalHead, text: State, video: State) -> torch.Tensor:
    with torch.no_grad():
        return head.score(text, video)


def test_states_have_items_on_the_leading_axis(head, dim):
    text, video = states(head, dim)
    assert text and video
    assert {k: v.shape[0] for k, v in text.items()} == dict.fromkeys(text, BT)
    assert {k: v.shape[0] for k, v in video.items()} == dict.fromkeys(video, BV)


def test_score_is_a_float32_text_by_video_matrix(head, dim):
    sim = score(head, *states(head, dim))
    assert sim.shape == (BT, BV) and sim.dtype == torch.float32
    assert torch.isfinite(sim).all()
    assert sim.std() > 1e-4  # not a constant


def test_score_is_block_separable(head, dim):
    text, video = states(head, dim)
    full = score(head, text, video)
    for (t0, t1), (v0, v1) in [((1, 4), (2, 5)), ((0, 1), (0, BV)), ((4, 5), (5, 6))]:
        block = score(head, slice_state(text, t0, t1), slice_state(video, v0, v1))
        torch.testing.assert_close(block, full[t0:t1, v0:v1], rtol=0, atol=ATOL)


def test_chunked_scoring_equals_one_call(head, dim):
    text, video = states(head, dim)
    full = score(head, text, video)
    pair = head.pair_bytes(text, video)
    assert isinstance(pair, int) and pair > 0
    with torch.no_grad():
        for budget in (1, 3 * pair, 8 * pair):
            chunked = chunked_score(head, text, video, memory_budget_bytes=budget)
            torch.testing.assert_close(chunked, full, rtol=0, atol=ATOL)


def test_padding_beyond_the_masks_changes_nothing(head, dim):
    """Extra padded words and frames holding large random content (every head masks frames;
    heads with ``mask_padding=False`` are the reference's unmasked behaviour, checked in their
    own test files)."""
    if not getattr(head, "mask_padding", True):
        pytest.skip("reference behaviour: padding takes part (see the method's own tests)")
    text = random_text(BT, WORDS, dim, seed=0)
    frames, frame_mask = random_frames(BV, FRAMES, dim, seed=1)
    g = torch.Generator().manual_seed(9)
    extra_words, extra_frames = 3, 2
    word_mask = torch.cat([text.word_mask, torch.zeros(BT, extra_words, dtype=torch.bool)], 1)
    words = torch.cat([text.words, torch.zeros(BT, extra_words, dim)], 1)
    words = torch.where(word_mask[..., None], words, 50 * torch.randn(words.shape, generator=g))
    mask2 = torch.cat([frame_mask, torch.zeros(BV, extra_frames, dtype=torch.bool)], 1)
    frames2 = torch.cat([frames, torch.zeros(BV, extra_frames, dim)], 1)
    frames2 = torch.where(mask2[..., None], frames2, 50 * torch.randn(frames2.shape, generator=g))
    with torch.no_grad():
        base = head.score(head.text_state(text), head.video_state(frames, frame_mask))
        padded_text = head.text_state(TextFeatures(text.sentence, words, word_mask))
        padded = head.score(padded_text, head.video_state(frames2, mask2))
    torch.testing.assert_close(padded, base, rtol=0, atol=ATOL)


def test_reference_score_equals_score(head, dim):
    text, video = states(head, dim)
    with torch.no_grad():
        reference = head.reference_score(text, video)
    assert reference.shape == (BT, BV)
    torch.testing.assert_close(reference.float(), score(head, text, video), rtol=0, atol=ATOL)


@pytest.mark.parametrize(("words", "frames", "width"), [(1, 1, 8), (32, 12, 512), (64, 64, 512)])
def test_pair_flops_are_a_positive_int(head, words, frames, width):
    flops = head.pair_flops(words, frames, width)
    assert isinstance(flops, int) and flops >= width
    reference = head.reference_pair_flops(words, frames, width)
    assert reference is None or (isinstance(reference, int) and reference > 0)


def test_extra_loss_is_none_or_a_finite_scalar(head, dim):
    text, video = states(head, dim, bt=4, bv=4)
    with torch.no_grad():
        score(head, text, video)
        loss = head.extra_loss(text, video)
    assert loss is None or (loss.ndim == 0 and torch.isfinite(loss))
