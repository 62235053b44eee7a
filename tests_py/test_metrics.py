"""Metrics, alarms and impact analysis: Go's registry scraped over HTTP and through the
prometheus_client collector, checked against what the run did (its log, its seeds, its steps)."""

from __future__ import annotations

import collections
import math
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_outcomes import TEMPO, run_readme_loop
from torch import nn

import esper
from esper.builds import kernel_cache
from esper.errors import StateError, StorageError

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by (name, labels without run and rank)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("run", "rank")))
            out[(s.name, labels)] = s.value
    return out


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        return resp.read().decode()


def expected_from_run(morph: esper.Morphogenesis, epochs: int) -> Samples:
    """What the metrics must say, derived from the run's own record (never from the metrics)."""
    events = collections.Counter(e["to"] for e in morph.log if e["kind"] == "event")
    states = collections.Counter(s["state"] for s in morph.seeds())
    impacts = [e for e in morph.log if e["kind"] == "impact"]
    want: Samples = {
        ("esper_germinations_total", ()): events["GERMINATED"],
        ("esper_fossilizations_total", ()): events["FOSSILIZED"],
        ("esper_prunes_total", ()): events["PRUNED"],
        ("esper_cancellations_total", ()): events["CANCELLED"],
        ("esper_rollbacks_total", ()): events["ROLLED_BACK"],
        ("esper_steps_total", ()): morph.steps,
        ("esper_epoch", ()): morph.epoch,
        ("esper_decision_latency_seconds_count", ()): epochs,
        ("esper_adaptations_ended_total", (("prediction", "none"),)): len(impacts),
        ("esper_adaptations_ended_total", (("prediction", "made"),)): 0,
        ("esper_alarms_total", (("kind", "rollback"),)): sum(
            1 for e in morph.log if e["kind"] == "decision" and e.get("op") == "rollback"),
    }
    for state in esper.session.STATES:
        want[("esper_seeds", (("state", state),))] = states[state]
    return want


def mismatches(got: Samples, want: Samples) -> list[str]:
    return [f"{name}{dict(labels)}: got {got.get((name, labels))}, want {v}"
            for (name, labels), v in want.items() if got.get((name, labels)) != v]


def listening_address(port: int) -> str | None:
    """The local address (hex, as /proc/net/tcp writes it) of the socket listening on port."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        addr, p = fields[1].split(":")
        if int(p, 16) == port and fields[3] == "0A":  # LISTEN
            return addr
    return None


def non_loopback_ipv4() -> str | None:
    """An IPv4 address of this machine that is not loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") else ip


