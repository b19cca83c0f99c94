"""`titok bench --quick` with the tiny artifact prints its tables (no timing asserts)."""

from __future__ import annotations

from pathlib import Path

from service.bench import main


def test_bench_quick_prints_the_table(tiny_artifact: Path, capsys) -> None:
    assert main(["--model", str(tiny_artifact), "--quick", "--requests", "8", "--concurrency", "1,4",
                 "--duration", "0.5", "--rate", "8", "--soak", "20"]) == 0
    out = capsys.readouterr().out
    assert ("| mode | op | load | requests | items/s | p50 ms | p95 ms | p99 ms | mean batch | rejected "
            "| client CPU ms/req |") in out
    for row in ("| service | encode | closed c=1 |", "| service | encode | closed c=4 |",
                "| service | decode | closed c=4 |", "| service | encode | open 8/s |",
                "| service | decode | open 8/s |",
                "| batching off | encode | closed c=4 |", "| batching off | decode | closed c=4 |",
                "| raw artifact | encode | batch 8 |", "| raw artifact | decode | batch 8 |",
                "| service c=4 / raw artifact |", "| batching on / off (c=4) |"):
        assert row in out, row
    assert "server RSS: after warm-up" in out and "peak" in out
    assert "| service | encode | soak c=16 x10 |" in out and "| service | decode | soak c=16 x10 |" in out
    assert "| soak requests | server RSS MB |" in out and "| 20 |" in out and "RSS growth over the soak" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| service |") or ln.startswith("| batching off |")]
    assert all(ln.split("|")[10].strip() == "0.0%" for ln in rows), rows  # nothing refused at this load
    assert "| PNG level | ms / image | KB / image |" in out
