"""``esper bench``: every performance figure of Esper beside its baseline, measured in one run.

Prints one table and writes ``<out>/<date>-<host>[-tag].json``, ``<out>/latest[-tag].json`` and
``<out>/latest[-tag].md`` (the machine, then the table). ``latest.md`` also carries the CUDA table of
``latest-cuda.json`` when that file is there. Where ``README.md`` (in the working directory) holds
the markers ``<!-- bench:begin -->`` and ``<!-- bench:end -->``, a full run rewrites what lies
between them.

Sections (in order): abi, cache, decision (Go core, inside Go and through the ABI), dormant,
active, peft, scaling (with, on CPU, the session's per-call costs and Go memory per layer at 10, 100
and 1000 layers x 1, 2 and 4 slots: bench/scale.py), compile (training steps, also on CUDA when
present; compile: both models under
torch.compile), metrics (a step with Go's metrics endpoint served and scraped against the same step
without), memory. Step figures are taken
with one torch thread, interleaved with their baseline (harness.compare); see the modules of this
package for what each row measures.

Beyond ``esper bench [--quick] [--out DIR]``, ``python -m esper.bench.run`` takes ``--sections``,
``--devices``, ``--tag`` (e.g. ``--devices cuda --tag cuda`` on a GPU machine) and ``--only`` (time
only the training-step rows whose name holds one of the given substrings).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .rows import Row, format_markdown, format_table

__all__ = ["main", "run", "describe_machine", "SECTIONS", "BEGIN", "END"]

#: Every section, in the order they run.
SECTIONS = ("abi", "cache", "decision", "bus", "karn", "dormant", "active", "peft", "scaling", "compile", "metrics",
            "memory", "distributed")
#: Sections that also run on CUDA.
DEVICE_SECTIONS = ("dormant", "active", "peft", "scaling", "compile", "memory")
#: How the figures are timed (printed above every table).
CLOCKS = ("Ratios are Esper / baseline: for training steps the median of per-round ratios of interleaved "
          "rounds, spread their min..max; elsewhere the spread is the figure's min..max over rounds. CPU rows: "
          "CPU time of the bench process with one torch thread (what the work costs, not what neighbours on a "
          "shared machine take from it), except the rows 'after 1 ms of torch work' (wall time of one call); "
          "CUDA rows: wall time with torch.cuda.synchronize; Go benchmark rows: `go test -bench` inside Go.")
BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


@dataclass(frozen=True)
class Plan:
    """How much to measure: quick (a smoke run) or full; ``only``: the training-step rows to time
    (substrings of their names; all when empty)."""

    quick: bool
    only: tuple[str, ...] = ()

    def steps(self) -> Any:
        from .steps import StepSettings

        if self.quick:
            return StepSettings(rounds=5, block_s=0.004, warmup=10, max_inner=200, only=self.only)
        return StepSettings(rounds=25, block_s=0.02, warmup=20, only=self.only)

    @property
    def rounds(self) -> int:
        return 5 if self.quick else 9

    @property
    def go_benchtime(self) -> str:
        return "30ms" if self.quick else "200ms"

    @property
    def memory_rounds(self) -> int:
        return 2 if self.quick else 5

    @property
    def memory_models(self) -> list[str]:
        return ["TinyMLP"] if self.quick else ["TinyMLP", "WideMLP"]

    @property
    def cuda_memory_models(self) -> list[str]:
        return ["TinyMLP"] if self.quick else ["TinyMLP", "WideMLP", "SmallCNN", "TinyTransformer"]


# ---------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _go_version() -> str | None:
    go = shutil.which("go")
    if go is None:
        return None
    try:
        return subprocess.run([go, "version"], capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None


def describe_machine() -> dict[str, Any]:
    """The machine and software the figures were taken on."""
    from .. import build_info

    info: dict[str, Any] = {
        "host": socket.gethostname(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": _version("numpy"),
        "peft": _version("peft"),
        "go_toolchain": _go_version(),
    }
    try:
        info["go_library"] = build_info()
    except Exception as e:  # noqa: BLE001 - a machine without the library still gets described
        info["go_library"] = {"error": str(e)}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {
            "device": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cuda_runtime": torch.version.cuda,
        }
    else:
        info["cuda"] = None
    return info


def _version(module: str) -> str | None:
    try:
        return str(__import__(module).__version__)
    except Exception:  # noqa: BLE001 - absent or broken: not installed, as far as we are concerned
        return None


def machine_line(m: dict[str, Any]) -> str:
    """One line naming the machine, for the table's heading."""
    lib = m.get("go_library") or {}
    cuda = m.get("cuda")
    parts = [
        f"{m['cpu']} ({m['cores_usable']} of {m['cores']} cores usable), {m['torch_threads']} torch thread(s)",
        f"torch {m['torch']}",
        f"Python {m['python']}",
        f"libesper {lib.get('version', '?')} ({lib.get('commit', '?')}, {lib.get('go', lib.get('go_version', '?'))})",
    ]
    if m.get("peft"):
        parts.append(f"peft {m['peft']}")
    if cuda:
        parts.append(f"CUDA: {cuda['device']} ({cuda['memory_gib']} GiB, CUDA {cuda['cuda_runtime']})")
    return "; ".join(parts)


