"""`titok bench-tokenize` prints its table, and the progress line and summary say what a run did (no timing asserts)."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from dataset_helpers import photo, write_folder

from titok.dataset.bench import main
from titok.dataset.progress import Progress, Summary


def test_bench_tokenize_prints_raw_and_job_rows(tiny_artifact: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "pics", {f"{i}.jpg": photo(i, size=(60, 40), fmt="JPEG") for i in range(5)})
    assert main(["--model", str(tiny_artifact), "--images", str(folder), "--repeat", "2", "--workers", "0,1",
                 "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "| run | dtype | decoding workers | images | images/s | / raw |" in out
    assert "TITOK_DTYPE=float32; CPU flags: " in out  # the dataset conftest's setting
    assert re.search(r"\| raw artifact \(read \+ decode \+ encode, one loop; best of 2\) \| float32 \| - \| 10 \| "
                     r"[\d.]+ \| 1\.00 \|", out)
    for w in (0, 1):
        assert re.search(rf"\| titok tokenize \| float32 \| {w} \| 10 \| [\d.]+ \| [\d.]+ \|", out), out
    assert main(["--model", str(tiny_artifact), "--images", str(folder), "--dtype", "float64"]) == 2
    assert "--dtype" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_shows_rate_shards_and_eta() -> None:
    term = _Terminal()
    progress = Progress(total_bytes=1000, shards=4, stream=term)
    progress.every_s = 0.0
    progress.update(images=10, nbytes=250, shards=1)
    line = term.getvalue().rsplit("\r", 1)[1]
    assert re.match(r"tokenize: 10 images, [\d.]+ images/s, shards 1/4, 25%, ETA \d+:\d\d:\d\d", line), line
    progress.close()
    assert term.getvalue().endswith("\n")


def test_summary_table_counts_and_names_the_error_files() -> None:
    text = Summary(images=90, errors=3, shards_written=2, shards_skipped=5, seconds=3.0,
                   error_files=["out/a.errors.jsonl"]).table()
    assert "images tokenized                   90\n" in text
    assert "images skipped (errors)            3\n" in text
    assert "shards skipped (already complete)  5\n" in text
    assert "throughput                         30.0 images/s\n" in text
    assert text.endswith("errors are listed in: out/a.errors.jsonl\n")
