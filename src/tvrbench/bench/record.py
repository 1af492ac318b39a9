"""The record of one (method, seed) of a benchmark run: ``methods/<method>/seed<k>.json``.

Written once by the (method, seed)'s training, test and measurement
(:func:`tvrbench.bench.method.run_method`), completed by the controlled-length protocol
(:mod:`tvrbench.bench.stress`), read by the combined outputs (:mod:`tvrbench.bench.outputs`).
The JSON keys are the field names (``best_val_r1`` is written ``best_val_R@1``); keys a newer
version added are kept in ``extra`` and written back unchanged, so no record loses data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

#: Field name → JSON key where they differ.
JSON_KEYS = {"best_val_r1": "best_val_R@1"}


@dataclass
class MethodRecord:
    """What a (method, seed) produced.

    Args:
        method, seed: the unit.
        class_path, init_args: the module as configured (LightningCLI ``model`` section).
        recipe: every optimiser, trainer and data value it ran with
            (:meth:`tvrbench.bench.config.RunSpec.recipe_record`).
        notes: what a reader of the results should know (fallbacks, early stops, protocol).
        skipped: why the protocol could not run it (None: it ran).
        rows: per-bucket metric rows with intervals and costs, one set per post-processing.
        gallery: retrieval cost versus gallery size.
        stress, stress_ranks: controlled-length rows and ranks per injected length.
        ranks: the test's ranks (per post-processing) — the paired bootstrap's input.
        postproc: the post-processings' settings and QB-Norm's bank.
        qualitative: the qualitative sheet's sampled queries and top-5 lists.
        checkpoint, selected_on, best_val_r1: the tested checkpoint, how it was chosen, its
            validation R@1.
        epochs_trained, train_seconds, wall_seconds: training extent and times (s).
        peak_rss_mb, peak_rss_scope: this process's peak resident memory (MiB) and its scope.
        activation_checkpointing: resolved in this process's fit (None: not trained here).
        cost_device, threads: where costs were measured.
        latency_query, test_metrics: the query latency and the test's own metric summary.
        frozen_backbone, features: the cached-feature protocol's frozen backbone and files.
        job: the submitit job that ran it (``{id, hostname, tasks}``).
        extra: any other key of the JSON file, kept as is.
    """

    method: str
    seed: int
    class_path: str = ""
    init_args: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    gallery: list[dict[str, Any]] = field(default_factory=list)
    stress: list[dict[str, Any]] = field(default_factory=list)
    stress_ranks: dict[str, Any] = field(default_factory=dict)
    ranks: dict[str, Any] | None = None
    postproc: dict[str, Any] | None = None
    qualitative: dict[str, Any] | None = None
    checkpoint: str | None = None
    selected_on: str | None = None
    best_val_r1: float | None = None
    epochs_trained: int | None = None
    train_seconds: float | None = None
    wall_seconds: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_scope: str | None = None
    activation_checkpointing: bool | None = None
    cost_device: str | None = None
    threads: int | None = None
    latency_query: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    frozen_backbone: bool | None = None
    features: dict[str, Any] | None = None
    job: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.method}/seed{self.seed}"

    def to_json(self) -> dict[str, Any]:
        """The JSON object of the record file (every field; ``extra``'s keys at the top level)."""
        out = {
            JSON_KEYS.get(f.name, f.name): getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name != "extra"
        }
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MethodRecord:
        """A record file's object (older files lack some keys; unknown keys go to ``extra``)."""
        names = {JSON_KEYS.get(f.name, f.name): f.name for f in dataclasses.fields(cls)}
        names.pop("extra")
        known = {names[k]: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        known["seed"] = int(known["seed"])
        return cls(**known, extra=extra)
