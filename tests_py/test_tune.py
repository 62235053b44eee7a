"""The settings search (`esper tune`, ``esper.suite.tune``) and the suite's growth settings (``--set``):
overrides reach the grown runs only, candidates are drawn from the documented space, the score orders
candidates as documented, and a quick search runs end to end on training families only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from esper.suite.families import TRAIN
from esper.suite.run import plan, settings_of
from esper.suite.tune import SPACE, draw, score
from esper.tolaria import MorphConfig


def test_settings_override_grown_runs_and_leave_the_sweep_shared() -> None:
    with pytest.raises(ValueError, match=r"\['no_such_field'\] are not MorphConfig fields"):
        settings_of({"no_such_field": 1})
    plain = plan(TRAIN, tasks=1, seeds=1, quick=True, out_dir="o")
    tuned = plan(TRAIN, tasks=1, seeds=1, quick=True, out_dir="o", settings=settings_of({"patience": 1}))
    assert len(plain) == len(tuned)
    for a, b in zip(plain, tuned):
        assert (a.family, a.arm) == (b.family, b.arm)
        if a.arm.startswith("fixed@"):
            assert a.cache == b.cache  # a fixed-size run does not grow: one sweep for every setting
        else:
            assert a.cache != b.cache  # grown, scratch and control runs depend on the settings
        assert a.setup().morph.patience == MorphConfig().patience
        assert b.setup().morph.patience == 1
        assert b.setup().morph.threshold == MorphConfig().threshold  # only what was set changes


def test_candidates_are_the_defaults_then_distinct_draws_from_the_space() -> None:
    cands = draw(20, seed=3)
    assert cands[0].name == "defaults" and cands[0].settings == {}
    keys = set()
    for c in cands[1:]:
        assert c.settings, c.name  # differs from the defaults somewhere
        assert set(c.settings) <= set(SPACE)
        for k, v in c.settings.items():
            assert v in SPACE[k] and v != getattr(MorphConfig(), k)
        keys.add(json.dumps(c.settings, sort_keys=True))
    assert len(keys) == 20
    assert [c.settings for c in draw(20, seed=3)] == [c.settings for c in cands]  # the seed fixes the draw
    assert [c.settings for c in draw(20, seed=4)] != [c.settings for c in cands]
    # The defaults are in the space: the search can keep them.
    for k, values in SPACE.items():
        assert getattr(MorphConfig(), k) in values, k


def _fam(a: int, b: int, gap: float, flops: float, tasks: int = 2) -> dict:
    return {"control": False, "tasks": tasks, "a_met": a, "b_met": b, "gap_vs_sweep_best": gap,
            "flops_vs_sweep": flops}


def test_score_orders_controls_then_bars_then_gap_then_flops() -> None:
    ok = {"control": True, "tasks": 1, "controls_met": 2, "controls": 2}
    bad = {"control": True, "tasks": 1, "controls_met": 1, "controls": 2}
    s = score({"x": _fam(2, 1, -1.0, 0.3), "y": _fam(0, 1, -3.0, 0.5), "c": ok})
    # By hand: 4 of 8 bars; gap (-1*2 + -3*2)/4 = -2; FLOPs (0.3*2 + 0.5*2)/4 = 0.4.
    assert (s["bars_met"], s["bars"], s["share"]) == (4, 8, 0.5)
    assert s["gap_vs_sweep_best"] == pytest.approx(-2.0) and s["flops_vs_sweep"] == pytest.approx(0.4)
    assert s["controls_ok"] is True
    ranked = [
        score({"x": _fam(2, 2, -5.0, 0.9), "c": bad}),  # every bar met, but a control grew twice: last
        score({"x": _fam(1, 0, 0.0, 0.1), "c": ok}),
        score({"x": _fam(1, 1, -2.0, 0.2), "c": ok}),
        score({"x": _fam(1, 1, -1.0, 0.3), "c": ok}),
        score({"x": _fam(1, 1, -1.0, 0.2), "c": ok}),  # same bars and gap, fewer FLOPs: first
    ]
    assert sorted(ranked, key=lambda r: r["key"]) == ranked


@pytest.mark.slow
def test_quick_search_runs_on_training_families_and_keeps_defaults_unless_beaten(tmp_path: Path) -> None:
    from esper.suite.families import HeldOutError
    from esper.suite.tune import main

    out = tmp_path / "tune"
    with pytest.raises(HeldOutError, match="held out"):  # the search never reads a held-out family
        main(candidates=0, quick=True, out_dir=str(out), only=["blobs", "rings"], quiet=True)
    with pytest.raises(ValueError, match="no family 'nope'"):
        main(candidates=0, quick=True, out_dir=str(out), only=["nope"], quiet=True)
    assert not out.exists()
    picked = ["blobs", "easy_blobs"]  # a grown family and a negative control keep the test short
    assert main(candidates=1, top=1, seed=0, quick=True, out_dir=str(out), workers=2, quiet=True, only=picked) == 0
    report = json.loads((out / "tune.json").read_text())
    names = [c["name"] for c in report["candidates"]]
    assert names == ["defaults", "c1"]
    for c in report["candidates"]:
        s1 = c["stages"]["stage1"]
        assert set(s1["families"]) == set(picked)
        assert (s1["tasks"], s1["seeds"]) == (1, 1)
    # top=1: the defaults always reach stage 2, on twice the tasks and seeds.
    finalists = [c for c in report["candidates"] if "stage2" in c["stages"]]
    assert [c["name"] for c in finalists] == ["defaults"]
    assert (finalists[0]["stages"]["stage2"]["tasks"], finalists[0]["stages"]["stage2"]["seeds"]) == (2, 2)
    assert report["winner"]["name"] == "defaults" and report["winner"]["settings"] == {}
    assert report["space"] == {k: list(v) for k, v in SPACE.items()}
    assert report["command"]["families"] == picked
    # The candidate's grown runs used its settings: their cache entries differ from the defaults' ones.
    grown = sorted(p.name for p in (out / "cache" / "blobs" / "0" / "0").glob("grown-*.json"))
    assert len(grown) == 2