@pytest.mark.slow
def test_readme_loop_metrics_match_the_run(monkeypatch: pytest.MonkeyPatch, esper_home: Path) -> None:
    epochs = 10
    scope = run_readme_loop(monkeypatch, epochs=epochs, metrics_port=0, **TEMPO)
    morph = scope["morph"]
    assert morph.metrics_port and morph.metrics_port > 0
    want = expected_from_run(morph, epochs)
    assert want[("esper_germinations_total", ())] >= 1, "the loop must germinate for this test to mean anything"
    assert want[("esper_fossilizations_total", ())] + want[("esper_prunes_total", ())] >= 1, morph.log

    # 1. The HTTP endpoint, scraped and parsed with prometheus_client's parser.
    got = parse(scrape(morph.metrics_port))
    assert mismatches(got, want) == []
    counters = morph.stats()["counters"]
    assert got[("esper_germinations_total", ())] == counters["germinations"]
    assert got[("esper_decisions_total", ())] == counters["decisions"]
    # Impact analysis: manual calls predict no gain, so every comparison says so and no error exists
    # (a prediction's record and error: test_impact.py).
    impacts = [e for e in morph.log if e["kind"] == "impact"]
    assert impacts and all(e["note"] == "no prediction" and e["predicted_gain"] is None for e in impacts)
    assert all(e["measured_gain"] is not None for e in impacts if e["outcome"] == "FOSSILIZED")
    assert not any(name == "esper_prediction_abs_error" for name, _ in got)
    # The process's kernel cache and the run's Urza store are reported.
    cache = kernel_cache().stats()
    assert got[("esper_kernel_cache_entries", ())] == cache["entries"]
    assert got[("esper_kernel_cache_lookups_total", (("result", "miss"),))] == cache["misses"]
    morph._outcomes.flush()
    assert got[("esper_urza_operations_total", (("op", "put"),))] >= 1  # the validated build
    assert parse(scrape(morph.metrics_port))[("esper_urza_operations_total", (("op", "put_outcome"),))] >= len(impacts)
    # The run's Oona bus: events published, and what its run log subscriber took and dropped.
    bus = morph.oona.stats()  # the bus's counts, with the run log's under "log"
    now = parse(morph.metrics_text())
    assert bus["published"] > 2 * epochs and now[("esper_bus_events_total", ())] == bus["published"]
    runlog = (("subscriber", "runlog"),)
    assert now[("esper_bus_delivered_total", runlog)] == bus["published"], bus
    assert now[("esper_bus_dropped_total", runlog)] == 0

    # 2. The prometheus_client collector, in a registry of the user's.
    registry = CollectorRegistry()
    registry.register(esper.PrometheusCollector(morph))
    via_collector = parse(generate_latest(registry).decode())
    assert mismatches(via_collector, want) == []

    # Negative controls: a wrong count is caught, and the endpoint is on loopback only.
    wrong = dict(want)
    wrong[("esper_germinations_total", ())] += 1
    assert len(mismatches(got, wrong)) == 1
    assert listening_address(morph.metrics_port) == "0100007F"  # 127.0.0.1
    ip = non_loopback_ipv4()
    if ip is not None:
        with pytest.raises(OSError):
            socket.create_connection((ip, morph.metrics_port), timeout=2).close()
    port = morph.metrics_port
    morph.close()
    with pytest.raises(OSError):
        scrape(port)
    assert list(registry.collect()) == []  # the collector yields nothing for a closed run


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def make(**config: Any) -> tuple[nn.Module, torch.optim.Optimizer, esper.Morphogenesis]:
    torch.manual_seed(0)
    model = esper.wrap(MLP(), target_modules=["fc1"], seeds_per_layer=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return model, opt, esper.Morphogenesis(model, opt, policy="manual", signal_every=2, rollback=False,
                                           record_outcomes=False, **config)


def train(model: nn.Module, opt: torch.optim.Optimizer, morph: esper.Morphogenesis, steps: int,
          loss_value: float | None = None, pause: float = 0.0) -> None:
    x = torch.randn(8, 8)
    for _ in range(steps):
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if pause:
            time.sleep(pause)
        morph.step(loss if loss_value is None else loss_value)


def alarms(morph: esper.Morphogenesis, kind: str) -> list[dict[str, Any]]:
    return [e for e in morph.log if e["kind"] == "alarm" and e["alarm"] == kind]


def count(morph: esper.Morphogenesis, kind: str) -> float:
    return parse(morph.metrics_text())[("esper_alarms_total", (("kind", kind),))]


def test_serve_metrics_refuses_a_second_endpoint_and_a_taken_port(esper_home: Path) -> None:
    model, opt, morph = make()
    with morph:
        registry = CollectorRegistry()
        registry.register(esper.PrometheusCollector(morph))
        assert list(registry.collect()) == [] and morph._session is None  # a scrape never starts the session
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            with pytest.raises(StorageError, match="listen"):
                esper.serve_metrics(morph, taken.getsockname()[1])
        port = esper.serve_metrics(morph, 0)
        with pytest.raises(StateError, match="already serving"):
            morph.serve_metrics(0)
        train(model, opt, morph, 4)
        assert parse(scrape(port))[("esper_steps_total", ())] == 4
        with pytest.raises(ValueError):
            morph.serve_metrics(70000)


def test_governor_rollbacks_are_alarms_in_the_log_and_the_metrics(esper_home: Path) -> None:
    model, opt, morph = make()
    with morph:
        train(model, opt, morph, 6)
        assert count(morph, "rollback") == 0 and not alarms(morph, "rollback")
        train(model, opt, morph, 2, loss_value=math.nan)  # the governor rolls back (nothing to blame)
        rollbacks = [e for e in morph.log if e["kind"] == "decision" and e.get("op") == "rollback"]
        assert len(rollbacks) >= 1
        reported = alarms(morph, "rollback")
        assert len(reported) == len(rollbacks) and reported[0]["source"] == "governor"
        assert reported[0]["message"] == rollbacks[0]["reason"]
        assert count(morph, "rollback") == len(rollbacks)


def test_failure_rate_and_plateau_alarms(esper_home: Path) -> None:
    model, opt, morph = make(alerts={"failure_rate": 0.25, "failure_window": 8, "no_improvement_epochs": 2},
                             failures_before_prune=3)
    with morph:
        morph.germinate(0, 0, "residual_mlp", width=4)
        # Intermittent failures (every other step): the breaker never sees 3 in a row, the rate alarm fires.
        for _ in range(3):
            train(model, opt, morph, 1)
            morph._apply(morph.session.report_failure(0, 0, 0, "raised"))
            train(model, opt, morph, 1)
        assert morph.layers[0].seed(0) is not None, "the breaker must not have pruned the seed"
        assert len(alarms(morph, "failure_rate")) == 1 and count(morph, "failure_rate") == 1
        for loss in (1.0, 0.9, 0.95, 0.93):
            morph.end_epoch(val_loss=loss)
        plateau = alarms(morph, "no_improvement")
        assert len(plateau) == 1 and plateau[0]["epoch"] == 3 and count(morph, "no_improvement") == 1
    # Negative control: the same run with the checks off raises neither.
    model, opt, morph = make(alerts={"failure_rate": -1})
    with morph:
        morph.germinate(0, 0, "residual_mlp", width=4)
        for _ in range(3):
            train(model, opt, morph, 1)
            morph._apply(morph.session.report_failure(0, 0, 0, "raised"))
            train(model, opt, morph, 1)
        for loss in (1.0, 0.9, 0.95, 0.93):
            morph.end_epoch(val_loss=loss)
        assert not alarms(morph, "failure_rate") and not alarms(morph, "no_improvement")


def test_stall_and_step_time_alarms_are_seen_while_the_run_waits(esper_home: Path) -> None:
    model, opt, morph = make(alerts={"stall_seconds": 1.0, "step_time_factor": 3, "step_time_window": 4,
                                     "step_time_patience": 2})
    with morph:
        port = morph.serve_metrics(0)
        train(model, opt, morph, 12)
        time.sleep(2.0)  # no step: the stall timer fires in Go; a scrape sees it before Python calls again
        assert parse(scrape(port))[("esper_alarms_total", (("kind", "stalled"),))] == 1
        assert not alarms(morph, "stalled")  # Python has not called since
        train(model, opt, morph, 2)
        stalled = alarms(morph, "stalled")
        assert len(stalled) == 1 and stalled[0]["value"] >= 1.0
        morph.end_epoch()  # the step timing restarts here (the pause above is not a training step)
        # Steps that suddenly take 300 ms more (a step of this model, signals sampled every other
        # step, takes a few ms to a few tens of ms on a loaded machine): a step-time regression.
        assert not alarms(morph, "step_time")
        rate = parse(scrape(port))[("esper_step_rate", ())]
        train(model, opt, morph, 4, pause=0.3)
        slow = alarms(morph, "step_time")
        assert len(slow) == 1 and slow[0]["value"] >= 0.3 and slow[0]["value"] > slow[0]["threshold"], (slow, rate)
        got = parse(scrape(port))
        assert got[("esper_step_rate", ())] > 0 and got[("esper_alarms_total", (("kind", "step_time"),))] == 1


def free_port_pair() -> int:
    """A port p with p and p + 1 both free now."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
        return p
    pytest.fail("no two adjacent free ports")


def test_a_port_per_rank_and_counts_that_follow_a_checkpoint(monkeypatch: pytest.MonkeyPatch,
                                                              esper_home: Path) -> None:
    base = free_port_pair()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("RANK", "3")
    model, opt, morph = make(metrics_port=base)
    with morph:
        train(model, opt, morph, 4)
        assert morph.metrics_port == base + 1 and listening_address(base + 1) == "0100007F"
        text = scrape(base + 1)
        assert f'run="{morph.run_id}"' in text and 'rank="3"' in text
        morph.germinate(0, 0, "residual_mlp", width=4)
        train(model, opt, morph, 4)
        state = morph.state_dict()
        before = parse(text := scrape(base + 1))
        assert before[("esper_germinations_total", ())] == 1 and before[("esper_steps_total", ())] == 8
    monkeypatch.setenv("LOCAL_RANK", "0")
    model2, opt2, morph2 = make(metrics_port=base)
    with morph2:
        morph2.load_state_dict(state)
        assert morph2.metrics_port == base
        after_text = scrape(base)
        assert morph2.run_id == morph.run_id and f'run="{morph.run_id}"' in after_text  # the run goes on
        after = parse(after_text)
        for key in [("esper_germinations_total", ()), ("esper_steps_total", ()),
                    ("esper_seeds", (("state", "TRAINING"),))]:
            assert after[key] == before[key], (key, text)


def test_metrics_exports_refuse_null_pointers_and_foreign_handles(esper_home: Path) -> None:
    from ctypes import byref, c_int32

    from esper import _lib
    from esper.errors import HandleError

    lib = _lib.lib()
    model, opt, morph = make()
    with morph:
        h = morph.session.handle
        assert lib.esper_session_metrics_text(h, None) != 0
        assert lib.esper_session_reports(h, None) != 0
        assert lib.esper_session_waiting(h, None, None) != 0
        assert lib.esper_session_serve_metrics(h, None, 0, byref(c_int32())) != 0  # no host: never a default
        assert lib.esper_session_serve_metrics(h, b"127.0.0.1", 0, None) != 0
        assert morph.metrics_port is None  # nothing was served by the refused calls
        with pytest.raises(HandleError, match="neither a kernel cache nor an Urza store"):
            morph.session.metrics_attach(h)  # a session
        with pytest.raises(HandleError):
            morph.session.metrics_attach(1 << 40)  # forged
        assert parse(morph.metrics_text())[("esper_steps_total", ())] == 0


@pytest.mark.parametrize(("alerts", "match"), [
    ({"step_time_factor": 1}, "step_time_factor"),
    ({"failure_rate": 2}, "failure_rate"),
    ({"stall_seconds": -1}, "stall_seconds"),
    ({"stall_second": 5}, "stall_second"),  # a misspelt threshold is refused, never ignored
])
def test_alert_thresholds_are_checked_by_go(alerts: dict[str, Any], match: str, esper_home: Path) -> None:
    _, _, morph = make(alerts=alerts)
    with morph, pytest.raises(esper.InvalidArgumentError, match=match):
        _ = morph.session
