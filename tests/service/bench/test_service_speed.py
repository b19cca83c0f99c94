"""scripts/service_speed.py, the one-run comparison of settings against the raw engine, runs end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "service_speed.py"


@pytest.mark.slow
def test_service_speed_prints_every_cell_for_today_new_and_the_raw_engine(tiny_artifact: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_artifact), "--requests", "16",
                           "--rounds", "1", "--concurrency", "2", "--batch", "8"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    ops = ("encode photo", "decode -> PNG", "decode .npy", "encode 32 photos", "decode .npy x32")
    assert "| items/s (best of 1) | " + " | ".join(ops) + " |" in out
    for row in ("| service today (float32;", "| service new (", "| raw engine (", "| new / today |",
                "| new / raw engine |", "| raw engine / new (CPU per item) |"):
        line = next((ln for ln in out.splitlines() if ln.startswith(row)), None)
        assert line is not None, row
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert len(cells) == len(ops) and all(float(c) > 0 for c in cells), line  # no nan: every request answered
    assert "round 1 raw engine" in out and "'model_workers': '1'" in out
