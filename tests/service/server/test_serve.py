"""`python -m titok` as a real process: start-up failures, and a graceful SIGTERM with requests in flight."""

from __future__ import annotations

import json
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
from service_helpers import open_request, read_answer

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.slow  # every test here starts a server process


def env(**settings: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("TITOK_")}
    e["PYTHONPATH"] = f"{ROOT}{os.pathsep}{e.get('PYTHONPATH', '')}"
    e.update({f"TITOK_{k.upper()}": v for k, v in settings.items()})
    return e


def start_server(*args: str, **settings: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "titok", *args], env=env(**settings), cwd=ROOT,
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


@pytest.mark.parametrize(("setting", "value"), [("dtype", "float64"), ("torch_threads", "100000"),
                                                ("codec_threads", "5000"), ("model_workers", "65")])
def test_invalid_settings_stop_start_up(tiny_artifact: Path, setting: str, value: str) -> None:
    proc = start_server(model_path=str(tiny_artifact), **{setting: value})  # 100,000 torch threads segfaulted
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and f"TITOK_{setting.upper()}" in err, err[-2000:]
    assert "Traceback" not in err


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


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def queue_depth(url: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("titok_queue_depth "):
            return float(line.split()[1])
    return -1.0


def _flood_without_reading(port: int) -> socket.socket:
    """A connection that pipelines far more answers than the socket buffers hold and reads none of them."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        for _ in range(400):
            sock.send(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
    except BlockingIOError:
        pass
    time.sleep(0.5)
    return sock


@pytest.mark.parametrize("signals", [("SIGTERM",), ("SIGINT", "SIGINT")])
def test_a_client_that_stops_reading_cannot_hold_a_shutdown_for_ever(tiny_artifact: Path, tmp_path: Path,
                                                                     signals: tuple[str, ...]) -> None:
    """uvicorn waited without a bound for every open request: one whose answer a client never reads kept the
    process alive until the orchestrator's kill. Now the graceful shutdown ends after the body and request
    timeouts and the settle time (titok serve's shutdown_timeout_s), or at once on a second SIGINT (which hung
    for ever: the task, cancelled, tried to write a 500 to the same client): the connection is closed, one
    warning says so, and the process exits 0 with no error logged."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "titok.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env(model_path=str(tiny_artifact), device="cpu", torch_threads="1", codec_threads="1",
                                    drain_grace_s="0", body_timeout_s="1", request_timeout_s="1"),
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(tmp_path / "log").open("w"), text=True)
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness")
        with _flood_without_reading(port):
            for i, name in enumerate(signals):
                if i:
                    time.sleep(0.3)
                proc.send_signal(getattr(signal, name))
            assert proc.wait(timeout=60) == 0  # the socket still open, unread
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    err = (tmp_path / "log").read_text()  # a file: a pipe left unread fills with the access log and blocks the server
    records = [json.loads(line) for line in err.splitlines()]
    # cut by the write deadline (the client read none of its answer for TITOK_BODY_TIMEOUT_S), or, had it read a
    # little now and then, by the shutdown's own bound: either way one warning says so
    cut = ("1 connection(s) still open", "read none of its answer within 1 s")
    assert any(any(c in r["msg"] for c in cut) and r["level"] == "warning" for r in records), err[-2000:]
    assert not [r for r in records if r["level"] == "error" or "exc" in r], err[-3000:]


