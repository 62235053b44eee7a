"""Karn's search through the real library: random requests answered with valid candidates that build
in Tezzeret, the CLI, and the README's training loop growing what Karn found."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from test_outcomes import TEMPO, run_readme_loop

from esper import cli, karn
from esper.bench.karnsearch import random_request
from esper.errors import InvalidArgumentError
from esper.tezzeret import build_seed, validate_seed
from esper.urza import example_input


@pytest.mark.slow
def test_1000_random_requests_answered_valid_within_budget_and_buildable() -> None:
    """1,000 random requests (esper.bench.karnsearch.random_request: six host layouts, budgets
    log-uniform in [200, 200 000] params, half with a FLOP budget, random signals), each searched with
    64 evaluations (the default is 256; 64 keeps the test near 10 s on a shared CPU; `make bench` times
    the default). At least 80% must be answered with a candidate and no candidate may exceed its budget
    (all 1,000 checked, again through Go's checker). Building is slower (about 18 ms a candidate on one
    CPU thread), so every candidate of every 10th answer is built by Tezzeret from its JSON and
    validated on an input of the host (forward, shape, finite, exactly zero output, backward, parameter
    count): at least 95% must pass."""
    rng = random.Random(17)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    answered = built = tried = checked = 0
    failures: list[str] = []
    try:
        for i in range(1000):
            req = random_request(rng, evaluations=64)
            ans = karn.answer(req)
            cands = ans["candidates"]
            answered += bool(cands)
            budget = req["budget"]
            for c in cands:
                assert c["param_count"] <= budget["max_params"], (req, c["template"], c["param_count"])
                assert c["flops_per_sample"] <= budget.get("max_flops", 2**62), (req, c["template"])
                karn.check(c["ir"], req["host"], max_params=budget["max_params"], max_flops=budget.get("max_flops"))
                assert karn.blueprint_id(c["ir"]) == c["blueprint_id"]
                checked += 1
            if i % 10:
                continue
            x, expected = example_input(req["host"])
            for c in cands:
                tried += 1
                try:
                    seed = build_seed(json.loads(json.dumps(c["ir"])), blueprint_id=c["blueprint_id"])
                    validate_seed(seed, x, expected)
                    built += 1
                except ValueError as exc:
                    failures.append(f"{c['template']} {c['params']} on {req['host']}: {exc}")
    finally:
        torch.set_num_threads(threads)
    assert answered >= 800, f"{answered} of 1000 requests answered"
    assert checked >= answered and tried >= 200
    assert built >= 0.95 * tried, failures[:5]


def test_request_negative_controls() -> None:
    # A budget below every template's smallest blueprint: answered with no candidate, and a note.
    ans = karn.search({"kind": "linear", "in": 512, "out": 512}, max_params=10)
    assert ans["candidates"] == [] and "fits the budget" in ans["note"]
    # Malformed requests are refused by Go, naming the field.
    with pytest.raises(InvalidArgumentError, match="unknown signal"):
        karn.search({"kind": "linear", "in": 8, "out": 8}, max_params=100, signals={"loss": 1.0})
    with pytest.raises(InvalidArgumentError, match="count"):
        karn.search({"kind": "linear", "in": 8, "out": 8}, count=65)
    with pytest.raises(InvalidArgumentError, match="host"):
        karn.search({"kind": "linear", "in": 0, "out": 8})


def test_search_is_reproducible_and_ranked_by_prior_without_history() -> None:
    host = {"kind": "conv2d", "in": 8, "out": 16, "kernel": 3, "stride": 1, "padding": 1}
    a = karn.search(host, max_params=8000, seed=5, evaluations=48, time_budget_ms=100)
    b = karn.search(host, max_params=8000, seed=5, evaluations=48, time_budget_ms=100)
    assert [c["blueprint_id"] for c in a["candidates"]] == [c["blueprint_id"] for c in b["candidates"]]
    assert a["ranked_by"] == "prior" and all(c["predicted_gain"] is None for c in a["candidates"])
    assert len({c["blueprint_id"] for c in a["candidates"]}) == len(a["candidates"]) == 5


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["karn", *argv])
    return rc, capsys.readouterr().out


def test_cli_search_predictor_and_stats(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out = _cli(capsys, "search", "--host", "linear:64:64", "--budget", "5000")
    assert rc == 0 and "ranked by prior" in out and "predicted gain" in out
    lines = [ln for ln in out.splitlines() if ln.strip()[:1].isdigit()]
    assert len(lines) == 5 and all(int(ln.split()[2]) <= 5000 for ln in lines)
    signals = tmp_path / "signals.json"
    signals.write_text(json.dumps({"grad_norm": 0.4, "dead_frac": 0.2}))
    rc, out = _cli(capsys, "search", "--host", "conv2d:3:8:3:1:1", "--budget", "900", "--signals", str(signals),
                   "--json")
    ans = json.loads(out)
    assert rc == 0 and ans["candidates"] and all(c["param_count"] <= 900 for c in ans["candidates"])
    signals.write_text(json.dumps({"nope": 1}))
    assert cli.main(["karn", "search", "--host", "linear:8:8", "--budget", "100", "--signals", str(signals)]) == 2
    # An empty store: too few records, said so; not a made-up error.
    rc, out = _cli(capsys, "predictor", "--eval", "--json")
    report = json.loads(out)
    assert rc == 0 and report["eval"] is None and "too few" in report["note"] and report["measured"] == 0
    rc, out = _cli(capsys, "stats", "--requests", "20", "--build-every", "4", "--json")
    stats = json.loads(out)
    assert rc == 0 and stats["requests"] == 20 and stats["over_budget"] == 0
    assert stats["compile_success"] == 1.0 and stats["request_success"] >= 0.5
    assert stats["predictor"]["eval"] is None


def _germinations(morph: Any) -> list[dict[str, Any]]:
    return [d for d in morph.log if d.get("kind") == "decision" and d.get("op") == "germinate"]


@pytest.mark.slow
def test_readme_loop_grows_what_karn_found(monkeypatch: pytest.MonkeyPatch, esper_home: Path) -> None:
    """The README's loop with karn_search=True: every germination's blueprint comes from a Karn request
    whose reason names it and says how the candidates were ranked; a second run reads the first run's
    outcome records as history."""
    scope = run_readme_loop(monkeypatch, epochs=10, karn_search=True, **TEMPO)
    morph = scope["morph"]
    grown = _germinations(morph)
    assert grown, "the loop must germinate for this test to mean anything"
    for d in grown:
        assert "karn request epoch" in d["reason"] and "took candidate" in d["reason"], d["reason"]
        assert "ranked by the prior" in d["reason"] and "no gain predicted" in d["reason"]
    stats = morph.session.stats()["karn"]
    assert stats["requests"] >= len(grown) and stats["answered"] >= len(grown)
    events = [e for e in morph.log if e.get("kind") == "event" and e.get("to") == "GERMINATED"]
    assert len(events) == len(grown)
    morph.close()
    # The fixed template (the default) names no request: the control.
    scope = run_readme_loop(monkeypatch, epochs=10, **TEMPO)
    assert all("karn request" not in d["reason"] for d in _germinations(scope["morph"]))
    measured = [r for r in karn_records(esper_home) if r["contributions"]]
    scope["morph"].close()
    scope = run_readme_loop(monkeypatch, epochs=10, karn_search=True, **TEMPO)
    reasons = [d["reason"] for d in _germinations(scope["morph"])]
    assert reasons and measured
    assert any("0 past trials" not in r for r in reasons), reasons[0]
    scope["morph"].close()


def karn_records(home: Path) -> list[dict[str, Any]]:
    """Every outcome record in the test's ESPER_HOME store."""
    from esper.urza import Urza

    with Urza(str(home / "urza")) as store:
        return store.outcomes()
