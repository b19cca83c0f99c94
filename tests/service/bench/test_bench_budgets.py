"""`titok bench-budgets` on the toy prefix model: both tables and the plot come out; a fixed-length model is refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefix_helpers import prefix_artifact  # noqa: F401  (a fixture)

from titok.bench.bench_budgets import main


@pytest.mark.slow
def test_both_tables_and_the_plot(prefix_artifact: Path, tmp_path: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    plot = tmp_path / "k.png"
    assert main(["--model", str(prefix_artifact), "--batch", "4", "--repeats", "1", "--threads", "1",
                 "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert [int(k) for k in re.findall(r"^\| (\d+) \| [\d.]+ \| [\d.]+ \|$", out, re.M)] == [1, 2, 4, 8]
    assert re.search(r"^\| plain encode \| [\d.]+ \| 1\.00 \| 0\.00 \|", out, re.M)
    targets = re.findall(r"^\| target_psnr=[\d.]+ \| [\d.]+ \| [\d.]+ \| ([\d.]+) \| [\d.]+ \| ([\d.]+) \|$", out, re.M)
    assert len(targets) == 3 and all(0 < float(d) <= 4 for d, _ in targets)  # at most ceil(log2 8) + 1 decodes
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fixed_length_model_is_refused(tiny_artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--model", str(tiny_artifact)]) == 2
    assert "is not prefix-decodable" in capsys.readouterr().err
