"""The memory benchmark runs end to end and prints RSS at each tenth of the images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from titok.dataset.bench_memory import main


def test_the_memory_benchmark_prints_rss_against_images_done(tiny_artifact: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--images", "200", "--model", str(tiny_artifact), "--batch-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "200 images of 2 x 2 px in one tar shard" in out
    done = [int(m) for m in re.findall(r"^\| (\d+) \| [\d.]+ \| [+-][\d.]+ \|$", out, re.M)]
    assert done[0] == 0 and done[-1] == 200 and len(done) >= 8 and done == sorted(done)
    assert re.search(r"growth from \d+ to 200 images: -?\d+ bytes per image", out)