# ---------------------------------------------------------------------- sections


def _section_rows(name: str, device: torch.device, plan: Plan, state: dict[str, Any]) -> list[Row]:
    """Runs one section on one device and returns its rows."""
    from . import memory, native, steps, widen

    if (name in ("abi", "cache", "decision", "metrics") or (name == "scaling" and device.type == "cpu")) \
            and "go" not in state:
        state["go"] = native.go_benchmarks(plan.go_benchtime, count=5)
    if name == "abi":
        from .abi import bench_abi, bench_cold

        return (bench_abi(plan.rounds) + native.session_rows(state["go"], plan.rounds)
                + bench_cold(plan.rounds, 20 if plan.quick else 60))
    if name == "cache":
        from .recording import recording_rows

        return (native.cache_rows(state["go"], plan.rounds, plan.quick)
                + native.germination_rows(plan.rounds, plan.quick) + recording_rows(plan.rounds, plan.quick))
    if name == "decision":
        from .nets import net_rows

        return (native.decision_rows(state["go"], plan.rounds, plan.quick)
                + native.learned_rows(state["go"], plan.rounds, plan.quick)
                + native.ppo_rows(state["go"], plan.rounds, plan.quick) + net_rows(plan.rounds, plan.quick))
    if name == "karn":
        from .karnsearch import karn_rows

        return karn_rows(plan.rounds, plan.quick)
    if name == "bus":
        from .runlog import footprint_rows, infra_rows, runlog_rows

        return (native.bus_rows(plan.rounds, plan.quick) + runlog_rows(device, plan.steps())
                + infra_rows(device, plan.steps()) + footprint_rows(plan.memory_rounds, plan.steps()))
    if name == "dormant":
        return steps.dormant_rows(device, plan.steps()) + widen.dormant_rows(device, plan.steps())
    if name == "active":
        return steps.active_rows(device, plan.steps()) + widen.active_rows(device, plan.steps())
    if name == "peft":
        return steps.peft_rows(device, plan.steps())
    if name == "scaling":
        from . import scale

        settings = plan.steps()
        rows = steps.scaling_rows(device, settings) + scale.medium_rows(device, settings)
        if device.type == "cpu":
            layers = scale.LAYERS[:2] if plan.quick else scale.LAYERS  # a smoke run leaves out 1000 layers
            rows += (scale.session_scale_rows(plan.rounds, plan.quick, layers=layers, wants=settings.wants)
                     + scale.memory_rows(state["go"]))
        return rows
    if name == "compile":
        return steps.compile_rows(device, plan.steps(), ("TinyMLP",) if plan.quick else ("TinyMLP", "WideMLP"))
    if name == "metrics":
        scrape = state["go"].row("metrics", "one scrape in Go: read the session, gather, encode the text",
                                 "MetricsText", "us", None,
                                 "2 layers x 2 slots, one seed live; what a scrape costs this process")
        labels = ("TinyMLP",) if plan.quick else ("TinyMLP", "WideMLP")
        return [r for r in (scrape, *steps.metrics_rows(device, plan.steps(), labels)) if r is not None]
    if name == "memory":
        if device.type == "cuda":
            return memory.cuda_memory_rows(plan.cuda_memory_models, max(plan.memory_rounds, 5))
        return memory.per_layer_rows(device, rounds=plan.memory_rounds) + memory.rss_rows(
            plan.memory_models, plan.memory_rounds)
    if name == "distributed":
        from .ranks import distributed_rows

        return distributed_rows(plan.rounds, plan.quick)
    raise ValueError(f"unknown bench section {name!r}; sections: {', '.join(SECTIONS)}")


def _error_row(section: str, device: str, exc: BaseException) -> Row:
    return Row(section, f"{section} section failed", device, "", None,
               note=f"error: {type(exc).__name__}: {exc}"[:500])


# ---------------------------------------------------------------------- output


def _suffix(tag: str) -> str:
    return f"-{tag}" if tag else ""


