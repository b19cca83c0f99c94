"""`titok tokenize` and `titok detokenize` as a user runs them: errors before work, a killed run resumed."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from dataset_helpers import done_names, photo, rows, tokenize, write_folder
from PIL import Image

from titok.cli import main
from titok.core.engine import Engine
from titok.dataset import load_tokens
from titok.dataset.writer import shard_meta

ROOT = Path(__file__).resolve().parents[3]


def test_a_missing_input_stops_the_command_before_any_work(tmp_path: Path, tiny_artifact: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "pics", {"a.png": photo(0)})
    code = main(["tokenize", str(folder), str(tmp_path / "shards/s-{00..01}.tar"), "--out", str(tmp_path / "out"),
                 "--model", str(tiny_artifact), "--device", "cpu"])
    assert code == 2
    assert "titok tokenize: error: input" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was started, not even the output directory


def test_a_file_that_is_not_a_dataset_is_an_error_naming_it(tmp_path: Path, tiny_artifact: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.bin").write_bytes(os.urandom(4096))
    code = main(["tokenize", str(tmp_path / "model.bin"), "--out", str(tmp_path / "out"), "--model",
                 str(tiny_artifact)])
    assert code == 2
    assert f"{tmp_path / 'model.bin'} is neither a folder, a tar archive" in capsys.readouterr().err


def test_bad_options_are_refused_with_a_reason(tmp_path: Path, tiny_artifact: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "pics", {"a.png": photo(0)})
    base = ["tokenize", str(folder), "--out", str(tmp_path / "out"), "--model", str(tiny_artifact)]
    assert main([*base, "--dtype", "int8"]) == 2
    assert "--dtype" in capsys.readouterr().err
    assert main([*base, "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
    for option, value, words in [("--max-image-bytes", "0", "--max-image-bytes is 0; it must be at least 1"),
                                 ("--concurrency", "-1", "--concurrency is -1; it must be at least 1"),
                                 ("--workers", "-2", "--workers is -2; it must be 0 or more"),
                                 ("--ray-stall-timeout", "nan", "--ray-stall-timeout is nan; it must be a finite"),
                                 ("--ray-stall-timeout", "inf", "--ray-stall-timeout is inf; it must be a finite"),
                                 ("--ray-stall-timeout", "-5", "--ray-stall-timeout is -5.0; it must be a finite")]:
        assert main([*base, option, value]) == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main([*base, "--resize", "zoom"]) == 2  # argparse: invalid choice
    with pytest.MonkeyPatch.context() as env:  # a bad variable is named as the variable, not as an option
        env.setenv("TITOK_MODEL_WORKERS", "abc")
        assert main([*base, "--dtype", "int8"]) == 2
        err = capsys.readouterr().err
        assert "--dtype: Input should be" in err and "TITOK_MODEL_WORKERS: Input should be a valid integer" in err
        assert "--model_workers" not in err and "--model-workers" not in err
    for threads, words in (("100000", "100000 is outside 0..1024"), ("-1", "-1 is outside"), ("two", "'two' is not")):
        assert main([*base, "--torch-threads", threads]) == 2  # 100,000 torch threads crash a process
        assert f"--torch-threads: {words}" in capsys.readouterr().err
    assert main(["tokenize", str(folder), "--out", str(tmp_path / "out"), "--model", str(tmp_path / "no.pt")]) == 2
    assert "model file not found" in capsys.readouterr().err


def test_a_rerun_with_dtype_auto_keeps_the_dtype_the_directory_was_made_in(
        tmp_path: Path, tiny_artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # auto is a timed probe: a rerun (more inputs, or a resume) must not mix its answer with the first run's
    first = write_folder(tmp_path / "a", {f"{i}.png": photo(i) for i in range(3)})
    second = write_folder(tmp_path / "b", {f"{i}.png": photo(10 + i) for i in range(3)})
    out = tmp_path / "out"
    base = ["tokenize", "--out", str(out), "--model", str(tiny_artifact), "--device", "cpu", "--workers", "0"]
    assert main([*base[:1], str(first), *base[1:], "--dtype", "bfloat16"]) == 0
    monkeypatch.setenv("TITOK_DTYPE", "auto")
    monkeypatch.setattr("titok.core.engine.PROBE_MARGIN", 1e9)  # this time the probe would answer float32
    assert main([*base[:1], str(first), str(second), *base[1:]]) == 0
    assert len(list(out.glob("*.parquet"))) == 2
    assert {shard_meta(p)["compute_dtype"] for p in out.glob("*.parquet")} == {"bfloat16"}
    # an explicit dtype is still honoured
    again = [*base[:1], str(first), str(second), *base[1:], "--dtype", "float32", "--out", str(tmp_path / "o2")]
    assert main(again) == 0
    assert {shard_meta(p)["compute_dtype"] for p in (tmp_path / "o2").glob("*.parquet")} == {"float32"}


def test_tokenize_then_detokenize_chosen_rows(tmp_path: Path, tiny_artifact: Path, engine: Engine,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = write_folder(tmp_path / "pics", {f"sub/{i}.png": photo(i) for i in range(5)})
    out = tmp_path / "out"
    assert main(["tokenize", str(folder), "--out", str(out), "--model", str(tiny_artifact), "--device", "cpu",
                 "--workers", "1", "--shard-size", "2"]) == 0
    report = capsys.readouterr().out
    assert "images tokenized                   5" in report and "shards written                     3" in report
    assert "compute dtype                      float32" in report and "model                              " in report
    assert {shard_meta(p)["compute_dtype"] for p in out.glob("*.parquet")} == {"float32"}  # TITOK_DTYPE (conftest)
    assert main(["tokenize", str(folder), "--out", str(tmp_path / "bf16"), "--model", str(tiny_artifact),
                 "--dtype", "bf16", "--workers", "0"]) == 0
    assert {shard_meta(p)["compute_dtype"] for p in (tmp_path / "bf16").glob("*.parquet")} == {"bfloat16"}
    assert main(["detokenize", str(out), "--keys", "sub/3.png", "sub/0.png", "--out", str(tmp_path / "png"),
                 "--model", str(tiny_artifact), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["sub__0.png.png", "sub__3.png.png"]
    keys, tokens = load_tokens(out)
    expected = engine.run("decode", tokens[[keys.index("sub/3.png")]].astype(np.int64))[0]
    got = np.asarray(Image.open(io.BytesIO((tmp_path / "png/sub__3.png.png").read_bytes())))
    np.testing.assert_array_equal(got, expected)
    assert "compute dtype float32" in capsys.readouterr().err  # what it ran in, on stderr beside its paths
    assert main(["detokenize", str(out), "--keys", "nope.png", "--out", str(tmp_path / "png"),
                 "--model", str(tiny_artifact)]) == 2
    assert "no row with key 'nope.png'" in capsys.readouterr().err
    for first in ("0", "-1"):  # once read as "no rows": nothing written, nothing said, exit 0
        assert main(["detokenize", str(out), "--first", first, "--out", str(tmp_path / "none"),
                     "--model", str(tiny_artifact)]) == 2
        assert f"--first is {first}; it must be 1 or more" in capsys.readouterr().err


def test_detokenize_refuses_a_model_that_did_not_make_the_tokens(tmp_path: Path, engine: Engine,
                                                                 other_artifact: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    tokenize([write_folder(tmp_path / "pics", {"a.png": photo(0)})], tmp_path / "out", engine)
    assert main(["detokenize", str(tmp_path / "out"), "--out", str(tmp_path / "png"), "--model",
                 str(other_artifact)]) == 2
    err = capsys.readouterr().err
    assert "holds tokens of model test-tiny" in err and "but the model is test-other" in err
    assert "pass the directory's model with --model" in err
    assert not (tmp_path / "png").exists()


def test_detokenize_without_a_model_uses_the_one_the_directory_records(
        tmp_path: Path, tiny_artifact: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Found by its content hash among the bundled models and the converted ones in the titok cache (the README's
    `titok detokenize` of an `ordered` directory failed without --model: the default decoded other tokens)."""
    import shutil

    tokenize([write_folder(tmp_path / "pics", {"a.png": photo(0)})], tmp_path / "out", engine)
    monkeypatch.delenv("TITOK_MODEL", raising=False)
    monkeypatch.delenv("TITOK_MODEL_PATH", raising=False)
    monkeypatch.setenv("TITOK_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["detokenize", str(tmp_path / "out"), "--out", str(tmp_path / "png"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # not found: refused, naming the model that is missing (not blaming the default)
    assert "holds tokens of model test-tiny" in err and "no bundled model and no model in the titok cache" in err
    assert "titok-tiny-128px-32tok" not in err and "pass the directory's model with --model" in err
    (tmp_path / "cache" / "artifacts").mkdir(parents=True)
    shutil.copy(tiny_artifact, tmp_path / "cache" / "artifacts" / "0123.pt")
    assert main(["detokenize", str(tmp_path / "out"), "--out", str(tmp_path / "png"), "--device", "cpu"]) == 0
    assert "decoding with " + str(tmp_path / "cache" / "artifacts" / "0123.pt") in capsys.readouterr().err
    got = np.asarray(Image.open(tmp_path / "png" / "a.png.png"))
    keys, tokens = load_tokens(tmp_path / "out")
    np.testing.assert_array_equal(got, engine.run("decode", tokens[:1].astype(np.int64))[0])


def _big_photos(folder: Path, n: int) -> None:
    """n large PNGs (slow enough to decode that a run lasts a few seconds), each with its own colour block."""
    base = np.tile(np.linspace(0, 255, 1200, dtype=np.uint8)[None, :, None], (900, 1, 3))
    folder.mkdir(parents=True)
    for i in range(n):
        a = base.copy()
        top = 100 + (20 * i) % 500
        a[top : top + 300, 200:700] = ((37 * i) % 256, (91 * i) % 256, 160)
        Image.fromarray(a).save(folder / f"{i:03d}.png", compress_level=1)


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    return [int(c) for t in tasks.iterdir() for c in (t / "children").read_text().split()]


def _wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in _state(p)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"worker processes {alive} outlived their killed job")


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def test_a_killed_run_resumes_to_exactly_the_rows_of_an_uninterrupted_run(
        tmp_path: Path, tiny_artifact: Path, engine: Engine, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "pics"
    _big_photos(folder, 30)  # 10 shards of 3
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "titok.cli", "tokenize", str(folder), "--out", str(out), "--model",
           str(tiny_artifact), "--device", "cpu", "--workers", "1", "--shard-size", "3", "--batch-size", "3",
           "--torch-threads", "1"]
    log = open(tmp_path / "killed.log", "wb")  # not a pipe: nothing may hold the test up after the kill
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    while not list(out.glob(".titok/*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: as a preempted machine
    proc.wait(timeout=60)
    log.close()
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert workers, "the job runs its decoding in worker processes"
    _wait_gone(workers)  # the decoding workers follow their job: no orphans keep the CPU busy
    done = sorted(p.name for p in out.glob(".titok/*.done.json"))
    assert 1 <= len(done) < 10, "the run must be killed part-way"
    for name in done:  # every shard recorded complete has its whole Parquet file
        assert (out / name.replace(".done.json", ".parquet")).is_file()
    assert len(done_names(out)) == len(done)

    capsys.readouterr()
    assert main(cmd[3:]) == 0  # the same command again, in this process
    report = capsys.readouterr().out
    assert f"shards skipped (already complete)  {len(done)}\n" in report
    assert f"shards written                     {10 - len(done)}\n" in report
    assert not list(out.rglob("*.tmp"))

    tokenize([folder], tmp_path / "whole", engine, shard_size=3)
    assert rows(out) == rows(tmp_path / "whole")
    assert len(rows(out)) == 30


@pytest.mark.slow
def test_ctrl_c_prints_one_line_keeps_the_finished_shards_and_exits_130(tmp_path: Path, tiny_artifact: Path,
                                                                      interruptible_children: None) -> None:
    folder = tmp_path / "pics"
    _big_photos(folder, 90)  # 30 shards of 3: the run outlasts a loaded machine's pause before the Ctrl-C
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "titok.cli", "tokenize", str(folder), "--out", str(out), "--model",
           str(tiny_artifact), "--device", "cpu", "--workers", "2", "--shard-size", "3", "--batch-size", "3",
           "--torch-threads", "1"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own group: Ctrl-C reaches the job and its workers
    deadline = time.monotonic() + 300
    while not list(out.glob(".titok/*.done.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    workers = _children(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert stderr.splitlines()[-1] == ("titok tokenize: interrupted; the shards already written are kept "
                                       "(a rerun resumes)")
    kept = done_names(out)
    assert 1 <= len(kept) < 30
    assert len(list(out.glob("*.parquet"))) == len(kept)
    _wait_gone(workers)
