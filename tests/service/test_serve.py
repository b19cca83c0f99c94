"""`python -m service` as a real process: start-up failures, and a graceful SIGTERM with requests in flight."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from sample_images import all_formats

ROOT = Path(__file__).resolve().parents[2]


def env(**settings: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
    e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e.update({f"TITOK_{k.upper()}": v for k, v in settings.items()})
    return e


def start_server(*args: str, **settings: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "service", *args], env=env(**settings), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("problem, words", [("missing", "model file not found"),
                                            ("corrupt", "not a valid TorchScript artifact")])
def test_a_bad_model_file_stops_start_up_with_one_clear_line(tmp_path: Path, problem: str, words: str) -> None:
    path = tmp_path / "model.pt"
    if problem == "corrupt":
        path.write_bytes(b"\x00garbage" * 100)
    proc = start_server(model_path=str(path), device="cpu")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and str(path) in lines[0], err


def test_invalid_settings_stop_start_up(tiny_artifact: Path) -> None:
    proc = start_server(model_path=str(tiny_artifact), dtype="float64")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "TITOK_DTYPE" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll a condition on the live server (bounded), never a bare sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("titok_queue_depth "):
            return float(line.split()[1])
    return -1.0


def test_sigterm_refuses_new_work_finishes_queued_work_and_exits_0(tiny_artifact: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long batch delay keeps every request queued until SIGTERM: draining must not wait it out.
    proc = start_server("--host", "127.0.0.1", "--port", str(port), model_path=str(tiny_artifact), device="cpu",
                        max_batch_delay_ms="10000", max_batch_size="64", torch_threads="1", codec_threads="1")
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness")
        png = all_formats()["png"]
        answers: dict[int, httpx.Response | Exception] = {}

        def send(i: int) -> None:
            try:
                if i % 2:
                    answers[i] = httpx.post(f"{url}/encode", content=png, headers={"content-type": "image/png"},
                                            timeout=60)
                else:
                    answers[i] = httpx.post(f"{url}/decode", json={"tokens": [i] * 8}, timeout=60)
            except Exception as e:  # recorded, then asserted below
                answers[i] = e

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        wait_for(lambda: queue_depth(url) == 6, "six queued requests")
        proc.send_signal(signal.SIGTERM)
        try:  # a new request now is refused: 503 while draining, or no connection once the socket is closed
            late = httpx.post(f"{url}/decode", json={"tokens": [0] * 8}, timeout=60)
            assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        except httpx.TransportError:
            pass
        for t in threads:
            t.join(60)
        assert proc.wait(timeout=60) == 0
        for i in range(6):
            assert isinstance(answers[i], httpx.Response), answers[i]
            assert answers[i].status_code == 200, answers[i].text
        assert answers[1].json()["num_tokens"] == 8 and answers[0].headers["content-type"] == "image/png"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