def _markdown(report: dict[str, Any], rows: Sequence[Row], notes: bool = True) -> str:
    m = report["machine"]
    mode = "quick (smoke) run" if report["quick"] else "full run"
    s = report["summary"]
    return (f"Measured {m['date']} on `{m['host']}` ({mode}, {report['seconds']:.0f} s): {machine_line(m)}. "
            f"{s['ok']} targets met, {s['miss']} missed.\n\n" + format_markdown(rows, notes) + "\n")


def _library(doc: dict[str, Any]) -> tuple[str, int | None]:
    """The commit and ABI version of the library a report measured."""
    lib = doc.get("machine", {}).get("go_library") or {}
    return str(lib.get("commit", "unknown")), lib.get("abi_version")


def stale_note(cuda: dict[str, Any], cpu: dict[str, Any] | None) -> str:
    """A warning above the CUDA table when it measured another library than the CPU table (the CUDA
    table is re-measured only where a GPU is lent, so it can lag): its commit and ABI against the CPU
    table's. Empty when both measured the same commit."""
    commit, abi = _library(cuda)
    if cpu is None:
        return ""
    cpu_commit, cpu_abi = _library(cpu)
    if commit == cpu_commit:
        return ""
    return (f"**Not re-measured since commit `{commit}` (ABI {abi}).** The CPU table above measured `{cpu_commit}` "
            f"(ABI {cpu_abi}); the step path changed in between, so these CUDA figures describe the older "
            f"library until `python -m esper.bench.run --devices cuda --tag cuda` runs again on a GPU.\n\n")


def readme_section(out_dir: Path) -> str:
    """The README's Measured section: the latest CPU and CUDA tables without notes, and where the
    full tables are; a CUDA table of another commit than the CPU table says so (:func:`stale_note`)."""
    parts = ["`make bench` (`esper bench`) measures these side by side in one run; what each row "
             f"compares and why a target is missed: [{out_dir}/latest.md]({out_dir}/latest.md). " + CLOCKS]
    cpu: dict[str, Any] | None = None
    for name, title in (("latest.json", "CPU"), ("latest-cuda.json", "CUDA")):
        path = out_dir / name
        if path.is_file():
            doc = json.loads(path.read_text())
            note = stale_note(doc, cpu) if title == "CUDA" else ""
            cpu = doc if title == "CPU" else cpu
            parts.append(f"#### {title}\n\n" + note + _markdown(doc, _rows_of(doc), notes=False))
    return "\n\n".join(parts) + "\n"


def _rows_of(doc: dict[str, Any]) -> list[Row]:
    fields = set(Row.__dataclass_fields__)
    out = []
    for d in doc.get("rows", []):
        d = {k: v for k, v in d.items() if k in fields}
        if d.get("spread") is not None:
            d["spread"] = tuple(d["spread"])
        out.append(Row(**d))
    return out


def _write(out_dir: Path, tag: str, report: dict[str, Any], rows: Sequence[Row]) -> Path:
    """Writes the dated JSON, latest[-tag].json and latest[-tag].md; returns the dated path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    host = re.sub(r"[^A-Za-z0-9_.-]", "_", report["machine"]["host"]) or "host"
    date = report["machine"]["date"][:10]
    dated = out_dir / f"{date}-{host}{_suffix(tag)}.json"
    text = json.dumps(report, indent=2, allow_nan=False) + "\n"
    for path in (dated, out_dir / f"latest{_suffix(tag)}.json"):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    md = CLOCKS + "\n\n" + _markdown(report, rows)
    if not tag:
        cuda = out_dir / "latest-cuda.json"
        if cuda.is_file():
            try:
                doc = json.loads(cuda.read_text())
                md += "\n### CUDA\n\n" + stale_note(doc, report) + _markdown(doc, _rows_of(doc))
            except (ValueError, KeyError, TypeError) as e:
                md += f"\n(latest-cuda.json unreadable: {e})\n"
    (out_dir / f"latest{_suffix(tag)}.md").write_text(md)
    return dated


def update_readme(readme: Path, section: str) -> bool:
    """Replaces the text between the bench markers of readme; False when it has none."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return False
    readme.write_text(text[: start + len(BEGIN)] + "\n" + section.rstrip() + "\n" + text[end:])
    return True


def _report(machine: dict[str, Any], quick: bool, started: float, rows: Sequence[Row],
            errors: list[str]) -> dict[str, Any]:
    summary = {"rows": len(rows), "ok": sum(r.ok is True for r in rows), "miss": sum(r.ok is False for r in rows),
               "errors": errors}
    return {"version": 1, "quick": quick, "seconds": time.time() - started, "machine": machine,
            "summary": summary, "rows": [r.to_dict() for r in rows]}


