"""A (method, seed) record keeps its JSON format both ways, unknown keys included."""

from __future__ import annotations

import json

from tvrbench.bench.record import MethodRecord


def test_json_round_trip_keeps_every_key_and_the_r1_spelling():
    written = {
        "method": "glccl",
        "seed": "2",
        "best_val_R@1": 41.5,
        "rows": [{"bucket": "all", "t2v_R@1": 40.0}],
        "a_key_from_a_newer_version": {"x": 1},
    }
    record = MethodRecord.from_json(json.loads(json.dumps(written)))
    assert (record.method, record.seed, record.best_val_r1) == ("glccl", 2, 41.5)
    assert record.key == "glccl/seed2" and record.skipped is None and record.stress == []
    out = record.to_json()
    assert out["best_val_R@1"] == 41.5 and "best_val_r1" not in out
    assert out["a_key_from_a_newer_version"] == {"x": 1}
    assert out["rows"] == written["rows"] and out["seed"] == 2
    assert MethodRecord.from_json(out) == record
