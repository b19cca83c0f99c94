"""scripts/overhead_layers.py, the event-loop cost of each layer of a one-item request, runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "overhead_layers.py"
pytestmark = pytest.mark.slow  # five servers, one of them the service with the bundled model


def test_overhead_layers_prints_a_row_for_every_layer() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--requests", "40", "--rounds", "1", "--concurrency", "4"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if len(cells) == 3 and cells[0] in ("asgi", "fastapi", "context", "context, no access log", "service"):
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    assert len(rows) == 5, done.stdout
    assert all(ms >= 0 and per_s > 0 for ms, per_s in rows.values()), rows
