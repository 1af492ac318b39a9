"""A 2-process CPU (gloo) evaluation gives exactly the metrics of one process.

The test split has an odd number of videos, so the distributed sampler pads one rank by repeating
a sample; the evaluation must undo that (no sample counted twice) and gather every embedding.
"""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer

from baselines.meanp import MeanPHead
from tvrbench.retrieval import RetrievalModule


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from tvrbench.data.synth import generate

    root = tmp_path_factory.mktemp("synth-ddp")
    generate(root, videos=24, seed=3, fps=1.0, size=32, workers=1, progress=False)
    return root


def _synthetic_dm(root, cache_dir, **kwargs):
    """The 24-video synthetic set at 6 frames (0.2 fps, whole videos), 2 buckets."""
    from tvrbench.data.datamodule import DiDeMoDataModule

    return DiDeMoDataModule(
        root=str(root),
        image_size=32,
        max_words=32,
        max_frames=6,
        sample_fps=0.2,
        clip_seconds=None,
        num_buckets=2,
        cache_dir=str(cache_dir),
        **kwargs,
    )


def _test_metrics(trainer, root, cache_dir) -> dict[str, float]:
    """meanP (seed 0) tested on the synthetic set's test split by ``trainer``."""
    import lightning as L

    L.seed_everything(0)
    dm = _synthetic_dm(root, cache_dir, eval_batch_size=2)
    model = RetrievalModule(head=MeanPHead, clip="tiny")
    (metrics,) = trainer.test(model, datamodule=dm, verbose=False)
    return metrics


class BatchSpyModule(RetrievalModule):
    """MeanP whose every rank writes the batch it loaded and the logits its loss saw to
    ``out_dir/rank<r>.json``."""

    def __init__(self, out_dir: str, **kwargs) -> None:
        super().__init__(head=MeanPHead, **kwargs)
        self.out_dir = out_dir

    def training_step(self, batch, batch_idx):
        import json
        from pathlib import Path

        real_score = self.head.score
        seen: dict[str, list[int]] = {}

        def spy(text, video):
            out = real_score(text, video)
            seen["logits"] = list(out.shape)
            return out

        self.head.score = spy  # type: ignore[method-assign]
        try:
            loss = super().training_step(batch, batch_idx)
        finally:
            del self.head.score
        record = {
            "local": int(batch["input_ids"].shape[0]),
            "logits": seen["logits"],
            "frames_dtype_on_module": str(batch["frames"].dtype),
            "per_device": self.trainer.datamodule.per_device_batch_size,
        }
        (Path(self.out_dir) / f"rank{self.global_rank}.json").write_text(json.dumps(record))
        return loss


def _rank(rank: int, port: int, root: str, out_dir: str) -> None:
    """One of 2 gloo ranks, started as torchrun starts them: with ``LOCAL_RANK`` set, Lightning
    joins the process group instead of starting processes, so one start of the two (each
    imports torch and Lightning again) serves a fit and a test. The fit: one step of
    :class:`BatchSpyModule` on a global batch of 4; the test: :func:`_test_metrics`, written
    to ``out_dir/metrics.json`` by rank 0."""
    import json
    import os
    from pathlib import Path

    import lightning as L

    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE="2",
        NODE_RANK="0",
        LOCAL_RANK=str(rank),
        RANK=str(rank),
    )
    cache_dir = Path(out_dir) / "cache"
    L.seed_everything(0)
    dm = _synthetic_dm(root, cache_dir, batch_size=4)
    trainer = quiet_trainer(devices=2, strategy="ddp", max_steps=1, limit_val_batches=0)
    trainer.fit(BatchSpyModule(out_dir, clip="tiny"), datamodule=dm)
    metrics = _test_metrics(quiet_trainer(devices=2, strategy="ddp"), root, cache_dir)
    if rank == 0:
        (Path(out_dir) / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def two_ranks(synth_root, tmp_path_factory):
    """``(one process's test metrics, the 2-rank run's folder)``: the 2 ranks of :func:`_rank`
    after one process filled the frame cache and tested."""
    import socket

    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("ddp")
    single = _test_metrics(quiet_trainer(devices=1), synth_root, out / "cache")
    with socket.socket() as sock:  # a free port for the ranks' rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank, args=(port, str(synth_root), str(out)), nprocs=2, join=True)
    return single, out


def test_two_process_test_metrics_equal_one_process(two_ranks):
    import json

    single, out = two_ranks
    double = json.loads((out / "metrics.json").read_text())
    n = single["test/n_queries"]
    assert n % 2 == 1, "the split must not divide by 2 for this test to mean anything"
    assert double["test/n_queries"] == n
    assert set(single) == set(double)
    for key, value in single.items():
        assert double[key] == pytest.approx(value, abs=1e-6), key
    assert any(k.startswith("test/bucket=") for k in single)
    assert torch.isfinite(torch.tensor(list(single.values()))).all()


def test_global_batch_is_split_across_ranks_and_the_loss_sees_all_of_it(two_ranks):
    """batch_size is the global contrastive batch: 2 processes load 2 each, InfoNCE scores 4×4."""
    import json

    _, out = two_ranks
    for rank in (0, 1):
        record = json.loads((out / f"rank{rank}.json").read_text())
        assert record["local"] == record["per_device"] == 2, record
        assert record["logits"] == [4, 4], record
        assert record["frames_dtype_on_module"] == "torch.float32", record


def test_global_batch_that_does_not_split_is_a_one_line_error():
    from tvrbench.data.datamodule import DataSetupError, per_device_batch_size

    assert per_device_batch_size(64, 8) == 8
    with pytest.raises(DataSetupError, match="batch_size 64 .* 3 training processes"):
        per_device_batch_size(64, 3)
