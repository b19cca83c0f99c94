"""The page's PSNR curve (`POST /ui/curve`) as a hostile client sees it: dozens of decodes a request, so how many
run at once and how much of the batcher's queue they hold is bounded; drained and counted like the other doors."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from service_helpers import FakeEngine, make_settings

from titok.server.app import build_app
from titok.server.ui import CURVE_CHUNK, CURVES_AT_ONCE


class PrefixEngine(FakeEngine):
    """A prefix-decodable fake with K = 128 (so a curve is 64 decodes) whose decodes wait at `decode_gate`."""

    num_tokens = 128
    prefix_decodable = True

    def __init__(self) -> None:
        super().__init__()
        self.decode_gate = threading.Event()
        self.decode_gate.set()
        self.decoding = threading.Event()

    def _run(self, op: str, batch: np.ndarray) -> np.ndarray:
        if op == "decode":
            self.decoding.set()
            assert self.decode_gate.wait(timeout=30)
        return super()._run(op, batch)


def photo() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def post_curve(c: TestClient) -> object:
    return c.post("/ui/curve", content=photo(), headers={"content-type": "image/png"})


def test_curves_at_once_hold_a_bounded_share_of_the_queue_and_all_finish(tiny_artifact: Path) -> None:
    """Six curves at once with the decodes held: the queue holds no more than CURVES_AT_ONCE * CURVE_CHUNK of their
    decodes (it would hold 6 x 64, or refuse them all, with a queue of 40), another client's /encode finds room,
    and every curve ends with its 64 points once the decodes run."""
    engine = PrefixEngine()
    app = build_app(make_settings(tiny_artifact, max_queue_size=40, max_batch_size=8), engine=engine)
    with TestClient(app) as c:
        engine.decode_gate.clear()
        answers: list = []
        threads = [threading.Thread(target=lambda: answers.append(post_curve(c))) for _ in range(6)]
        for t in threads:
            t.start()
        assert engine.decoding.wait(30)
        batcher = app.state.service.batcher
        for _ in range(20):  # the waiting curves keep asking; the depth must stay bounded all along
            assert batcher.depth <= CURVES_AT_ONCE * CURVE_CHUNK, batcher.depth
            threading.Event().wait(0.02)
        other: list = []  # another client's encode finds room in the queue (it runs once a model worker is free)
        encode = threading.Thread(target=lambda: other.append(
            c.post("/encode", content=photo(), headers={"content-type": "image/png"})))
        encode.start()
        threading.Event().wait(0.2)
        assert batcher.depth <= CURVES_AT_ONCE * CURVE_CHUNK + 1, batcher.depth
        engine.decode_gate.set()
        for t in [*threads, encode]:
            t.join(60)
        assert other[0].status_code == 200, other[0].text
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert all(len(a.json()["psnr"]) == 64 for a in answers)


def test_a_curve_that_waits_past_the_timeout_for_its_turn_is_a_503_busy(tiny_artifact: Path) -> None:
    """No slot comes free within the request's timeout (here: none at all): 503 busy with Retry-After, not a wait
    without end."""
    import asyncio

    app = build_app(make_settings(tiny_artifact, request_timeout_s=0.5), engine=PrefixEngine())
    with TestClient(app) as c:
        app.state.service.curve_slots = asyncio.Semaphore(0)
        r = post_curve(c)
        assert r.status_code == 503 and r.json()["error"]["code"] == "busy", r.text
        assert r.headers["retry-after"] == "1" and "PSNR curves" in r.json()["error"]["message"]
        assert 'titok_rejections_total{reason="busy"} 1.0' in c.get("/metrics").text


def test_curves_that_time_out_give_their_slots_back(tiny_artifact: Path) -> None:
    engine = PrefixEngine()
    app = build_app(make_settings(tiny_artifact, request_timeout_s=1.0), engine=engine)
    with TestClient(app) as c:
        engine.decode_gate.clear()
        held: list = []
        first = [threading.Thread(target=lambda: held.append(post_curve(c))) for _ in range(CURVES_AT_ONCE)]
        for t in first:
            t.start()
        for t in first:
            t.join(60)
        assert [r.status_code for r in held] == [504] * CURVES_AT_ONCE, [r.text for r in held]
        engine.decode_gate.set()
        assert post_curve(c).status_code == 200  # every slot came back


@pytest.mark.parametrize("draining", [False, True])
def test_curves_are_counted_under_their_own_name_and_refused_while_draining(tiny_artifact: Path,
                                                                           draining: bool) -> None:
    app = build_app(make_settings(tiny_artifact), engine=PrefixEngine())
    with TestClient(app) as c:
        if draining:
            app.state.service.start_draining()
            r = post_curve(c)
            assert r.status_code == 503 and r.json()["error"]["code"] == "draining"
        else:
            assert post_curve(c).status_code == 200
            assert 'titok_requests_total{endpoint="/ui/curve",status="200"} 1.0' in c.get("/metrics").text