def test_sigterm_keeps_listening_for_the_grace_answers_everyone_finishes_queued_work_and_exits_0(
        tiny_artifact: Path) -> None:
    """Real clients before, during and after the signal: each one that reached the port gets a complete answer."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long batch delay keeps every early request queued until SIGTERM: draining must not wait it out.
    proc = subprocess.Popen([sys.executable, "-m", "titok.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env(model_path=str(tiny_artifact), device="cpu", max_batch_delay_ms="10000",
                                    max_batch_size="64", torch_threads="1", codec_threads="1", drain_grace_s="3"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, "readiness")
        png = all_formats()["png"]
        # python-multipart logs a warning for a broken part header: it too must come out as JSON.
        broken = httpx.post(f"{url}/encode", content=b'--b\r\nContent-Disposition: form-data; name="images"\rX',
                            headers={"content-type": "multipart/form-data; boundary=b"})
        assert broken.status_code == 400 and broken.json()["error"]["code"] == "bad_request"
        queued: dict[int, httpx.Response | Exception] = {}

        def send(i: int) -> None:
            try:
                if i % 2:
                    queued[i] = httpx.post(f"{url}/encode", content=png, headers={"content-type": "image/png"},
                                           timeout=60)
                else:
                    queued[i] = httpx.post(f"{url}/decode", json={"tokens": [i] * 8}, timeout=60)
            except Exception as e:  # recorded, then asserted below
                queued[i] = e

        threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        wait_for(lambda: queue_depth(url) == 6, "six queued requests")
        # Clients that keep coming, each on a new connection, until the port is closed.
        flood: list[httpx.Response | Exception] = []
        stop = threading.Event()

        def keep_sending() -> None:
            while not stop.is_set():
                try:
                    flood.append(httpx.post(f"{url}/decode", json={"tokens": [1] * 8}, timeout=60))
                except httpx.ConnectError:  # refused: the port is closed, nothing was sent
                    return
                except Exception as e:  # a cut connection: recorded, then asserted below
                    flood.append(e)
                stop.wait(0.05)

        flooders = [threading.Thread(target=keep_sending) for _ in range(3)]
        for t in flooders:
            t.start()
        wait_for(lambda: queue_depth(url) >= 7, "a flood request queued")
        # An upload that has begun before the signal and ends after it was accepted: it is served.
        early = open_request(url, "/encode", "image/png", len(png), png[:100], "early-upload")
        keep_alive = httpx.Client(timeout=60)
        assert keep_alive.get(f"{url}/healthz").status_code == 200

        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 503, "readiness 503")
        lingering_answer: list[tuple[int, dict[str, str], bytes] | Exception] = []

        def linger() -> None:
            """Connected during the grace, the request sent only once the listener has closed: still answered."""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
                    wait_for(lambda: refused(port), "the listener to close", timeout=30)
                    sock.sendall(b"POST /decode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 2\r\n\r\n{}")
                    lingering_answer.append(read_answer(sock))
            except Exception as e:  # recorded, then asserted below
                lingering_answer.append(e)

        lingerer = threading.Thread(target=linger)
        lingerer.start()
        ready = httpx.head(f"{url}/readyz")
        assert ready.status_code == 503 and ready.headers["connection"] == "close"
        late = keep_alive.post(f"{url}/decode", json={"tokens": [0] * 8})  # on a connection opened before
        assert late.status_code == 503 and late.json()["error"]["code"] == "draining"
        assert late.headers["retry-after"] == "1" and late.headers["connection"] == "close"
        # A new upload sent slowly during the grace is read to its end, then answered in full.
        slow = open_request(url, "/encode", "image/png", len(png), png[:100], "slow-during-drain")
        with slow:
            for i in range(100, len(png), 1000):
                slow.sendall(png[i : i + 1000])
                time.sleep(0.01)
            status, headers, body = read_answer(slow)
        assert status == 503 and headers["connection"] == "close" and headers["retry-after"] == "1"
        assert json.loads(body)["error"] == {"code": "draining", "request_id": "slow-during-drain",
                                             "message": "the service is shutting down; retry on another replica"}
        with early:
            early.sendall(png[100:])
            status, headers, body = read_answer(early)
        assert status == 200 and len(json.loads(body)["tokens"][0]) == 8
        lingerer.join(60)
        assert isinstance(lingering_answer[0], tuple), lingering_answer
        status, headers, _ = lingering_answer[0]
        assert status == 503 and headers["connection"] == "close"

        assert proc.wait(timeout=60) == 0
        stop.set()
        for t in threads + flooders:
            t.join(60)
        for i in range(6):
            assert isinstance(queued[i], httpx.Response), queued[i]
            assert queued[i].status_code == 200, queued[i].text
        assert queued[1].json()["num_tokens"] == 8 and queued[0].headers["content-type"] == "image/png"
        assert all(isinstance(r, httpx.Response) for r in flood), [r for r in flood if isinstance(r, Exception)]
        statuses = {r.status_code for r in flood}
        assert statuses == {200, 503}, statuses  # served before the signal, refused in full during the grace
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz")
        keep_alive.close()
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    lines = err.splitlines()
    records = [json.loads(line) for line in lines]  # every line, every library's, is one JSON object
    assert any(r["logger"].startswith("python_multipart") for r in records), err[-2000:]
    assert not [r for r in records if r["level"] == "error" or "exc" in r], err[-3000:]
