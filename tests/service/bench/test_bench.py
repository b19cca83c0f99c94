"""`titok bench --quick` with the tiny artifact prints its tables (no timing asserts)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from titok.bench import bench_formats
from titok.bench.bench import Result, main, merge


@pytest.mark.slow
def test_bench_quick_prints_the_table(tiny_artifact: Path, tmp_path: Path, capsys) -> None:
    plot = tmp_path / "bench.png"
    assert main(["--model", str(tiny_artifact), "--quick", "--requests", "8", "--concurrency", "1,4",
                 "--duration", "0.5", "--rate", "8", "--soak", "20", "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert ("| mode | op | load | requests | items/s | p50 ms | p95 ms | p99 ms | mean batch | rejected "
            "| client CPU ms/req | model busy | dtype |") in out
    assert "CPU flags: " in out and "start-up dtype probe: float32 encode" in out
    for row in ("| service | encode | closed c=1 |", "| service | encode | closed c=4 |",
                "| service | decode | closed c=4 |", "| service | encode | open 8/s |",
                "| service | decode | open 8/s |",
                "| batching off | encode | closed c=4 |", "| batching off | decode | closed c=4 |",
                "| raw artifact | encode | batch 8 |", "| raw artifact | decode | batch 8 |",
                "| plain FastAPI | encode | closed c=4 |", "| plain FastAPI | decode | closed c=4 |",
                "| service c=4 / raw artifact |", "| batching on / off (c=4) |",
                "| service / plain per-request FastAPI (c=4) |"):
        assert row in out, row
    plain = [ln for ln in out.splitlines() if ln.startswith("| plain FastAPI |")]
    assert all(ln.split("|")[10].strip() == "0.0%" for ln in plain), plain  # the baseline answered every request
    ratio = next(ln for ln in out.splitlines() if ln.startswith("| service / plain per-request FastAPI"))
    assert all(float(c) > 0 for c in ratio.split("|")[2:4]), ratio
    assert "server RSS: after warm-up" in out and "peak" in out
    assert bench_formats.HEADER in out
    for row in ("| encode | JPEG multipart -> JSON | 32 | 8 |", "| encode | .npy -> .npy | 32 | 8 |",
                "| decode | JSON -> JSON of base64 PNGs | 32 | 8 |", "| decode | .npy -> .npy | 32 | 8 |"):
        assert row in out, row  # every format answered 200 (a failed one prints "failed: ...")
    assert "| service | encode | soak c=16 x10 |" in out and "| service | decode | soak c=16 x10 |" in out
    assert "| soak requests | server RSS MB |" in out and "| 20 |" in out and "RSS growth over the soak" in out
    rows = [ln for ln in out.splitlines() if ln.startswith("| service |") or ln.startswith("| batching off |")]
    assert all(ln.split("|")[10].strip() == "0.0%" for ln in rows), rows  # nothing refused at this load
    raw = [ln for ln in out.splitlines() if ln.startswith("| raw artifact |")]
    assert len({ln.split("|")[13].strip() for ln in rows + raw}) == 1, rows + raw  # one dtype for every mode
    assert rows[0].split("|")[13].strip() in ("float32", "bfloat16")
    busy = [ln.split("|")[12].strip() for ln in rows]  # the model thread's share of each run's wall time
    assert all(b.endswith("%") and 0 < float(b[:-1]) <= 100 for b in busy), busy
    assert all(ln.split("|")[12].strip() == "-" for ln in raw)
    assert "| PNG level | ms / image | KB / image |" in out
    with Image.open(plot) as im:  # three panels: throughput, latency, RSS over the soak
        assert im.format == "PNG" and im.width > 2 * im.height
        assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 50  # drawn, not blank
    assert f"plot: {plot}" in out


def test_bench_plot_without_matplotlib_fails_before_benchmarking(tiny_artifact: Path, tmp_path: Path,
                                                                 monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    assert main(["--model", str(tiny_artifact), "--plot", str(tmp_path / "b.png")]) == 2
    assert "--plot needs matplotlib" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists()


def test_merged_soak_rows_weigh_each_chunk_by_its_batches() -> None:
    a = Result("service", "encode", "soak", ok=20, rejected=0, seconds=2.0, latencies=[0.1] * 20, mean_batch=2.0,
               client_cpu=0.01, batches=10)
    b = Result("service", "encode", "soak", ok=8, rejected=2, seconds=2.0, latencies=[0.3] * 8, mean_batch=8.0,
               client_cpu=0.03, batches=1)
    m = merge([a, b], "soak x30")
    assert (m.ok, m.rejected, m.batches, len(m.latencies)) == (28, 2, 11, 28)
    assert m.mean_batch == pytest.approx(28 / 11)  # items over model calls, not the mean of the chunk means
    assert m.throughput == pytest.approx(7.0) and m.client_cpu == pytest.approx(0.04)
    assert "| service | encode | soak x30 | 30 | 7.0 |" in m.row() and "| 2.5 | 6.7% |" in m.row()


def test_bench_refuses_a_url_it_cannot_speak_to(capsys) -> None:
    assert main(["--url", "https://tokenizer.example.com"]) == 2
    assert "only http:// URLs" in capsys.readouterr().err


@pytest.mark.parametrize("prog", ["titok bench", "titok bench-tokenize"])
def test_both_benches_refuse_an_unknown_dtype_in_one_line(prog: str, capsys) -> None:
    from titok.dataset.bench import main as bench_tokenize

    run = main if prog == "titok bench" else bench_tokenize
    assert run(["--dtype", "fp64"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: --dtype: ") and "'bfloat16'" in err and err.count("\n") == 1


def test_a_bad_setting_beside_dtype_is_named_not_blamed_on_dtype(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("TITOK_MODEL_WORKERS", "abc")
    monkeypatch.setenv("TITOK_TORCH_THREADS", "100000")
    assert main(["--dtype", "float32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("titok bench: TITOK_MODEL_WORKERS: ") and "TITOK_TORCH_THREADS: " in err
    assert "--dtype" not in err and err.count("\n") == 1


@pytest.mark.parametrize(("argv", "env"), [(["--model", "ordered"], {}), ([], {"TITOK_MODEL": "ordered"})])
def test_bench_serves_and_times_the_model_named_by_name_or_titok_model(argv, env, monkeypatch, capsys) -> None:
    """A bundled name (or TITOK_MODEL) is the model both the service and the raw loop run: the bench once served
    TITOK_MODEL (the child read it) while timing TITOK_MODEL_PATH's model raw, and crashed on its 128-token ids."""
    import titok.bench.bench as bench
    from titok.core.models import BUNDLED

    started: list[dict[str, str]] = []

    class Exited:  # a service process that ended at once: the bench stops there, having said what it started
        def __init__(self, cmd: list[str], env: dict[str, str], **kwargs: object) -> None:
            started.append(env)

        def poll(self) -> int:
            return 1

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(bench.subprocess, "Popen", Exited)
    with pytest.raises(SystemExit, match="the service did not start"):
        main([*argv, "--quick"])
    assert started and started[0]["TITOK_MODEL_PATH"] == str(BUNDLED["ordered"]) and "TITOK_MODEL" not in started[0]


@pytest.mark.parametrize("prog", ["titok bench", "titok bench-tokenize"])
def test_both_benches_name_a_model_they_cannot_find_and_what_they_take(prog: str, capsys) -> None:
    from titok.dataset.bench import main as bench_tokenize

    run = main if prog == "titok bench" else bench_tokenize
    assert run(["--model", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: model file not found: no-such-model") and "(default, ordered)" in err, err
