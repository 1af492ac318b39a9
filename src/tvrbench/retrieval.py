"""The shared retrieval base: a plain ``RetrievalHead`` per method and one LightningModule.

A method is its ``RetrievalHead``, injected into the one ``RetrievalModule`` (a subclass only where
the module itself differs, e.g. CenterCLIP's clustering inside the ViT). The module owns the CLIP
backbone, training (symmetric InfoNCE on features all-gathered across DDP ranks, parameter groups,
warm-up + cosine schedule) and evaluation (gather every embedding, undo distributed-sampler
padding, full similarity matrix in memory-bounded chunks, metrics overall and per length bucket).
A head owns only what differs between methods: how a video and a text become scoring states, and
how a (text, video) pair is scored.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, cast

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tvrbench.backbone import TINY, ClipBackbone, TextFeatures
from tvrbench.data.video import prepare_frames
from tvrbench.memory import parse_activation_checkpointing
from tvrbench.precision import float32_region, float32_tensors

State = dict[str, Tensor]


class RetrievalHead(nn.Module):
    """Method-specific scoring. See docs/CONTRACTS.md.

    Subclasses implement :meth:`video_state` and :meth:`score`; everything else has defaults.
    """

    #: True when :meth:`score` computes in float32 whatever its inputs' dtype (upcasts inside,
    #: autocast off: e.g. softmaxes at temperature 0.01); benchmarks label such heads' rows.
    scores_in_float32: ClassVar[bool] = False

    def attach(self, backbone: ClipBackbone) -> list[str]:
        """Called once by :class:`RetrievalModule`, after it has built the backbone and this
        head: initialise from the backbone what the method takes from it (e.g. a temporal
        encoder from CLIP's text tower). Returns notes for the module's ``init_notes``."""
        return []

    def video_state(self, frame_emb: Tensor, frame_mask: Tensor) -> State:
        """``frame_emb [Bv, N, D]``, ``frame_mask [Bv, N]`` → query-independent video state."""
        raise NotImplementedError

    def text_state(self, text: TextFeatures) -> State:
        """Text features → text state (tensors with leading dim Bt)."""
        return text.as_dict()

    def score(self, text: State, video: State) -> Tensor:
        """Unscaled similarity ``[Bt, Bv]``; block-separable over texts and videos."""
        raise NotImplementedError

    def extra_loss(self, text: State, video: State) -> Tensor | None:
        """An additional training loss on the batch (already weighted), or None."""
        return None

    def pair_bytes(self, text: State, video: State) -> int:
        """Peak working bytes per (text, video) pair while scoring; sizes the chunks."""
        return 4 * 8

    @staticmethod
    def pair_flops(num_words: int, num_frames: int, dim: int) -> int:
        """Multiply-adds per (text, video) pair at scoring time, with the states cached."""
        return dim

    def reference_score(self, text: State, video: State) -> Tensor:
        """A straightforward, full-matrix scorer written from SPEC's equations, ``[Bt, Bv]``:
        the yardstick of tests and of ``benchmarks/scoring.py`` (default: :meth:`score`, for
        heads whose fast scorer already is the plain formula)."""
        return self.score(text, video)

    @staticmethod
    def reference_pair_flops(num_words: int, num_frames: int, dim: int) -> int | None:
        """Multiply-adds per pair of the method's reference implementation (the official
        code's way of scoring), or None when it is the same as :meth:`pair_flops`."""
        return None


#: A method's head, injected into :class:`RetrievalModule`: called with the backbone's joint
#: embedding width D once the backbone is built. In a config, ``head: {class_path: <a
#: RetrievalHead subclass>, init_args: {...}}`` (every argument but ``dim``).
HeadFactory = Callable[[int], RetrievalHead]


def load_backbone(clip: str = TINY, clip_checkpoint: str | None = None) -> ClipBackbone:
    """The CLIP backbone every method starts from: ``clip`` (``"tiny"``, a ``save_pretrained``
    folder or a hub id), then the ``CLIPModel`` state dict ``clip_checkpoint`` when given
    (loaded with ``weights_only=True``; a missing or mismatched file is a one-line error)."""
    backbone = ClipBackbone.from_pretrained(clip)
    if clip_checkpoint:
        path = Path(clip_checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"clip_checkpoint {path}: no such file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            backbone.clip.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"clip_checkpoint {path}: does not fit clip {clip} ({first})") from err
    return backbone


def symmetric_infonce(logits: Tensor) -> Tensor:
    """½[CE(S) + CE(Sᵀ)] for a square ``[B, B]`` logit matrix whose diagonal holds the positives."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def gather_with_local_grad(module: L.LightningModule, x: Tensor) -> Tensor:
    """All-gather ``x [B, ...]`` across ranks → ``[W*B, ...]``; only the local shard keeps its
    gradient (each rank back-propagates through its own features, as in CLIP4Clip/open_clip)."""
    if module._trainer is None or module.trainer.world_size <= 1:
        return x
    gathered = cast(Tensor, module.all_gather(x.detach())).clone()  # (W, B, ...)
    gathered[module.global_rank] = x
    return gathered.flatten(0, 1)


def gather_eval(module: L.LightningModule, x: Tensor) -> Tensor:
    """All-gather an evaluation tensor ``[n, ...]`` → ``[W*n, ...]`` (identity on one process)."""
    if module._trainer is None or module.trainer.world_size <= 1:
        return x
    return cast(Tensor, module.all_gather(x)).flatten(0, 1)


def deduplicate_indices(index: Tensor) -> Tensor:
    """Positions of the first occurrence of every distinct ``index`` value, ordered by index.

    Undoes the padding of a ``DistributedSampler`` after gathering: ``rows[positions]`` has one
    row per sample. Args: ``index`` LongTensor ``[M]``. Returns LongTensor ``[U]`` (same device).

    >>> deduplicate_indices(torch.tensor([2, 0, 1, 2, 0])).tolist()
    [1, 2, 0]
    """
    values, inverse = torch.unique(index, sorted=True, return_inverse=True)
    first = torch.full((len(values),), len(index), dtype=torch.long, device=index.device)
    positions = torch.arange(len(index), device=index.device)
    first.scatter_reduce_(0, inverse, positions, reduce="amin")
    return first


def _eval_float(x: Tensor) -> Tensor:
    """Floating evaluation tensors in float32; masks and indices unchanged."""
    return x.float() if x.is_floating_point() else x


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1 over ``warmup_steps``, then cosine to 0."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class RetrievalModule(L.LightningModule):
    """Shared LightningModule of every method: the CLIP backbone and the method's head.

    Args:
        head: the method's head, built as ``head(D)`` right after the backbone (so the random
            numbers every head draws follow the backbone's), then attached to it once
            (:meth:`RetrievalHead.attach`, whose notes start ``init_notes``). Configs name it as
            ``head: {class_path, init_args}``; the factory itself is not kept among the
            hyperparameters (LightningCLI records that configuration there, :mod:`tvrbench.train`).
        clip: ``"tiny"``, a local ``save_pretrained`` directory, or a cached hub id.
        clip_checkpoint: optional ``.pt`` state dict of the ``CLIPModel`` to start from (e.g. the
            benchmark's pretrained tiny CLIP).
        lr: learning rate of the method's new parameters.
        backbone_lr: learning rate of the CLIP parameters (logit scale included).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings' gains).
        betas, eps: AdamW.
        warmup_frac: fraction of the optimizer steps spent in linear warm-up before cosine decay.
        freeze_backbone: keep CLIP frozen (head-only training).
        freeze_clip_input_layers: freeze CLIP's embeddings, patch convolution and pre-LayerNorm
            (``backbone.CLIP_INPUT_LAYERS``), as the official ``--freeze_layer_num 0`` does.
        score_memory_mb: memory budget of chunked gallery scoring, MiB.
        eval_on_cpu: move gathered evaluation states to the CPU before scoring (saves GPU memory).
        activation_checkpointing: ``auto``, ``true`` or ``false``: checkpoint the CLIP layers and
            the head's temporal encoder blocks in training (``auto``: on when the estimated step
            memory exceeds the device's free memory, :mod:`tvrbench.memory`; resolved in
            ``setup("fit")`` and exposed as ``activation_checkpointing_used``).
    """

    def __init__(
        self,
        head: HeadFactory,
        clip: str = TINY,
        clip_checkpoint: str | None = None,
        lr: float = 1e-4,
        backbone_lr: float = 1e-7,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-6,
        warmup_frac: float = 0.1,
        freeze_backbone: bool = False,
        freeze_clip_input_layers: bool = False,
        score_memory_mb: float = 2048.0,
        eval_on_cpu: bool = False,
        activation_checkpointing: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        # The head factory is code, not data: checkpoints keep plain hyperparameters only, so they
        # load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["head"])
        self.activation_checkpointing = parse_activation_checkpointing(activation_checkpointing)
        #: The resolved setting of the last ``fit`` (None before one), and why.
        self.activation_checkpointing_used: bool | None = None
        self.activation_checkpointing_reason = ""
        self.backbone = load_backbone(clip, clip_checkpoint)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        if freeze_clip_input_layers:
            self.backbone.freeze_input_layers()
        self.head: RetrievalHead = head(self.backbone.embed_dim)
        self._eval_outputs: dict[str, list[Tensor]] = defaultdict(list)
        self._eval_text_keys: list[str] = []
        self._eval_video_keys: list[str] = []
        #: What construction decided that a result should record (e.g. how a temporal encoder
        #: was initialised, or a fallback taken); written to results.json by the benchmark.
        self.init_notes: list[str] = list(self.head.attach(self.backbone))
        #: The last evaluation: stage, ranks, bucket ids and names, metrics (read by the runner).
        self.last_eval: dict[str, Any] = {}

    def setup(self, stage: str) -> None:
        if stage == "fit":
            self.apply_activation_checkpointing()

    def apply_activation_checkpointing(self) -> bool:
        """Resolve ``activation_checkpointing`` for this trainer's device, per-device batch,
        frames and precision, and turn it on or off in the CLIP towers and every temporal
        encoder of the head; returns the resolved value."""
        from tvrbench.memory import estimate_step_memory, resolve_activation_checkpointing

        trainer = self.trainer
        dm: Any = getattr(trainer, "datamodule", None)
        batch = int(
            getattr(dm, "per_device_batch_size", None) or getattr(dm, "batch_size", None) or 1
        )
        sampling = getattr(dm, "sampling", None)
        frames = int(getattr(sampling, "max_frames", None) or getattr(dm, "max_frames", 1) or 1)
        words = int(getattr(dm, "max_words", None) or self.backbone.max_words)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        towers = any(p.requires_grad for p in self.backbone.parameters())
        decision = resolve_activation_checkpointing(
            self.activation_checkpointing,
            trainer.strategy.root_device,
            lambda: estimate_step_memory(
                self.backbone.clip.config,
                batch,
                frames,
                words,
                trainer.precision,
                False,
                trainable,
                towers_trained=towers,
            ),
        )
        self.set_activation_checkpointing(decision.enabled)
        self.activation_checkpointing_used = decision.enabled
        self.activation_checkpointing_reason = decision.reason
        return decision.enabled

    def set_activation_checkpointing(self, enabled: bool) -> None:
        """Checkpoint (or not) the CLIP layers and every temporal encoder block of the head."""
        from tvrbench.temporal import TemporalTransformer

        self.backbone.set_activation_checkpointing(enabled)
        for m in self.modules():
            if isinstance(m, TemporalTransformer):
                m.checkpoint_blocks = enabled

    # ------------------------------------------------------------------------- encoding

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 frames ``[B, N, S, S, 3]`` → CLIP-normalised float32 ``[B, N, 3, S, S]`` on the
        device the batch just reached (only bytes cross the host; see docs/CONTRACTS.md)."""
        if isinstance(batch, dict) and "frames" in batch and "frame_mask" in batch:
            batch["frames"] = prepare_frames(batch["frames"], batch["frame_mask"])
        return batch

    def frame_embeddings(self, frames: Tensor, frame_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, N, 3, H, W]``, ``[B, N]`` → frame-level embeddings ``[B, N', D]`` and mask."""
        return self.backbone.encode_frames(frames, frame_mask), frame_mask

    def encode_video(self, frames: Tensor, frame_mask: Tensor) -> State:
        """Frames (uint8 ``[B, N, S, S, 3]`` or prepared float ``[B, N, 3, S, S]``) → the head's
        query-independent video state (leading dim B). The tower may run under the trainer's
        autocast; the head runs in float32 (:mod:`tvrbench.precision`)."""
        emb, mask = self.frame_embeddings(prepare_frames(frames, frame_mask), frame_mask)
        with float32_region(emb.device.type):
            return self.head.video_state(emb.float(), mask)

    def head_text_state(self, text: TextFeatures) -> State:
        """The head's text state from tower outputs, in float32 outside autocast."""
        text = TextFeatures(text.sentence.float(), text.words.float(), text.word_mask.bool())
        with float32_region(text.sentence.device.type):
            return self.head.text_state(text)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> State:
        """Token ids ``[B, L]`` → the head's text state (leading dim B)."""
        return self.head_text_state(self.backbone.encode_text(input_ids, attention_mask))

    def batch_text_state(self, batch: dict[str, Any]) -> State:
        """Text state of a batch: from token ids, or from cached text features when the batch
        carries them (``sentence [B, D]``, ``words [B, L, D]``, ``attention_mask``; the fast
        cached-feature protocol, frozen backbone)."""
        if "sentence" in batch:
            text = TextFeatures(
                sentence=batch["sentence"], words=batch["words"], word_mask=batch["attention_mask"]
            )
            return self.head_text_state(text)
        return self.encode_text(batch["input_ids"], batch["attention_mask"])

    def batch_video_state(self, batch: dict[str, Any]) -> State:
        """Video state of a batch: from frames, or from cached frame embeddings
        (``frame_emb [B, N, D]``) when the batch carries them."""
        if "frame_emb" in batch:
            emb = batch["frame_emb"]
            with float32_region(emb.device.type):
                return self.head.video_state(emb.float(), batch["frame_mask"])
        return self.encode_video(batch["frames"], batch["frame_mask"])

    def similarity(self, text: State, video: State) -> Tensor:
        """Unscaled float32 ``[Bt, Bv]`` similarity, scored in memory-bounded chunks outside
        autocast."""
        from tvrbench.chunking import chunked_score, memory_budget_bytes_from_mb

        budget = memory_budget_bytes_from_mb(self.hparams["score_memory_mb"])
        text, video = float32_tensors(text), float32_tensors(video)
        with float32_region(next(iter(video.values())).device.type):
            return chunked_score(self.head, text, video, budget)

    def forward(self, batch: dict[str, Any]) -> Tensor:
        """Similarity logits ``[B, B]`` of a batch (texts × videos), logit scale applied."""
        text, video = self.batch_text_state(batch), self.batch_video_state(batch)
        return self.backbone.logit_scale().float() * self.similarity(text, video)

    # ------------------------------------------------------------------------- training

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        text, video = self.batch_text_state(batch), self.batch_video_state(batch)
        text = {k: gather_with_local_grad(self, v) for k, v in text.items()}
        video = {k: gather_with_local_grad(self, v) for k, v in video.items()}
        with float32_region(self.device.type):
            # Logits and losses in float32 for every method (global batch: all ranks' features).
            scale = self.backbone.logit_scale().float()
            logits = scale * self.head.score(text, video)  # (Bt, Bv) float32
            loss = symmetric_infonce(logits)
            extra = self.head.extra_loss(text, video)
        self.log("train/infonce", loss, prog_bar=False, batch_size=logits.shape[0])
        if extra is not None:
            self.log("train/extra_loss", extra, batch_size=logits.shape[0])
            loss = loss + extra
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step: clamp the logit-scale parameter at ln 100 in place, as the
        official code does (the forward uses the unclamped ``exp``)."""
        self.backbone.clamp_logit_scale_()

    def configure_optimizers(self):
        hp = self.hparams
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = defaultdict(list)
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            no_decay = p.ndim < 2 or "norm" in name.lower() or name.endswith("logit_scale")
            groups[(id(p) in backbone_ids, no_decay)].append(p)
        param_groups = [
            {
                "params": params,
                "lr": hp.backbone_lr if is_backbone else hp.lr,
                "weight_decay": 0.0 if no_decay else hp.weight_decay,
            }
            for (is_backbone, no_decay), params in groups.items()
        ]
        if not param_groups:
            return None  # nothing to train (e.g. meanP on a frozen backbone): evaluation only
        optimizer = torch.optim.AdamW(param_groups, betas=tuple(hp.betas), eps=hp.eps)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(hp.warmup_frac * total)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ------------------------------------------------------------------------- evaluation

    def _eval_step(self, batch: dict[str, Any]) -> None:
        text, video = self.batch_text_state(batch), self.batch_video_state(batch)
        self._eval_text_keys, self._eval_video_keys = sorted(text), sorted(video)
        # States are cast to float32 once, when stored: under bf16-mixed the towers run in
        # autocast, but every similarity and rank is computed in float32 (bf16 cosines carry
        # about 3 significant digits, and ties count against the query).
        for k, v in text.items():
            self._eval_outputs["text." + k].append(_eval_float(v.detach()))
        for k, v in video.items():
            self._eval_outputs["video." + k].append(_eval_float(v.detach()))
        self._eval_outputs["index"].append(batch["index"])
        self._eval_outputs["bucket"].append(batch["bucket"])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def _bucket_names(self, stage: str, n_buckets: int) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "bucket_names"):
            return list(dm.bucket_names(stage))
        return [f"b{i}" for i in range(n_buckets)]

    def gathered_eval_states(self) -> tuple[State, State, Tensor, Tensor]:
        """Gather evaluation outputs from every rank and undo distributed-sampler padding.

        Returns text state, video state, dataset indices ``[n]`` (sorted, unique) and bucket
        ids ``[n]``; row i of each is dataset sample ``index[i]``.
        """
        out = {k: torch.cat(v) for k, v in self._eval_outputs.items()}
        self._eval_outputs.clear()
        out = {k: gather_eval(self, v) for k, v in out.items()}
        # A distributed sampler pads the last shard by repeating samples: keep the first copy.
        rows = deduplicate_indices(out["index"])
        if self.hparams["eval_on_cpu"]:
            out = {k: v.cpu() for k, v in out.items()}
            rows = rows.cpu()
        text = {k: out["text." + k][rows] for k in self._eval_text_keys}
        video = {k: out["video." + k][rows] for k in self._eval_video_keys}
        return text, video, out["index"][rows], out["bucket"][rows]

    @torch.no_grad()
    def _eval_epoch_end(self, stage: str) -> None:
        from tvrbench.metrics import summarize_ranks, text_to_video_ranks, video_to_text_ranks

        if not self._eval_outputs:
            return
        text, video, index, bucket = self.gathered_eval_states()
        device_type = next(iter(video.values())).device.type
        with torch.autocast(device_type, enabled=False):
            sim = self.similarity(text, video).float()  # (n, n): paragraph i ↔ video i
        ranks_t2v = text_to_video_ranks(sim).cpu()
        ranks_v2t = video_to_text_ranks(sim).cpu()
        bucket = bucket.cpu()
        n_buckets = int(bucket.max()) + 1 if bucket.numel() else 0
        names = self._bucket_names(stage, n_buckets)
        metrics: dict[str, dict[str, dict[str, float]]] = {
            "all": {"t2v": summarize_ranks(ranks_t2v), "v2t": summarize_ranks(ranks_v2t)}
        }
        for b, name in enumerate(names):
            sel = bucket == b
            if sel.any():
                metrics[name] = {
                    "t2v": summarize_ranks(ranks_t2v[sel]),
                    "v2t": summarize_ranks(ranks_v2t[sel]),
                }
        self.last_eval = {
            "stage": stage,
            "index": index.cpu(),
            "bucket": bucket,
            "bucket_names": names,
            "ranks_t2v": ranks_t2v,
            "ranks_v2t": ranks_v2t,
            "metrics": metrics,
            # The gathered, de-duplicated states (row i = index[i]): the cached gallery that
            # latency and gallery-size measurements score against.
            "text_state": text,
            "video_state": video,
            # The float32 similarity the ranks came from (post-processing re-scores it).
            "similarity": sim.cpu(),
        }
        n = float(sim.shape[0])
        logged: dict[str, float] = {}
        for group, per_dir in metrics.items():
            prefix = f"{stage}/" if group == "all" else f"{stage}/bucket={group}/"
            for direction, values in per_dir.items():
                for key, value in values.items():
                    logged[f"{prefix}{direction}/{key}"] = float(value)
        logged[f"{stage}/R@1"] = float(metrics["all"]["t2v"]["R@1"])
        logged[f"{stage}/n_queries"] = n
        self.log_dict(logged, sync_dist=False, rank_zero_only=False)
