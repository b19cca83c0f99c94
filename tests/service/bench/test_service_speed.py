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
                           "--rounds", "1", "--concurrency", "2", "--batch", "8", "--overhead"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    ops = ("encode photo", "decode -> PNG", "decode .npy", "encode 32 photos", "decode .npy x32")
    assert "| items/s (best of 1) | " + " | ".join(ops) + " |" in out
    dtype = next(ln for ln in out.splitlines() if ln.startswith("| service new (")).split("(")[1].split(";")[0]
    for row in ("| service today (float32;", "| service new (", f"| raw engine ({dtype}, batch 8, one call at a time",
                f"| raw engine ({dtype}, batch 8, 2 workers x 1 thread) |", "| new / today |",
                "| new / raw engine (the faster layout) |", "| raw engine / new (CPU per item) |",
                "| server CPU ms per item |", "| of which the event loop |",  # --overhead: the instant model
                "| the load generator's CPU ms per item (same cores) |"):
        line = next((ln for ln in out.splitlines() if ln.startswith(row)), None)
        assert line is not None, row
        cells = [c.strip() for c in line.split("|")[2:-1]]
        assert len(cells) == len(ops) and all(float(c) >= 0 for c in cells), line  # no nan: every request answered
    assert "round 1 raw engine" in out and "'model_workers': '1'" in out
    # the ratio row is against the faster of the two raw layouts, cell by cell
    rows = {ln.split("|")[1].strip(): [float(c) for c in ln.split("|")[2:-1]] for ln in out.splitlines()
            if ln.startswith(("| service new (", f"| raw engine ({dtype}, batch 8", "| new / raw engine"))}
    new = next(v for k, v in rows.items() if k.startswith("service new"))
    raws = [v for k, v in rows.items() if k.startswith("raw engine")]
    ratio = rows["new / raw engine (the faster layout)"]
    assert len(raws) == 2
    assert ratio == pytest.approx([round(n / max(r), 2) for n, *r in zip(new, *raws, strict=True)], abs=0.011)


@pytest.mark.slow
def test_service_speed_measures_only_the_cells_asked_for(tiny_artifact: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--model", str(tiny_artifact), "--requests", "16",
                           "--rounds", "1", "--concurrency", "2", "--batch", "8", "--ops", "decode .npy",
                           "--configs", "new:", "--raw-workers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| items/s (best of 1) | decode .npy |" in out
    assert "encode photo 0" not in out and "decode -> PNG" not in out.split("| items/s")[1]
    raw_rows = [ln for ln in out.splitlines() if ln.startswith("| raw engine (") and "batch 8" in ln]
    assert len(raw_rows) == 1 and "one call at a time" in raw_rows[0]  # --raw-workers 1: one layout
    bad = subprocess.run([sys.executable, str(SCRIPT), "--ops", "decode png"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'decode png'" in bad.stderr


def test_the_instant_engine_answers_every_item_with_the_models_own_result(tiny_artifact: Path) -> None:
    """titok.bench.instant stands in for the model: real shapes and dtypes, one real result, done at once."""
    import numpy as np

    from titok.bench.instant import InstantEngine
    from titok.core.engine import Engine

    engine = Engine.load(tiny_artifact, "cpu", "float32", 1)
    try:
        instant = InstantEngine(engine)
        images = np.zeros((3, engine.image_size, engine.image_size, 3), np.uint8)
        tokens = instant.submit("encode", images)
        assert tokens.done()
        assert tokens.result().shape == (3, engine.num_tokens) and tokens.result().dtype == np.int64
        pixels = instant.submit("decode", tokens.result()[:, :2]).result()  # any k: the stand-in's one picture
        assert pixels.shape == (3, engine.image_size, engine.image_size, 3) and pixels.dtype == np.uint8
        real = engine.submit("decode", tokens.result()[:1]).result()
        assert np.array_equal(pixels[0], real[0])  # the model's own reconstruction of the stand-in's tokens
        assert instant.info() == engine.info() and instant.num_tokens == engine.num_tokens
        with pytest.raises(ValueError, match="roundtrip"):
            instant.submit("roundtrip", images).result()
    finally:
        engine.close()
