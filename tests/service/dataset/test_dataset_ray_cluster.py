"""`titok tokenize --ray` on a real two-node Ray cluster started as an operator would (`ray start`, token auth).

A head and a second node, one CPU each, each with its own temp dir, in their own process groups (stopped
by those ids, never by `ray stop`, which would stop every Ray on the machine). The job runs as a user runs
it: the CLI, from another working directory, relative --out and --model.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataset_helpers import done_names, photo, rows, tokenize, write_tar

from titok.core.engine import Engine

pytest.importorskip("ray", reason="the ray extra: pip install 'titok-service[ray]' (CI installs it)")
ROOT = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{log.name}: no {text!r}:\n{log.read_text(errors='replace')[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM `ray start --block` (it stops what it started), then SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group is this node's alone (start_new_session)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    tmp = Path(tempfile.mkdtemp(prefix="titok-ray-"))  # short: Ray's socket paths must fit in 107 bytes
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex,
           "RAY_USAGE_STATS_ENABLED": "0",
           # The nodes' workers import this checkout's `service`, as the job does.
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    common = ["--block", "--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    nodes = []
    try:
        for name, args in (("head", ["--head", "--port", str(port), "--include-dashboard", "false"]),
                           ("node2", ["--address", f"127.0.0.1:{port}"])):
            log = tmp / f"{name}.log"
            proc = subprocess.Popen([str(BIN / "ray"), "start", *args, *common, "--temp-dir", str(tmp / name)],
                                    env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            nodes.append(proc)
            _wait_for(log, "block forever", proc)
        yield f"127.0.0.1:{port}", env
    finally:
        for proc in reversed(nodes):
            _stop(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _inputs(tmp: Path, shards: int, per_shard: int = 2) -> Path:
    for s in range(shards):
        members = [(f"s{s}_{i}.png", photo(10 * s + i)) for i in range(per_shard)]
        write_tar(tmp / "shards" / f"{s:05d}.tar", members + ([("s1_bad.png", b"not a png")] if s == 1 else []))
    return tmp / "shards"


def _big_inputs(tmp: Path, shards: int, per_shard: int) -> Path:
    """Shards of large PNGs (1200 x 900, slow enough to decode that the job's shards finish over seconds, not in
    one burst): what a test that interrupts the job half-way needs on a fast or a loaded machine."""
    import io

    import numpy as np
    from PIL import Image

    base = np.tile(np.linspace(0, 255, 1200, dtype=np.uint8)[None, :, None], (900, 1, 3))
    for s in range(shards):
        members = []
        for i in range(per_shard):
            a = base.copy()
            a[100:400, 200 + 10 * i:700] = ((37 * s) % 256, (91 * i) % 256, 160)
            buf = io.BytesIO()
            Image.fromarray(a).save(buf, format="PNG", compress_level=1)
            members.append((f"s{s}_{i}.png", buf.getvalue()))
        write_tar(tmp / "shards" / f"{s:05d}.tar", members)
    return tmp / "shards"


def _job(cwd: Path, env: dict[str, str], address: str, *extra: str) -> list[str]:
    return [str(BIN / "titok"), "tokenize", "../shards/*.tar", "--out", "out_rel", "--model", "mine.pt",
            "--ray", "--ray-address", address, "--ray-stall-timeout", "120", "--batch-size", "2", *extra]


def test_the_job_on_two_nodes_from_another_directory_with_relative_paths_writes_the_local_rows(
        tmp_path: Path, tiny_artifact: Path, engine: Engine, cluster: tuple[str, dict[str, str]]) -> None:
    address, env = cluster
    _inputs(tmp_path, 3)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_artifact, work / "mine.pt")
    t0 = time.monotonic()
    done = subprocess.run(_job(work, env, address), cwd=work, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shards written                     3" in done.stdout, done.stdout
    assert "deprecated" not in done.stderr, done.stderr[-3000:]  # the current Ray Data API (issue 26.7)
    local = tokenize([tmp_path / "shards/*.tar"], tmp_path / "local", engine)
    assert (local.images, local.errors) == (6, 1)
    assert rows(work / "out_rel") == rows(tmp_path / "local")  # every key, token, size and source
    for path in (tmp_path / "local/.titok").iterdir():
        assert (work / "out_rel/.titok" / path.name).read_bytes() == path.read_bytes(), path.name
    print(f"two-node job: {seconds:.1f} s")  # noqa: T201 - reported with -s

    # A plan the cluster cannot hold is refused at once, saying what it lacks.
    refused = subprocess.run(_job(work, env, address, "--concurrency", "2", "--out", "out2"), cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert ("the Ray cluster has 2 CPUs; --concurrency 2 tokenizer actors hold 2 and reading needs 1 more"
            in refused.stderr), refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr


def test_a_killed_driver_keeps_its_finished_shards_and_the_rerun_does_only_the_rest(
        tmp_path: Path, tiny_artifact: Path, engine: Engine, cluster: tuple[str, dict[str, str]]) -> None:
    address, env = cluster
    n = 8
    _inputs(tmp_path, n, per_shard=3)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_artifact, work / "mine.pt")
    log = open(tmp_path / "killed.log", "wb")
    proc = subprocess.Popen(_job(work, env, address), cwd=work, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 300
    records = work / "out_rel/.titok"
    while proc.poll() is None and time.monotonic() < deadline and not list(records.glob("*.done.json")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    log.close()
    kept = done_names(work / "out_rel")
    assert 1 <= len(kept) < n, (tmp_path / "killed.log").read_text()[-3000:]
    rerun = subprocess.run(_job(work, env, address), cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"shards skipped (already complete)  {len(kept)}\n" in rerun.stdout, rerun.stdout
    assert f"shards written                     {n - len(kept)}\n" in rerun.stdout
    tokenize([tmp_path / "shards/*.tar"], tmp_path / "whole", engine)
    assert rows(work / "out_rel") == rows(tmp_path / "whole")
    assert not list(records.glob("*.tmp"))


def test_ctrl_c_on_the_driver_prints_one_line_keeps_finished_shards_and_starts_nothing(
        tmp_path: Path, tiny_artifact: Path, cluster: tuple[str, dict[str, str]], interruptible_children: None) -> None:
    address, env = cluster
    _big_inputs(tmp_path, 20, per_shard=3)  # a job of seconds, its shards finishing one by one
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(tiny_artifact, work / "mine.pt")
    proc = subprocess.Popen(_job(work, env, address), cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not list(work.glob("out_rel/.titok/*.done.json")):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Started a local Ray instance" not in stderr, stderr[:3000]
    assert stderr.splitlines()[-1] == ("titok tokenize: interrupted; the shards already written are kept "
                                       "(a rerun resumes)")
    assert 1 <= len(done_names(work / "out_rel")) < 20
