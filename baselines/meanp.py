"""CLIP4Clip meanP (SPEC §2.1): parameter-free mean pooling of frame embeddings.

score(t, v) = cos(t, mean_j f̂_j) with f̂_j the L2-normalised embedding of real frame j. The video
embedding does not depend on the query, so retrieval over a gallery is one matrix product.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tvrbench.backbone import TextFeatures
from tvrbench.retrieval import RetrievalHead, State


def masked_mean_normalised(emb: Tensor, mask: Tensor) -> Tensor:
    """L2-normalise every item, average the real ones, L2-normalise the mean.

    Args:
        emb: ``[B, N, D]`` embeddings (frames or segments).
        mask: ``[B, N]`` bool, True for real items.
    Returns:
        ``[B, D]`` unit vectors (a row with no real item comes back as zeros).
    """
    weight = mask.to(emb.dtype).unsqueeze(-1)  # (B, N, 1)
    # torch.where rather than a product so that non-finite padding cannot leak into the sum.
    unit = F.normalize(emb, dim=-1).where(mask.unsqueeze(-1), 0.0)  # (B, N, D)
    mean = unit.sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)  # (B, D)
    return F.normalize(mean, dim=-1)


class MeanPHead(RetrievalHead):
    """Cosine between the sentence embedding and the mean of normalised frame embeddings.

    Args:
        dim: joint embedding width D, as every head is built (meanP has no parameters, so it
            needs none).

    States: video ``{"video": [Bv, D]}``, text ``{"sentence": [Bt, D]}``, both unit vectors.
    Reference scorer and its cost: the defaults (:meth:`score` is already the plain matmul).
    """

    #: Published DiDeMo text→video (ViT-B/32; the report shows it next to real-DiDeMo results).
    PUBLISHED_DIDEMO_T2V = {
        "R@1": 43.4,
        "R@5": 70.2,
        "R@10": 80.6,
        "MdR": 2.0,
        "MnR": 17.5,
        "source": "CLIP4Clip (Luo et al. 2021) meanP, ViT-B/32",
        "protocol": "paragraph-to-video, 31 s, 64 frames, 5 epochs, checkpoint chosen on test",
    }

    def __init__(self, dim: int | None = None) -> None:
        super().__init__()
        self.dim = dim

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → ``{"video": [Bv, D]}``."""
        return {"video": masked_mean_normalised(frame_emb, frame_mask.bool())}

    def text_state(self, text: TextFeatures) -> State:
        """``{"sentence": [Bt, D]}``, L2-normalised."""
        return {"sentence": F.normalize(text.sentence, dim=-1)}

    def score(self, text: State, video: State) -> Tensor:
        """``[Bt, Bv]`` cosine similarities."""
        return text["sentence"] @ video["video"].t()  # (Bt, Bv)

    def pair_bytes(self, text: State, video: State) -> int:
        # The only per-pair tensor is the output entry.
        return text["sentence"].element_size()

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """One dot product of two cached D-vectors: D multiply-adds."""
        return dim


__all__ = ["MeanPHead", "masked_mean_normalised"]
