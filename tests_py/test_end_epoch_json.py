"""Session.end_epoch's metrics document: finite metrics encoded in one pass, non-finite ones spelled
as Go's decoder reads them ("NaN", "Infinity"), through the real library."""

import json
import math

from esper.session import Session, _finite_json, _metrics_json


def _session() -> Session:
    layers = [{"name": f"fc{i}", "kind": "linear", "in": 8, "out": 8, "params": 72} for i in range(2)]
    return Session({"layers": layers, "slots_per_layer": 1, "policy": "heuristic"})


def test_metrics_json_matches_the_spelled_document() -> None:
    docs = [
        {"epoch": 2, "train_loss": 1.0, "val_loss": 0.5, "val_metric": None, "contributions": []},
        {"epoch": 0, "train_loss": math.inf, "val_loss": math.nan, "val_metric": -math.inf,
         "contributions": ({"layer": 0, "slot": 0, "delta_loss": 0.1},)},
    ]
    for doc in docs:
        assert _metrics_json(doc) == json.dumps(_finite_json(doc)).encode()
    spelled = json.loads(_metrics_json(docs[1]))
    assert (spelled["train_loss"], spelled["val_loss"], spelled["val_metric"]) == ("Infinity", "NaN", "-Infinity")


def test_non_finite_losses_reach_go_as_non_finite() -> None:
    with _session() as s:
        result = s.end_epoch({"epoch": 0, "train_loss": math.inf, "val_loss": math.nan})
        (decision,) = result["decisions"]
        assert decision["op"] == "rollback" and "+Inf" in decision["reason"], decision
        # The control: a finite loss is no explosion.
        (decision,) = s.end_epoch({"epoch": 1, "train_loss": 1.0, "val_loss": 2.0})["decisions"]
        assert decision["op"] == "wait", decision
