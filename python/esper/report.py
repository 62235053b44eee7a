"""A run's report and live view, built only from its run log (``$ESPER_HOME/runs/<run>/events.jsonl``).

:class:`RunView` folds a run's events (docs/events.md), one at a time, into what a person wants to
see: the epochs' losses and metric, every seed the run germinated (where, what, how large, its fate,
its measured contribution and why), the decisions with their reasons, the alarms (the governor's
and Nissa's), the impact records (each ended adaptation's predicted gain against its measured
contribution). Two commands use it::

    esper report RUN [--out DIR]       # PNG plots and a Markdown summary (write_report)
    esper monitor RUN [--replay]       # a live terminal view that follows the log (monitor)
    esper monitor RUN --nats URL       # the same view, following the run's events from NATS

The losses and metric are plotted against optimizer steps and against the run's training FLOPs that
Go counts (``train_flops`` of the epoch events: the wrapped layers' and their seeds' forward x 3 x
samples; docs/events.md, "Training FLOPs"). Logs written before that field existed have no FLOPs
plots (the report says so).
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import oona

__all__ = ["Seed", "RunView", "LogFollower", "load", "write_report", "markdown", "render_frame", "monitor"]

#: Lifecycle states that end a seed (what happens after them, embargo and reset, frees the slot).
FATES = ("FOSSILIZED", "PRUNED", "CANCELLED", "ROLLED_BACK")
#: The lifecycle transitions marked on the plots: state -> (colour, label).
MARKS = {"GERMINATED": ("tab:green", "germinated"), "FOSSILIZED": ("tab:blue", "fossilized"),
         "PRUNED": ("tab:red", "pruned"), "ROLLED_BACK": ("black", "rolled back")}


@dataclass
class Seed:
    """One germination of one slot, as the run log tells it."""

    layer: int
    slot: int
    layer_name: str
    generation: int
    blueprint_id: str
    template: str  # the policy's template with its params, "" for a manual germination
    param_count: int
    germinated_step: int
    germinated_epoch: int
    actor: str  # who germinated it
    state: str = "GERMINATED"  # the latest state of the slot while this is its seed
    alpha: float | None = None  # alpha at the latest transition (the log has no per-step alpha)
    alpha_step: int | None = None  # the step of that transition
    fate: str = ""  # the state that ended it (FATES), "" while alive
    fate_step: int | None = None
    reason: str = ""  # the reason of the fate's transition (or of the latest one while alive)
    contribution: float | None = None  # the latest measured validation-loss delta (without - with)

    @property
    def where(self) -> str:
        """``layer_name/slot`` (the layer's module name when the log has it)."""
        return f"{self.layer_name or self.layer}/{self.slot}"

    @property
    def what(self) -> str:
        """The template (or, for a manual germination, the blueprint id's start)."""
        return self.template or (f"blueprint {self.blueprint_id[:12]}" if self.blueprint_id else "-")


@dataclass
class RunView:
    """A run as its events so far tell it: feed events with :meth:`add` (oldest first)."""

    run: str = ""
    start: str | None = None
    end: str | None = None  # the time of the run's end event; None while it runs (or if it was killed)
    last_time: str | None = None
    policy: str = ""
    layers: list[str] = field(default_factory=list)
    slots_per_layer: int = 0
    step: int = 0
    epoch: int = 0
    events: int = 0
    #: {epoch, step, train_loss, val_loss, val_metric, params_used} per epoch event
    epochs: list[dict[str, Any]] = field(default_factory=list)
    seeds: list[Seed] = field(default_factory=list)  # every germination, in order
    slots: dict[tuple[int, int], Seed] = field(default_factory=dict)  # each slot's latest seed
    states: dict[tuple[int, int], str] = field(default_factory=dict)  # each slot's latest state
    marks: list[tuple[int, str]] = field(default_factory=list)  # (step, state) of the marked transitions
    #: {step, epoch, actor, op, where, reason, applied, error} per decision event
    decisions: list[dict[str, Any]] = field(default_factory=list)
    #: {step, epoch, reason, where, alarm (its kind), source ("governor" or "nissa")} per alarm event
    alarms: list[dict[str, Any]] = field(default_factory=list)
    #: {step, epoch, where, generation, outcome, predicted, measured, error, note} per impact event
    impacts: list[dict[str, Any]] = field(default_factory=list)
    #: Go's running totals of the comparisons after the latest impact event: {"ended", "predicted",
    #: "measured", "compared", "mean_abs_error", ...}
    impact_running: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # Go's counters at the latest epoch or run event
    _pending: dict[tuple[int, int], dict[str, Any]] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        """The run's end event is in the log."""
        return self.end is not None

    def counts(self) -> dict[str, int]:
        """Germinations, fossilizations, prunes, rollbacks, alarms (the governor's, as Go's counter
        "alarms" counts them) and Nissa's alarms, counted from the events."""
        fates = [s.fate for s in self.seeds]
        governor = sum(1 for a in self.alarms if a["source"] == "governor")
        return {"germinations": len(self.seeds), "fossilizations": fates.count("FOSSILIZED"),
                "prunes": fates.count("PRUNED"),
                "rollbacks": sum(1 for d in self.decisions if d["op"] == "rollback" and d["applied"]),
                "alarms": governor, "nissa_alarms": len(self.alarms) - governor}

    def add(self, ev: dict[str, Any]) -> None:
        """Fold one event (a run log line as a dict) into the view."""
        d = ev.get("data") or {}
        kind = ev.get("kind")
        self.events += 1
        self.run = self.run or str(ev.get("run", ""))
        self.step = max(self.step, int(ev.get("step") or 0))
        self.epoch = int(ev.get("epoch") or 0)
        self.last_time = ev.get("time") or self.last_time
        if kind == "run":
            phase = d.get("phase")
            if phase == "start" and self.start is None:
                self.start = ev.get("time")
            if phase == "end":
                self.end = ev.get("time")
            elif phase == "resume":
                self.end = None
            self.policy = d.get("policy") or self.policy
            self.layers = list(d.get("layers") or self.layers)
            self.slots_per_layer = int(d.get("slots_per_layer") or self.slots_per_layer)
            self.counters = dict(d.get("counters") or self.counters)
        elif kind == "lifecycle":
            self._lifecycle(ev, d)
        elif kind == "decision":
            key = (int(d.get("layer", -1)), int(d.get("slot", -1)))
            if d.get("op") == "germinate":
                self._pending[key] = d
            self.decisions.append({"step": ev.get("step"), "epoch": ev.get("epoch"), "actor": ev.get("actor"),
                                   "op": d.get("op", ""), "where": _where(d), "reason": d.get("reason", ""),
                                   "applied": bool(d.get("applied", True)), "error": d.get("error") or ""})
        elif kind == "epoch":
            m = d.get("metrics") or {}
            self.epochs.append({"epoch": ev.get("epoch"), "step": ev.get("step"), "train_loss": m.get("train_loss"),
                                "val_loss": m.get("val_loss"), "val_metric": m.get("val_metric"),
                                "params_used": d.get("params_used"), "train_flops": d.get("train_flops")})
            for c in m.get("contributions") or []:
                seed = self.slots.get((int(c["layer"]), int(c["slot"])))
                if seed is not None:
                    seed.contribution = c.get("delta_loss")
            self.counters = dict(d.get("counters") or self.counters)
        elif kind == "alarm":
            # Logs written before Nissa's alarms were published hold the governor's only (no "source").
            self.alarms.append({"step": ev.get("step"), "epoch": ev.get("epoch"), "reason": d.get("reason", ""),
                                "where": _where(d), "alarm": d.get("alarm") or "rollback",
                                "source": d.get("source") or "governor"})
        elif kind == "impact":
            self.impacts.append({"step": ev.get("step"), "epoch": ev.get("epoch"), "where": _where(d),
                                 "generation": d.get("generation"), "outcome": d.get("outcome", ""),
                                 "predicted": d.get("predicted_gain"), "measured": d.get("measured_gain"),
                                 "error": d.get("error"), "note": d.get("note") or "",
                                 "predictor": d.get("predictor") or "", "unit": d.get("unit") or ""})
            self.impact_running = dict(d.get("running") or {})
        elif kind == "failure":
            self.failures += 1

    def _lifecycle(self, ev: dict[str, Any], d: dict[str, Any]) -> None:
        key = (int(d["layer"]), int(d["slot"]))
        to = str(d.get("to", ""))
        step = int(d.get("step", ev.get("step")) or 0)
        if to == "GERMINATED":
            decision = self._pending.pop(key, None)
            template = ""
            if decision is not None:
                params = decision.get("params") or {}
                inner = " ".join(f"{k}={v}" for k, v in sorted(params.items()))
                template = f"{decision.get('template', '')} {{{inner}}}" if inner else str(decision.get("template", ""))
            self.slots[key] = Seed(layer=key[0], slot=key[1], layer_name=str(d.get("layer_name") or ""),
                                   generation=int(d.get("generation") or 0),
                                   blueprint_id=str(d.get("blueprint_id") or ""), template=template,
                                   param_count=int(d.get("param_count") or 0), germinated_step=step,
                                   germinated_epoch=int(d.get("epoch", ev.get("epoch")) or 0),
                                   actor=str(ev.get("actor", "")), reason=str(d.get("reason", "")))
            self.seeds.append(self.slots[key])
        self.states[key] = to
        seed = self.slots.get(key)
        if seed is not None:
            seed.state = to
            seed.alpha, seed.alpha_step = d.get("alpha"), step
            if not seed.fate:
                seed.reason = str(d.get("reason", "")) or seed.reason
                if to in FATES:
                    seed.fate, seed.fate_step = to, step
        if to in MARKS:
            self.marks.append((step, to))


def _where(d: dict[str, Any]) -> str:
    """``layer_name/slot`` of an event's data, "" when it names no seed."""
    if int(d.get("layer", -1)) < 0:
        return ""
    return f"{d.get('layer_name') or d.get('layer')}/{d.get('slot')}"


def load(run: str, *, rank: int = 0, root: str | os.PathLike[str] | None = None) -> RunView:
    """A run's view from its whole run log.

    Raises:
        FileNotFoundError: no such run, or a run without a run log (the message says where it looked).
    """
    files = oona.log_files(run, rank=rank, root=root)
    if not files:
        raise FileNotFoundError(f"run {run!r} has no run log in {oona.run_dir(run, root)}")
    view = RunView(run=run)
    for ev in oona.iter_events(run, rank=rank, root=root):
        view.add(ev)
    return view


# ---------------------------------------------------------------------------------------------- report


def _num(x: Any, fmt: str = ".4g") -> str:
    return "-" if x is None or isinstance(x, str) else format(x, fmt)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(view: RunView, plots: Iterable[str] = (), last_decisions: int = 10) -> str:
    """The run's Markdown summary: id, start and end, epochs, counts, the seeds' table, the last
    decisions with their reasons, and the plots (file names relative to the summary)."""
    c = view.counts()
    last = view.epochs[-1] if view.epochs else {}
    end = view.end or f"no end event (still running, or killed; last event {view.last_time or '-'})"
    lines = [f"# Run {view.run}", "",
             f"- start: {view.start or '-'}",
             f"- end: {end}",
             f"- policy: {view.policy or '-'}; layers: {', '.join(view.layers) or '-'}; "
             f"slots per layer: {view.slots_per_layer}",
             f"- epochs: {len(view.epochs)}; steps: {view.step}; events: {view.events}",
             f"- final: train loss {_num(last.get('train_loss'))}, validation loss {_num(last.get('val_loss'))}, "
             f"validation metric {_num(last.get('val_metric'))}, "
             f"seed parameters in use {_num(last.get('params_used'), 'd')}",
             f"- germinations: {c['germinations']}, fossilizations: {c['fossilizations']}, prunes: {c['prunes']}, "
             f"rollbacks: {c['rollbacks']}, alarms: {c['alarms']} (the governor's) and {c['nissa_alarms']} "
             f"(Nissa's), seed failures: {view.failures}",
             f"- impact: {_impact_line(view)}",
             f"- {_flops_line(view)}", ""]
    go = {k: view.counters[k] for k in c if k in view.counters}
    if go and go != {k: c[k] for k in go}:
        # The counts above come from the events in the log; Go's own counters differ when rotated
        # files were deleted (run_log_keep) or the run resumed from a checkpoint.
        lines.insert(-2, "- Go's counters at the last epoch or end event differ: "
                     + ", ".join(f"{k}: {v}" for k, v in go.items())
                     + " (the log lost rotated files, or the run resumed from an earlier checkpoint)")
    lines += ["## Seeds", ""]
    if not view.seeds:
        lines += ["No seed was germinated in this run.", ""]
    else:
        lines += ["| layer | slot | generation | template / blueprint | params | germinated (step, by) | fate | "
                  "contribution | reason |", "|---|---|---|---|---|---|---|---|---|"]
        for s in view.seeds:
            fate = f"{s.fate} (step {s.fate_step})" if s.fate else f"alive: {s.state}"
            lines.append(f"| {_cell(s.layer_name or str(s.layer))} | {s.slot} | {s.generation} | {_cell(s.what)} | "
                         f"{s.param_count} | {s.germinated_step}, {s.actor} | {fate} | {_num(s.contribution)} | "
                         f"{_cell(s.reason)} |")
        lines += ["", "Contribution: the latest measured validation loss without the seed minus with it (positive: "
                  "the seed helps); - when never measured (only HOLDING seeds are, with an evaluate function).", ""]
    lines += [f"## Last decisions ({min(last_decisions, len(view.decisions))} of {len(view.decisions)})", ""]
    if view.decisions:
        lines += ["| epoch | step | by | op | seed | reason |", "|---|---|---|---|---|---|"]
        for d in view.decisions[-last_decisions:]:
            op = d["op"] if d["applied"] else f"{d['op']} (not applied: {d['error']})"
            lines.append(f"| {d['epoch']} | {d['step']} | {d['actor']} | {_cell(op)} | {d['where'] or '-'} | "
                         f"{_cell(d['reason'])} |")
    else:
        lines.append("No decision was logged.")
    lines.append("")
    if view.alarms:
        lines += ["## Alarms", ""] + [f"- epoch {a['epoch']}, step {a['step']}, {a['source']} ({a['alarm']}): "
                                      f"{a['reason']}{' (seed ' + a['where'] + ')' if a['where'] else ''}"
                                      for a in view.alarms]
        lines.append("")
    if view.impacts:
        lines += ["## Impact: predicted against measured gain", "",
                  "| epoch | step | seed | generation | outcome | predicted by | predicted | measured | error | note |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for im in view.impacts:
            lines.append(f"| {im['epoch']} | {im['step']} | {im['where'] or '-'} | {im['generation']} | "
                         f"{im['outcome']} | {im['predictor'] or '-'} | {_num(im['predicted'])} | "
                         f"{_num(im['measured'])} | {_num(im['error'])} | {_cell(im['note'])} |")
        if any(im["unit"] for im in view.impacts):
            lines += ["", "Gains are relative (Go's unit, relative_gain): the share of the validation loss without "
                      "the seed that it removed; Karn predicts one, the value model's gain per host-epoch is "
                      "multiplied by the compute the seed cost (docs/metrics.md). Error is measured minus predicted. "
                      "The running error is Go's (core/nissa), as the metrics report it.", ""]
        else:  # a log written before the impact records named their unit
            lines += ["", "Gains are validation-loss deltas (without the seed minus with it); error is measured minus "
                      "predicted. The running error is Go's (core/nissa), as the metrics report it.", ""]
    plots = list(plots)
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(lines)


def _impact_line(view: RunView) -> str:
    """The impact analysis in one line, from Go's running totals of the latest impact event."""
    r = view.impact_running
    if not view.impacts:
        return "no adaptation ended"
    mae = r.get("mean_abs_error")
    unit = " (relative gains)" if any(im["unit"] == "relative_gain" for im in view.impacts) else ""
    err = f"mean |error| {_num(mae)} over {r.get('compared', 0)} compared{unit}" if mae is not None else \
        "no running error (no adaptation had both a prediction and a measurement)"
    return (f"{r.get('ended', len(view.impacts))} ended, {r.get('predicted', 0)} with a prediction, "
            f"{r.get('measured', 0)} measured; {err}")


#: The FLOPs axis' label: what Go counts (docs/events.md, "Training FLOPs").
FLOPS_LABEL = "training FLOPs of wrapped layers and seeds (Go's estimate)"
#: What the FLOPs plots and the summary say for a log whose epoch events carry no FLOPs.
NO_FLOPS = "this run log's epoch events carry no training FLOPs (written before they were logged)"


def _flops_line(view: RunView) -> str:
    """The summary's line on the FLOPs axis."""
    xs, ys = _series(view, "train_flops")
    if not xs:
        return f"plotted against optimizer steps only: {NO_FLOPS}"
    return f"plotted against optimizer steps and against {FLOPS_LABEL}: {ys[-1]:.4g} at step {xs[-1]}"


def _mark(ax: Any, view: RunView, seen: set[str], legend: bool, at: Callable[[int], float] | None = None) -> None:
    """Marks lifecycle transitions and alarms at their steps (``at`` maps a step to the x axis)."""
    x = at or float
    for step, state in view.marks:
        color, label = MARKS[state]
        ax.axvline(x(step), color=color, alpha=0.5, linestyle="--",
                   label=label if legend and label not in seen else None)
        if legend:
            seen.add(label)
    for a in view.alarms:
        ax.axvline(x(a["step"]), color="tab:orange", alpha=0.6, linestyle=":",
                   label="alarm" if legend and "alarm" not in seen else None)
        if legend:
            seen.add("alarm")


def _series(view: RunView, key: str) -> tuple[list[int], list[float]]:
    pts = [(e["step"], e[key]) for e in view.epochs if isinstance(e.get(key), (int, float))]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def write_report(run: str, out: str | os.PathLike[str] | None = None, *, rank: int = 0,
                 root: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Write a run's report into ``out`` (default ``<run dir>/report``): ``losses.png`` (train and
    validation loss and the validation metric against steps, and against Go's training FLOPs when the
    log has them; lifecycle events and alarms marked),
    ``params.png`` (seed parameters in use over the steps), ``contributions.png`` (each seed's
    measured contribution) and ``report.md``. Returns {name: path}.

    Raises:
        FileNotFoundError: no such run or no run log.
        ImportError: matplotlib is not installed (``pip install matplotlib``).
    """
    view = load(run, rank=rank, root=root)
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("esper report draws with matplotlib: pip install matplotlib "
                          "(or esper-morph[demo])") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest = Path(out) if out else oona.run_dir(run, root) / "report"
    dest.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    fig, axes = plt.subplots(2, 2, figsize=(15, 7), sharex="col")
    steps_f, flops = _series(view, "train_flops")
    # The FLOPs at an epoch's end; a mark between two ends is placed by linear interpolation in steps.
    at_step = dict(zip(steps_f, flops))

    def at(step: int) -> float:
        return float(np.interp(step, steps_f, flops))

    for col, (ax_loss, ax_metric) in enumerate(zip(axes[0], axes[1])):
        by_flops = col == 1
        if by_flops and not steps_f:
            for ax in (ax_loss, ax_metric):
                ax.text(0.5, 0.5, NO_FLOPS, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
            ax_loss.set_title("against training FLOPs: none logged")
            ax_metric.set_xlabel(FLOPS_LABEL)
            continue

        def x_of(xs: list[int], by_flops: bool = by_flops) -> tuple[list[float], list[int]]:
            """The x values of the points (FLOPs, or steps) and which points have one."""
            keep = [i for i, s in enumerate(xs) if not by_flops or s in at_step]
            return [at_step[xs[i]] if by_flops else float(xs[i]) for i in keep], keep

        for key, label in (("train_loss", "train loss"), ("val_loss", "validation loss")):
            xs, ys = _series(view, key)
            px, keep = x_of(xs)
            if px:
                ax_loss.plot(px, [ys[i] for i in keep], marker=".", label=label)
        xs, ys = _series(view, "val_metric")
        px, keep = x_of(xs)
        if px:
            ax_metric.plot(px, [ys[i] for i in keep], marker=".", color="tab:purple", label="validation metric")
        else:
            ax_metric.text(0.5, 0.5, "no validation metric logged", ha="center", va="center",
                           transform=ax_metric.transAxes)
        seen: set[str] = set()
        _mark(ax_loss, view, seen, legend=False, at=at if by_flops else None)
        _mark(ax_metric, view, seen, legend=True, at=at if by_flops else None)
        ax_loss.set_title(f"run {run}: losses" + (" against training FLOPs" if by_flops else ""))
        ax_metric.set_title("validation metric")
        ax_metric.set_xlabel(FLOPS_LABEL if by_flops else "optimizer step")
        ax_loss.legend(fontsize=8, loc="upper right")
        ax_metric.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    paths["losses"] = dest / "losses.png"
    fig.savefig(paths["losses"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    xs, ys = _series(view, "params_used")
    if xs:
        ax.step(xs, ys, where="post", color="tab:brown", label="seed parameters in use")
    _mark(ax, view, set(), legend=True)
    ax.set_title(f"run {run}: seed parameters in use (at each epoch's end)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("parameters")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    paths["params"] = dest / "params.png"
    fig.savefig(paths["params"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    measured = [s for s in view.seeds if s.contribution is not None]
    if measured:
        colors = {"FOSSILIZED": "tab:blue", "PRUNED": "tab:red", "ROLLED_BACK": "black", "CANCELLED": "tab:gray"}
        ax.bar([f"{s.where} g{s.generation}" for s in measured], [float(s.contribution or 0.0) for s in measured],
               color=[colors.get(s.fate, "tab:green") for s in measured])
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_ylabel("val loss without - with")
    else:
        why = "no seed was germinated" if not view.seeds else "no seed's contribution was measured"
        ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes)
    ax.set_title(f"run {run}: each seed's latest measured contribution (blue fossilized, red pruned, green alive)")
    fig.tight_layout()
    paths["contributions"] = dest / "contributions.png"
    fig.savefig(paths["contributions"], dpi=110)
    plt.close(fig)

    paths["report"] = dest / "report.md"
    paths["report"].write_text(markdown(view, [p.name for k, p in paths.items() if k != "report"]))
    return paths


# ---------------------------------------------------------------------------------------------- monitor


class LogFollower:
    """Reads a run log as it grows: each :meth:`poll` returns the complete lines written since the
    last one, as events. It follows a rotation (the open file is read to its end first)."""

    def __init__(self, run: str, *, rank: int = 0, root: str | os.PathLike[str] | None = None) -> None:
        files = oona.log_files(run, rank=rank, root=root)  # FileNotFoundError for an unknown run
        self.path = oona.run_dir(run, root) / ("events.jsonl" if rank == 0 else f"events.rank{rank}.jsonl")
        self._rotated = [p for p in files if p != self.path]  # read whole before the current file
        self._file: IO[bytes] | None = None
        self._inode: int | None = None
        self._partial = b""

    def _lines(self, data: bytes) -> Iterator[dict[str, Any]]:
        data = self._partial + data
        *whole, self._partial = data.split(b"\n")
        for raw in whole:
            try:
                yield oona.decode_event(raw)
            except ValueError:
                continue  # a line cut by a crash (docs/events.md)

    def poll(self) -> list[dict[str, Any]]:
        """The events appended since the last call (complete lines only)."""
        out: list[dict[str, Any]] = []
        for p in self._rotated:
            out.extend(self._lines(p.read_bytes()))
            self._partial = b""
        self._rotated = []
        while True:
            if self._file is not None:
                out.extend(self._lines(self._file.read()))
            try:
                inode = self.path.stat().st_ino
            except FileNotFoundError:
                return out  # between a rotation's rename and the new file
            if inode == self._inode:
                return out
            if self._file is not None:  # rotated: the old file was read to its end above
                self._file.close()
                self._partial = b""
            self._file = open(self.path, "rb")  # noqa: SIM115 - kept open across polls
            self._inode = os.fstat(self._file.fileno()).st_ino

    def close(self) -> None:
        """Close the open log file."""
        if self._file is not None:
            self._file.close()
            self._file = None


_SPARKS = "▁▂▃▄▅▆▇█"


def _spark(values: list[float], width: int = 40) -> str:
    vals = [v for v in values if isinstance(v, (int, float)) and v == v and abs(v) != float("inf")][-width:]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(_SPARKS[min(len(_SPARKS) - 1, int((v - lo) / span * (len(_SPARKS) - 1) + 0.5))] for v in vals)


def render_frame(view: RunView, *, last_decisions: int = 5, last_alarms: int = 3, width: int = 120) -> str:
    """One frame of ``esper monitor``: the run's status, the latest losses and metric with their
    curves, each layer's slots (state, alpha at the latest transition and its step, parameters,
    template, generation, latest measured contribution), the last decisions with their reasons and
    the alarms."""
    status = "ended" if view.ended else "running"
    out = [f"esper monitor  run {view.run}  [{status}]  policy {view.policy or '-'}  epoch {view.epoch}  "
           f"step {view.step}  events {view.events}"]
    last = view.epochs[-1] if view.epochs else {}
    out.append(f"train loss {_num(last.get('train_loss'))}  val loss {_num(last.get('val_loss'))}  "
               f"val metric {_num(last.get('val_metric'))}  seed params {_num(last.get('params_used'), 'd')}  "
               f"train FLOPs {_num(last.get('train_flops'), '.3g')}")
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss  "), ("val_metric", "val metric")):
        curve = _spark([e[key] for e in view.epochs if e.get(key) is not None])
        if curve:
            out.append(f"  {label} {curve}")
    c = view.counts()
    out.append(f"germinated {c['germinations']}  fossilized {c['fossilizations']}  pruned {c['prunes']}  "
               f"rollbacks {c['rollbacks']}  alarms {c['alarms']}+{c['nissa_alarms']} (governor+nissa)  "
               f"failures {view.failures}")
    out.append(f"impact: {_impact_line(view)}")
    out.append("")
    names = view.layers or sorted({str(k[0]) for k in view.states})
    slots = max([view.slots_per_layer] + [k[1] + 1 for k in view.states])
    for i, name in enumerate(names):
        out.append(f"layer {i} ({name})")
        for slot in range(slots):
            state = view.states.get((i, slot), "DORMANT")
            seed = view.slots.get((i, slot))
            line = f"  slot {slot}: {state:<11}"
            if seed is not None and state != "DORMANT":
                contrib = f"  contribution {_num(seed.contribution)}" if seed.contribution is not None else ""
                line += (f" alpha {_num(seed.alpha, '.2f')} at s{seed.alpha_step}  params {seed.param_count}  "
                         f"{seed.what}  g{seed.generation}{contrib}")
            out.append(line.rstrip())
    out.append("")
    out.append("last decisions:" if view.decisions else "last decisions: none yet")
    for d in view.decisions[-last_decisions:]:
        op = d["op"] if d["applied"] else f"{d['op']} (not applied: {d['error']})"
        line = f"  e{d['epoch']} s{d['step']} {d['actor']}: {op}{' ' + d['where'] if d['where'] else ''}: {d['reason']}"
        out.append(line if len(line) <= width else line[: width - 3] + "...")
    out.append("alarms:" if view.alarms else "alarms: none")
    for a in view.alarms[-last_alarms:]:
        out.append(f"  e{a['epoch']} s{a['step']} {a['source']}: {a['reason']}"
                   f"{' (seed ' + a['where'] + ')' if a['where'] else ''}")
    return "\n".join(out)


def _show(frame: str, stream: IO[str], tty: bool) -> None:
    stream.write(("\x1b[H\x1b[2J" if tty else "\n") + frame + "\n")
    stream.flush()


def _caught_up(follower: oona.NatsFollower, interval: float) -> Iterator[dict[str, Any]]:
    """The events a NATS follower receives until it has caught up with what the server holds: the
    stream has nothing more for it (JetStream: Go counts what the stream holds that it has not
    handed out), or, where that is not known (a core subscription), a poll of ``interval`` seconds
    brought nothing; or 5 intervals (at least 5 s) passed without a connection."""
    deadline = time.monotonic() + max(5.0, 5 * interval)
    while True:
        fresh = follower.poll(interval)
        yield from fresh
        mode, pending = follower.state.get("mode"), follower.state.get("pending", -1)
        if mode == "jetstream" and pending == 0:
            return
        if not fresh and ((mode and pending < 0) or time.monotonic() > deadline):
            return


def monitor(run: str | None, *, rank: int = 0, root: str | os.PathLike[str] | None = None, interval: float = 1.0,
            replay: bool = False, speed: float = 4.0, once: bool = False, stream: IO[str] | None = None,
            nats: str | None = None, subject: str | None = None, nats_options: dict[str, Any] | None = None) -> int:
    """Show a run in the terminal (``esper monitor``); returns the exit status.

    Following (the default): redraw every ``interval`` seconds while the run log grows, and return
    when the run's end event arrives. ``replay``: play the log from its start, one frame per epoch,
    ``speed`` epochs per second (0: as fast as possible), and return at its end. ``once``: print
    one frame of the log as it is now. Frames clear the screen only on a terminal.

    With ``nats`` (a server URL) the events come from NATS instead of the run log
    (:class:`esper.oona.NatsFollower`: the JetStream stream from the run's start, or the core
    subjects from now on), for run ``run`` (rank ``rank``) or for ``subject``; ``nats_options``
    are the connection's (credentials, TLS). ``once`` and ``replay`` then read what the server
    holds until the follower has caught up. A view shows one run: with a wildcard subject, the
    first whose events arrive; other runs' events are left out. While the follower has not
    connected, Go's reason (a refused password or token, no server) goes to stderr; ``once`` and
    ``replay`` then return 1 without a frame.

    Raises:
        FileNotFoundError: no such run (reading the run log).
        esper.InvalidArgumentError: a bad NATS setting.
    """
    stream = stream or sys.stdout
    tty = stream.isatty() if not isinstance(stream, io.StringIO) else False
    if nats:
        return _monitor_nats(run, rank=rank, interval=interval, replay=replay, speed=speed, once=once,
                             stream=stream, tty=tty, url=nats, subject=subject, options=nats_options or {})
    if not run:
        raise FileNotFoundError("no run given: name the run (see `esper runs`)")
    follower = LogFollower(run, rank=rank, root=root)
    view = RunView(run=run)
    try:
        if once:
            for ev in follower.poll():
                view.add(ev)
            _show(render_frame(view), stream, tty)
            return 0
        if replay:
            for ev in follower.poll():
                view.add(ev)
                if ev.get("kind") == "epoch":
                    _show(render_frame(view), stream, tty)
                    if speed > 0:
                        time.sleep(1.0 / speed)
            _show(render_frame(view), stream, tty)
            return 0
        while True:
            fresh = follower.poll()
            for ev in fresh:
                view.add(ev)
            if fresh or view.events == 0:
                _show(render_frame(view), stream, tty)
            if view.ended:
                return 0
            time.sleep(interval)
    finally:
        follower.close()


def _monitor_nats(run: str | None, *, rank: int, interval: float, replay: bool, speed: float, once: bool,
                  stream: IO[str], tty: bool, url: str, subject: str | None, options: dict[str, Any]) -> int:
    """``monitor`` with its events from NATS (see :func:`monitor`)."""
    follower = oona.NatsFollower(url, None if subject else run, rank=rank, subject=subject, **options)
    view = RunView(run=run or "")

    def add(ev: dict[str, Any]) -> bool:
        if view.run and ev.get("run") != view.run:
            return False  # another run on a wildcard subject
        view.add(ev)
        return True

    said = ""

    def unconnected() -> str:
        """Go's reason while the follower has never connected (a refused password, no server), said
        once on stderr per new reason; "" once connected."""
        nonlocal said
        why = follower.state.get("last_error") or "no connection yet"
        if follower.state.get("mode") or follower.state.get("connected"):
            return ""
        if why != said:
            print(f"esper monitor: not following {url} yet: {why}", file=sys.stderr, flush=True)
            said = why
        return why

    try:
        if once or replay:
            for ev in _caught_up(follower, interval):
                if add(ev) and replay and ev.get("kind") == "epoch":
                    _show(render_frame(view), stream, tty)
                    if speed > 0:
                        time.sleep(1.0 / speed)
            if unconnected():
                return 1  # nothing was read: no frame that would look like an empty run
            _show(render_frame(view), stream, tty)
            return 0
        _show(render_frame(view), stream, tty)
        while True:
            fresh = [ev for ev in follower.poll(interval) if add(ev)]
            if fresh:
                _show(render_frame(view), stream, tty)
            else:
                unconnected()
            if view.ended:
                return 0
    finally:
        follower.close()
