"""CenterCLIP: k-medoids against hand-made and NumPy references, segments, the clustered ViT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.centerclip import CenterCLIPModule, batched_kmedoids, segment_layout
from tvrbench.retrieval import symmetric_infonce

# --------------------------------------------------------------------------------- k-medoids


def three_clusters(rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """Three tight clusters (a centre point and four points 0.1 away along the axes) in a
    shuffled order; returns the points [15, 2] and the positions of the three centres."""
    offsets = np.array([[0, 0], [0.1, 0], [-0.1, 0], [0, 0.1], [0, -0.1]])
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    pts = np.concatenate([c + offsets for c in centres])  # centre of cluster c at row 5c
    perm = rng.permutation(len(pts))
    inverse = np.argsort(perm)
    return pts[perm], sorted(int(inverse[5 * c]) for c in range(3))


def test_kmedoids_finds_the_centre_of_each_tight_cluster_and_ignores_padding():
    rng = np.random.default_rng(0)
    rows, want = [], []
    for _ in range(2):
        pts, centres = three_clusters(rng)
        # Two padded points far away: as medoids they would be the obvious KKZ choice.
        rows.append(np.concatenate([pts, [[100.0, 100.0], [-50.0, 80.0]]]))
        want.append(centres)
    points = torch.tensor(np.stack(rows), dtype=torch.float32)  # (2, 17, 2)
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[:, 15:] = False
    medoids, assign = batched_kmedoids(points, mask, k=3)
    assert medoids.tolist() == want
    for r in range(2):
        assert assign[r, 15:].tolist() == [-1, -1]
        centre_of = points[r, medoids[r, assign[r, :15]]]  # medoid of every real point
        assert (centre_of - points[r, :15]).norm(dim=-1).max() < 0.2


def test_kmedoids_keeps_every_real_point_when_there_are_at_most_k():
    points = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    medoids, assign = batched_kmedoids(points, mask, k=4)
    assert medoids[0].tolist() == [0, 2, 3, -1]
    assert assign[0].tolist() == [0, -1, 1, 2, -1, -1]
    assert (medoids[1] >= 0).all() and len(set(medoids[1].tolist())) == 4  # row 1 clustered


def numpy_kmedoids(x: np.ndarray, k: int, max_iter: int = 100, tol: float = 1e-6) -> list[int]:
    """Plain per-point KKZ + alternating k-medoids on the real points of one row."""
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    med = [int(np.argmax(np.linalg.norm(x, axis=1)))]
    while len(med) < k:
        nearest = d[:, med].min(axis=1)
        nearest[med] = -1.0
        med.append(int(np.argmax(nearest)))
    for _ in range(max_iter):
        assign = np.argmin(d[med], axis=0)
        assign[med] = np.arange(k)  # a medoid belongs to its own cluster
        new = []
        for c in range(k):
            members = np.flatnonzero(assign == c)
            new.append(int(members[np.argmin(d[np.ix_(members, members)].sum(axis=0))]))
        shift = np.linalg.norm(x[new] - x[med], axis=1).sum()
        med = new
        if shift <= tol:
            break
    return sorted(med)


def test_kmedoids_matches_a_numpy_reference_on_random_masked_rows():
    rng = np.random.default_rng(1)
    b, m, c, k = 6, 30, 4, 5
    points = rng.normal(size=(b, m, c)).astype(np.float32)
    mask = rng.random((b, m)) < 0.7
    medoids, assign = batched_kmedoids(torch.from_numpy(points), torch.from_numpy(mask), k)
    for r in range(b):
        real = np.flatnonzero(mask[r])
        want = real[numpy_kmedoids(points[r, real].astype(np.float64), k)]
        assert medoids[r].tolist() == sorted(want.tolist())
        assert (assign[r, ~mask[r]] == -1).all()


# ---------------------------------------------------------------------------------- segments


def test_segments_follow_numpy_array_split_of_the_real_frames():
    counts = [18, 3, 7, 1, 0, 4, 12]
    n = 18
    mask = torch.arange(n)[None, :] < torch.tensor(counts)[:, None]
    segment, segment_mask = segment_layout(mask, 4)
    for row, cnt in enumerate(counts):
        want = np.full(n, -1)
        if cnt:
            parts = np.array_split(np.arange(cnt), min(4, cnt))
            for s, part in enumerate(parts):
                want[part] = s
        assert segment[row].tolist() == want.tolist()
        assert segment_mask[row].tolist() == [s < min(4, cnt) for s in range(4)]


# ------------------------------------------------------------------------ the clustered ViT


def tiny_batch(bsz: int, n_frames: int, seed: int, vocab: int = 51, words: int = 8):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (bsz, words), generator=g)
    lengths = torch.randint(3, words + 1, (bsz,), generator=g)
    pos = torch.arange(words)[None, :]
    ids[:, 0] = 2
    ids = torch.where(pos == lengths[:, None] - 1, torch.full_like(ids, 3), ids)
    ids = torch.where(pos >= lengths[:, None], torch.zeros_like(ids), ids)
    n_real = torch.randint(1, n_frames + 1, (bsz,), generator=g)
    n_real[0] = n_frames
    frame_mask = torch.arange(n_frames)[None, :] < n_real[:, None]
    frames = torch.randn(bsz, n_frames, 3, 32, 32, generator=g) * frame_mask[..., None, None, None]
    return {
        "input_ids": ids,
        "attention_mask": (pos < lengths[:, None]).long(),
        "frames": frames,
        "frame_mask": frame_mask,
        "index": torch.arange(bsz),
        "bucket": torch.zeros(bsz, dtype=torch.long),
    }


FRAMES = torch.randn(3, 4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
FRAME_MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)


def test_start_block_is_clipped_to_the_vision_depth():
    module = CenterCLIPModule(clip="tiny", start_block=8)
    assert module.start_block == len(module.backbone.clip.vision_model.encoder.layers) == 2
    assert module.init_notes == ["CenterCLIP: start_block 8 clipped to 2 (the ViT has 2 blocks)"]
    assert CenterCLIPModule(clip="tiny", start_block=2).init_notes == []
    with pytest.raises(ValueError, match="1-based"):
        CenterCLIPModule(clip="tiny", start_block=0)


@pytest.fixture(scope="module")
def deep_tiny_clip(tmp_path_factory):
    """A tiny-width CLIP with 12 blocks per tower, saved for the real loading path."""
    from tvrbench.backbone import build_tiny_clip, build_tiny_tokenizer

    path = tmp_path_factory.mktemp("deep-tiny-clip")
    tok = build_tiny_tokenizer()
    model = build_tiny_clip(
        len(tok), tok.eos_token_id, tok.pad_token_id, tok.bos_token_id, layers=12
    )
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(("start_block", "full_blocks"), [(8, 7), (1, 0), (12, 11)])
@torch.no_grad()
def test_start_block_k_clusters_after_k_minus_1_full_blocks(
    deep_tiny_clip, monkeypatch, start_block, full_blocks
):
    """SPEC §2.3: the reference's "block 8" clusters before the 8th block's attention, i.e.
    after 7 full blocks; 12 − 7 = 5 blocks then run on the medoid tokens."""
    import baselines.centerclip as centerclip

    module = CenterCLIPModule(
        clip=deep_tiny_clip, num_segments=2, num_clusters=5, start_block=start_block
    ).eval()
    layers = module.backbone.clip.vision_model.encoder.layers
    assert len(layers) == 12 and module.start_block == start_block
    events: list[tuple[str, int, int]] = []  # (what, block, tokens per sequence)
    for i, layer in enumerate(layers):
        layer.register_forward_hook(
            lambda mod, args, out, i=i: events.append(("block", i, args[0].shape[1]))
        )
    real_kmedoids = centerclip.batched_kmedoids

    def recording_kmedoids(*args, **kwargs):
        events.append(("cluster", -1, args[0].shape[1]))
        return real_kmedoids(*args, **kwargs)

    monkeypatch.setattr(centerclip, "batched_kmedoids", recording_kmedoids)
    module.frame_embeddings(FRAMES, FRAME_MASK)
    kinds = [e[0] for e in events]
    assert kinds.count("cluster") == 1
    cut = kinds.index("cluster")
    assert [e[1] for e in events[:cut]] == list(range(full_blocks))
    assert [e[1] for e in events[cut + 1 :]] == list(range(full_blocks, 12))
    assert all(e[2] == 17 for e in events[:cut])  # class + 16 patches per frame
    assert all(e[2] <= 1 + 5 for e in events[cut + 1 :])  # class + at most 5 medoids


@pytest.mark.parametrize("start_block", [1, 2])
@torch.no_grad()
def test_one_frame_per_segment_and_all_tokens_kept_equals_plain_clip(start_block):
    """One frame per segment: its class token is the segment's; 16 clusters ≥ 16 patches keeps
    every token, in order, so each segment embedding is that frame's plain CLIP embedding."""
    torch.manual_seed(0)
    module = CenterCLIPModule(
        clip="tiny", num_segments=4, num_clusters=16, start_block=start_block
    ).eval()
    emb, mask = module.frame_embeddings(FRAMES, FRAME_MASK)
    assert torch.equal(mask, FRAME_MASK)
    plain = module.backbone.encode_frames(FRAMES, FRAME_MASK)
    torch.testing.assert_close(emb, plain, rtol=0, atol=1e-5)