# ---------------------------------------------------------------------- entry points


def run(quick: bool, out_dir: str, sections: Sequence[str] | None = None, devices: Sequence[str] | None = None,
        tag: str = "", echo: Callable[[str], None] = print,
        only: Sequence[str] = ()) -> tuple[list[Row], dict[str, Any]]:
    """Measures the chosen sections on the chosen devices and writes the results.

    Args:
        quick: a smoke run (fewer rounds, shorter blocks, fewer models in the memory section).
        out_dir: the results folder.
        sections: a subset of :data:`SECTIONS` (default: all).
        devices: "cpu" and/or "cuda" (default: cpu, and cuda when available); the Go sections run
            when cpu is among them.
        tag: a suffix of the file names ("cuda" gives latest-cuda.json).
        echo: where progress lines go.
        only: time only the training-step rows whose name contains one of these (e.g. "TinyMLP",
            "Deep(10)"); a partial run, for working on one row: write it to another ``out_dir``.

    Returns:
        (rows, report) as written to the JSON file.
    """
    chosen = list(sections) if sections else list(SECTIONS)
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; sections: {', '.join(SECTIONS)}")
    devs = list(devices) if devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" in devs and not torch.cuda.is_available():
        raise ValueError("devices include cuda, but torch.cuda.is_available() is False")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    plan = Plan(quick, tuple(only))
    started = time.time()
    machine = describe_machine()
    out = Path(out_dir)
    rows: list[Row] = []
    errors: list[str] = []
    state: dict[str, Any] = {}
    try:
        for device_name in devs:
            device = torch.device(device_name)
            for name in chosen:
                if device.type == "cuda" and name not in DEVICE_SECTIONS:
                    continue
                t0 = time.time()
                try:
                    got = _section_rows(name, device, plan, state)
                except Exception as e:  # noqa: BLE001 - one failing section must not lose the others
                    traceback.print_exc(file=sys.stderr)
                    errors.append(f"{name}/{device.type}: {type(e).__name__}: {e}")
                    got = [_error_row(name, device.type, e)]
                rows += got
                echo(f"  {name:<9} {device.type:<4} {len(got):>2} rows in {time.time() - t0:5.1f} s")
                _write(out, tag, _report(machine, quick, started, rows, errors), rows)  # partial results survive
        machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        report = _report(machine, quick, started, rows, errors)
        dated = _write(out, tag, report, rows)
    finally:
        torch.set_num_threads(threads)
    echo("")
    echo(f"Esper bench ({'quick' if quick else 'full'}), {machine_line(machine)}")
    echo(CLOCKS)
    echo(format_table(rows))
    notes = [f"  [{r.section}] {r.name}: {'; '.join(x for x in (r.baseline_name, r.note) if x)}" for r in rows
             if r.ok is False or r.value is None]
    if notes:
        echo("\nmisses and missing figures:")
        for line in notes:
            echo(line)
    s = report["summary"]
    echo(f"\n{s['ok']} ok, {s['miss']} miss, {len(errors)} section error(s), {report['seconds']:.0f} s; "
         f"wrote {dated} and {out / ('latest' + _suffix(tag) + '.json')}")
    return rows, report


def main(quick: bool = False, out_dir: str = "bench/results") -> int:
    """``esper bench``: measure everything, print the table, write the results.

    A quick run writes into ``<out_dir>/quick`` so that it never replaces the figures of a full run
    (and it leaves README.md alone).

    Returns:
        0, or 1 when a section failed to run (a missed target is a result, not a failure).
    """
    _, report = run(quick, str(Path(out_dir) / "quick") if quick else out_dir)
    if not quick and update_readme(Path("README.md"), readme_section(Path(out_dir))):
        print("updated the Measured section of README.md")
    return 1 if report["summary"]["errors"] else 0


def _split(text: str) -> list[str] | None:
    return [x for x in text.split(",") if x] or None


def _cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m esper.bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--sections", default="", help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--devices", default="", help="comma-separated: cpu, cuda")
    p.add_argument("--tag", default="", help="file name suffix, e.g. cuda")
    p.add_argument("--only", default="", help="'|'-separated substrings (row names hold commas): time only the "
                                              "training-step rows whose name holds one (e.g. 'dormant: TinyMLP|"
                                              "Deep(10)'); write such a run to another --out")
    a = p.parse_args(argv)
    only = [x for x in a.only.split("|") if x]
    _, report = run(a.quick, a.out, _split(a.sections), _split(a.devices), a.tag, only=only)
    return 1 if report["summary"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(_cli())
