"""Fidelity to the official training code: which CLIP parts are frozen, and the logit scale
clamped on the parameter after each optimizer step (X-CLIP main_xclip.py, GLCCL main_glccl.py,
GLSCL main_retrieval.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import quiet_trainer

from baselines.meanp import MeanPHead
from tvrbench.retrieval import RetrievalModule

ROOT = Path(__file__).resolve().parents[1]
LN_100 = math.log(100.0)

#: What `--freeze_layer_num 0` freezes in the official code (main_xclip.py lines 443-459: every
#: CLIP parameter but the residual blocks, ln_final, text_projection, logit_scale, visual.ln_post
#: and visual.proj), written with the OpenAI names and their transformers equivalents by hand.
OFFICIAL_FROZEN = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
}


def test_freeze_clip_input_layers_freezes_what_freeze_layer_num_0_freezes():
    module = RetrievalModule(head=MeanPHead, clip="tiny", freeze_clip_input_layers=True)
    frozen = {n for n, p in module.backbone.clip.named_parameters() if not p.requires_grad}
    assert frozen == set(OFFICIAL_FROZEN.values())
    plain = RetrievalModule(head=MeanPHead, clip="tiny")
    assert all(p.requires_grad for p in plain.backbone.parameters())


@pytest.mark.parametrize(
    ("method", "frozen"),
    [
        ("xclip", True),  # main_xclip.py 443-459, run_xclip_didemo_vit32.sh --freeze_layer_num 0
        ("glccl", True),  # main_glccl.py main() (same block), README DiDeMo --freeze_layer_num 0
        ("meanp", True),  # CLIP4Clip README DiDeMo command --freeze_layer_num 0
        ("centerclip", True),  # CenterCLIP scripts/activitynet.sh --freeze_layer_num 0
        ("glscl", False),  # main_retrieval.py 235-237 and modeling.py 147-149: commented out
        ("xpool", False),  # modules/basic_utils.py freeze_layers_clip is never called
    ],
)
def test_published_configs_freeze_what_each_official_script_freezes(method, frozen):
    raw = yaml.safe_load((ROOT / "configs" / "method" / f"{method}_published.yaml").read_text())
    assert raw["model"]["init_args"].get("freeze_clip_input_layers", False) is frozen


def test_shared_recipe_states_its_freezing_choice():
    raw = yaml.safe_load((ROOT / "configs" / "recipe" / "shared.yaml").read_text())
    assert raw["model"]["freeze_clip_input_layers"] is True  # the CLIP4Clip/X-CLIP/GLCCL command


def test_logit_scale_gradient_is_not_cut_at_the_cap():
    """The official forward uses exp(θ) unclamped: d(exp θ)/dθ = exp θ even above ln 100 (a
    clamp in the forward would give 0 there)."""
    module = RetrievalModule(head=MeanPHead, clip="tiny")
    with torch.no_grad():
        module.backbone.clip.logit_scale.fill_(LN_100 + 0.1)
    module.backbone.logit_scale().backward()
    grad = module.backbone.clip.logit_scale.grad
    assert grad is not None
    assert float(grad) == pytest.approx(math.exp(LN_100 + 0.1), rel=1e-6)


class _AlignedPairs(torch.utils.data.Dataset):
    """Cached-feature batches whose every text equals its video's frames, cosine 0.98 between
    different pairs (logit gap 2 at scale 100, so InfoNCE is not saturated): the loss wants a
    larger logit scale, so a step pushes the parameter up."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        v = torch.zeros(64)
        v[0], v[i + 1] = 7.0, 1.0
        v = v / v.norm()  # (D,): cos(v_i, v_j) = 49/50 for i != j
        return {
            "sentence": v,
            "words": v.expand(4, 64).clone(),
            "attention_mask": torch.ones(4, dtype=torch.long),
            "frame_emb": v.expand(2, 64).clone(),
            "frame_mask": torch.ones(2, dtype=torch.bool),
        }


def test_a_training_step_clamps_the_logit_scale_parameter_afterwards():
    module = RetrievalModule(head=MeanPHead, clip="tiny", backbone_lr=1.0, warmup_frac=0.0)
    with torch.no_grad():
        module.backbone.clip.logit_scale.fill_(LN_100 - 0.01)
    trainer = quiet_trainer(max_steps=1, num_sanity_val_steps=0, limit_val_batches=0)
    loader = torch.utils.data.DataLoader(_AlignedPairs(), batch_size=8)
    trainer.fit(module, train_dataloaders=loader)
    # AdamW's first step moves θ by about lr = 1 upward; the hook puts it back at the cap.
    assert float(module.backbone.clip.logit_scale) == pytest.approx(LN_100, abs=1e-6)
    assert float(module.backbone.logit_scale()) == pytest.approx(100.0, rel=1e-5)