@torch.no_grad()
def test_vision_blocks_are_token_order_equivariant():
    """Why the medoids' order is free: after the embedding layer no block sees positions."""
    torch.manual_seed(0)
    module = CenterCLIPModule(clip="tiny").eval()
    vision = module.backbone.clip.vision_model
    hidden = vision.pre_layrnorm(vision.embeddings(FRAMES[0]))  # (4, 17, W)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(16)])
    out, out_perm = hidden, hidden[:, perm]
    for layer in vision.encoder.layers:
        out, out_perm = layer(out, None), layer(out_perm, None)
    torch.testing.assert_close(out_perm, out[:, perm], rtol=0, atol=1e-5)


@torch.no_grad()
def reference_segment_embeddings(module: CenterCLIPModule, frames, frame_mask) -> list[list]:
    """Segment by segment, unbatched: hidden states from the stock vision model after
    ``start_block - 1`` blocks, k-medoids on the segment's tokens alone, then the remaining
    blocks (``start_block`` … last, 1-based)."""
    vision = module.backbone.clip.vision_model
    layers = vision.encoder.layers
    start = module.start_block - 1  # full blocks before clustering
    out = []
    for b in range(frames.shape[0]):
        real = frames[b][frame_mask[b]]
        hidden = vision(pixel_values=real, output_hidden_states=True).hidden_states[start]
        parts = np.array_split(np.arange(real.shape[0]), min(module.num_segments, len(real)))
        video = []
        for part in parts:
            seg = hidden[torch.as_tensor(part)]  # (f, 1 + P, W)
            cls = seg[:, 0].mean(dim=0)
            patches = seg[:, 1:].reshape(1, -1, seg.shape[-1])  # (1, f·P, W)
            keep = torch.ones(patches.shape[:2], dtype=torch.bool)
            med, _ = batched_kmedoids(patches, keep, module.num_clusters)
            med = med[med >= 0]
            x = torch.cat([cls[None], patches[0, med]])[None]  # (1, 1 + k, W)
            for layer in layers[start:]:
                x = layer(x, None)
            video.append(module.backbone.clip.visual_projection(vision.post_layernorm(x[0, 0])))
        out.append(video)
    return out


