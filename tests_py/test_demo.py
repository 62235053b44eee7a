"""`esper demo --quick` end to end: real training, real Go session, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quick_demo_writes_table_json_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "esper", "demo", "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO / "python")),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "fixed small" in proc.stdout and "same final shape, from scratch" in proc.stdout
    report = json.loads((out / "results.json").read_text())
    rows = {r["config"].split(" (")[0]: r for r in report["tasks"]["digits"]["rows"]}
    for name in ("fixed small", "fixed large", "same final shape, from scratch", "random placement, same budget"):
        assert 0.0 < rows[name]["test_acc_mean"] <= 100.0
        assert rows[name]["train_flops_mean"] > 0
    bars = report["tasks"]["digits"]["bars"]
    assert set(bars) >= {"vs_scratch", "auto_size", "vs_random", "vs_hand", "germination_output_change_max"}
    # Germination never changes the model's output.
    assert bars["germination_output_change_max"] == 0.0
    assert report["controls"]["moons"]["germinations"]
    png = (out / "growth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
