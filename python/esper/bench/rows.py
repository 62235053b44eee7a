"""One benchmark row: Esper's figure, the baseline measured in the same run, their ratio, the
spread over rounds, the target, and whether it is met. Also the table formatting."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .harness import Timing, ratio

__all__ = ["Row", "Target", "format_table", "format_markdown", "timing_row", "samples_row"]


@dataclass(frozen=True)
class Target:
    """A bar a figure must clear: ``what`` is "ratio" or "value", ``op`` is "<=", "<" or ">="."""

    what: str
    op: str
    limit: float
    text: str

    def met(self, value: float | None, ratio_: float | None) -> bool | None:
        """Whether the figure clears the bar (None when the figure is missing)."""
        x = ratio_ if self.what == "ratio" else value
        if x is None or not math.isfinite(x):
            return None
        if self.op == "<=":
            return x <= self.limit
        if self.op == "<":
            return x < self.limit
        return x >= self.limit


def ratio_at_most(limit: float, text: str | None = None) -> Target:
    """Esper / baseline must be <= limit."""
    return Target("ratio", "<=", limit, text or f"<= {limit:.2f}x")


def value_at_most(limit: float, text: str, strict: bool = False) -> Target:
    """Esper's figure must be <= limit (< when strict)."""
    return Target("value", "<" if strict else "<=", limit, text)


def value_at_least(limit: float, text: str) -> Target:
    """Esper's figure must be >= limit."""
    return Target("value", ">=", limit, text)


@dataclass
class Row:
    """One line of the benchmark table.

    Attributes:
        section: the group ("dormant", "active", "peft", "abi", "cache", "decision", "scaling", "compile",
            "metrics", "memory", "distributed").
        name: what is measured.
        device: "cpu" or "cuda".
        unit: the unit of ``value`` and ``baseline``.
        value: Esper's figure (a median over rounds), None when it could not be measured.
        baseline: the baseline's figure measured in the same run, or None.
        baseline_name: what the baseline is.
        ratio: value / baseline: the median of per-round ratios where rounds are paired.
        spread: (min, max) over rounds of the per-round ratio (``spread_of`` "ratio") or of the figure
            (``spread_of`` "value").
        spread_of: "ratio" or "value".
        rounds: how many rounds the figures are medians over.
        target: the bar, as text ("" for an informative row).
        ok: whether the bar is met (None: no bar, or no figure).
        source: "python" (timed from Python), "ABI" (a call into Go from Python), "Go benchmark".
        note: what differs between the sides, why a figure is missing, or what the bar is about.
        extra: further figures (per-call times, inner calls per round, ...).
    """

    section: str
    name: str
    device: str
    unit: str
    value: float | None
    baseline: float | None = None
    baseline_name: str = ""
    ratio: float | None = None
    spread: tuple[float, float] | None = None
    spread_of: str = "ratio"
    rounds: int = 0
    target: str = ""
    ok: bool | None = None
    source: str = "python"
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite floats become None)."""
        d = asdict(self)
        for key in ("value", "baseline", "ratio"):
            v = d[key]
            if isinstance(v, float) and not math.isfinite(v):
                d[key] = None
        if d["spread"] is not None:
            spread = [float(x) for x in d["spread"]]
            # A row that was not measured has a NaN spread: none, as JSON cannot hold NaN.
            d["spread"] = spread if all(math.isfinite(x) for x in spread) else None
        return d


def timing_row(section: str, name: str, device: str, esper: Timing, base: Timing, *, baseline_name: str,
               target: Target | None, note: str = "", unit: str = "ms", extra: dict[str, Any] | None = None) -> Row:
    """A row from two interleaved timings (seconds per call): median figures and per-round ratios."""
    scale = {"ms": 1e3, "us": 1e6, "s": 1.0}[unit]
    r, lo, hi = ratio(esper, base)
    row = Row(section, name, device, unit, esper.median * scale, base.median * scale, baseline_name, r, (lo, hi),
              "ratio", len(esper.rounds), target.text if target else "", None, "python", note, dict(extra or {}))
    if target is not None:
        row.ok = target.met(row.value, row.ratio)
    return row


def samples_row(section: str, name: str, device: str, samples: Sequence[float], unit: str, *,
                target: Target | None, source: str, note: str = "", baseline: float | None = None,
                baseline_name: str = "", extra: dict[str, Any] | None = None) -> Row:
    """A row from per-round figures of Esper alone (spread is min..max of the figure); the ratio is
    to a baseline figure when one is given."""
    value = statistics.median(samples)
    r = value / baseline if baseline else None
    row = Row(section, name, device, unit, value, baseline, baseline_name, r, (min(samples), max(samples)),
              "value", len(samples), target.text if target else "", None, source, note, dict(extra or {}))
    if target is not None:
        row.ok = target.met(row.value, row.ratio)
    return row


def _num(v: float | None, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    text = f"{v:.3g}" if a < 100 else f"{v:,.0f}"
    if 100 <= a < 1000:
        text = f"{v:.1f}"
    return f"{text} {unit}".rstrip()


def _spread(row: Row) -> str:
    if row.spread is None:
        return "-"
    lo, hi = row.spread
    if row.spread_of == "ratio":
        return f"{lo:.3f}..{hi:.3f}x"
    return f"{_num(lo)}..{_num(hi)} {row.unit}"


def _ok(row: Row) -> str:
    if row.ok is None:
        return "-" if not row.target else "n/a"
    return "ok" if row.ok else "MISS"


def _cells(row: Row) -> list[str]:
    return [
        row.section,
        row.name,
        row.device,
        _num(row.value, row.unit),
        _num(row.baseline, row.unit),
        f"{row.ratio:.3f}x" if row.ratio is not None and math.isfinite(row.ratio) else "-",
        _spread(row),
        str(row.rounds or "-"),
        row.target or "-",
        _ok(row),
    ]


_HEADER = ["section", "row", "dev", "Esper", "baseline", "ratio", "spread", "rounds", "target", "ok"]


def format_table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table, followed by the notes of rows that have one."""
    cells = [_HEADER] + [_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(_HEADER))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(x.ljust(w) if i < 3 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Row], notes: bool = True) -> str:
    """The rows as a Markdown table; with ``notes``, baseline names and notes in a last column."""
    head = _HEADER + (["baseline is / note"] if notes else [])
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = _cells(r)
        if notes:
            cells.append("; ".join(x for x in (r.baseline_name, r.note) if x))
        out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(out)