@pytest.mark.parametrize("num_segments, num_clusters", [(2, 5), (2, 20), (4, 20), (1, 7)])
def test_clustered_encoding_matches_the_per_segment_reference(num_segments, num_clusters):
    torch.manual_seed(0)
    module = CenterCLIPModule(
        clip="tiny", num_segments=num_segments, num_clusters=num_clusters, start_block=2
    ).eval()
    with torch.no_grad():
        emb, mask = module.frame_embeddings(FRAMES, FRAME_MASK)
    want = reference_segment_embeddings(module, FRAMES, FRAME_MASK)
    for b, video in enumerate(want):
        assert mask[b].tolist() == [s < len(video) for s in range(num_segments)]
        for s, seg in enumerate(video):
            torch.testing.assert_close(emb[b, s], seg, rtol=0, atol=1e-5)
        assert (emb[b, len(video) :] == 0).all()


@torch.no_grad()
def test_padded_frames_change_no_score():
    torch.manual_seed(0)
    module = CenterCLIPModule(clip="tiny", num_segments=2, num_clusters=5, start_block=2).eval()
    batch = tiny_batch(3, 4, seed=3)
    base = module(batch)
    padded = dict(batch)
    junk = 50.0 * torch.randn(3, 3, 3, 32, 32)
    padded["frames"] = torch.cat([batch["frames"], junk], dim=1)
    padded["frame_mask"] = torch.cat([batch["frame_mask"], torch.zeros(3, 3, dtype=torch.bool)], 1)
    torch.testing.assert_close(module(padded), base, rtol=0, atol=1e-5)


def test_every_parameter_gets_a_gradient_and_loss_decreases():
    torch.manual_seed(0)
    module = CenterCLIPModule(clip="tiny", num_segments=2, num_clusters=6, start_block=2)
    batch = tiny_batch(4, 4, seed=1)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for step in range(20):
        opt.zero_grad()
        loss = symmetric_infonce(module(batch))
        loss.backward()
        if step == 0:
            params = module.named_parameters()
            assert not [n for n, p in params if p.requires_grad and p.grad is None]
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]


def test_published_config_is_the_long_video_setting():
    """SPEC §2.3: DiDeMo's 64 frames in segments of 3-4 frames, clustering from block 7 (after 6
    full blocks), 49 medoids; CLIP lr 1e-5 (scripts/activitynet.sh)."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[1] / "configs/method/centerclip_published.yaml"
    config = yaml.safe_load(path.read_text())
    args = config["model"]["init_args"]
    assert (args["start_block"], args["num_clusters"], args["backbone_lr"]) == (7, 49, 1e-5)
    frames = config["data"]["init_args"]["max_frames"]
    segment, _ = segment_layout(torch.ones(1, frames, dtype=torch.bool), args["num_segments"])
    sizes = torch.bincount(segment[0]).tolist()
    assert len(sizes) == args["num_segments"] and set(sizes) <= {3, 4}
