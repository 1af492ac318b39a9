"""Validation and test under ``precision="bf16-mixed"`` for every method (SPEC §2.7): the towers
run in autocast, but evaluation states, similarities and ranks are float32."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer
from head_inputs import TINY_METHODS, tiny_method

from tvrbench.data.datamodule import DiDeMoDataModule
from tvrbench.metrics import text_to_video_ranks

METHODS = TINY_METHODS


def _module(name: str):
    return tiny_method(name)


@pytest.fixture(scope="module")
def datamodule(tiny_didemo, tmp_path_factory):
    return DiDeMoDataModule(
        str(tiny_didemo),
        tokenizer="tiny",
        max_words=16,
        max_frames=8,
        image_size=32,
        batch_size=2,
        eval_batch_size=3,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
        num_buckets=2,
        num_workers=0,
    )


@pytest.mark.parametrize("name", list(METHODS))
def test_validate_and_test_in_bf16_mixed_evaluate_in_float32(name, datamodule):
    module = _module(name)
    trainer = quiet_trainer(precision="bf16-mixed")
    for run, stage in ((trainer.validate, "val"), (trainer.test, "test")):
        run(module, datamodule=datamodule, verbose=False)
        ev = module.last_eval
        assert ev["stage"] == stage
        states = {**ev["text_state"], **ev["video_state"]}
        for key, value in states.items():
            if value.is_floating_point():
                assert value.dtype == torch.float32, (name, key, value.dtype)
        module.eval()  # Lightning leaves the module in training mode (dropout) after a run
        with torch.no_grad():  # the stored states are inference tensors
            text = {k: v.clone() for k, v in ev["text_state"].items()}
            video = {k: v.clone() for k, v in ev["video_state"].items()}
            sim = module.similarity(text, video)
        assert sim.dtype == torch.float32
        assert torch.isfinite(sim).all()
        # The ranks are those of the float32 similarity of the stored states.
        assert torch.equal(text_to_video_ranks(sim).cpu(), ev["ranks_t2v"])
