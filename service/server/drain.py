"""Draining on SIGTERM, as a load balancer in front needs it.

The signal does not close the listener at once: for `TITOK_DRAIN_GRACE_S` the server keeps accepting,
`/readyz` answers 503 (the balancer's health check takes the replica out), new work gets a complete
503 + Retry-After (its body read and dropped first, so the client sees the answer rather than a reset)
and every answer says `Connection: close` (keep-alive clients reconnect, to another replica). Queued
work is finished meanwhile. Then the listener closes, connections accepted just before get up to
`BoundedHttpToolsProtocol.shutdown_settle_s` to send their request (answered 503), none is closed with a
request on its way (titok.server.protocol), uvicorn's own shutdown lets in-flight requests complete (for at
most the `shutdown_timeout_s` given, after which what is open is closed), the lifespan stops the batcher, and
the process exits 0.

SIGINT (Ctrl-C at a terminal) drains without the grace period; a second signal ends the grace at once, and a
second SIGINT closes every open connection, shuts the app down and exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import Draining

log = logging.getLogger("titok.serve")
WORK = {("POST", "/encode"), ("POST", "/decode"), ("POST", "/ui/input"), ("POST", "/ui/curve")}
RETRY_AFTER_S = "1"
ACCEPTED_SETTLE_S = 0.05  # after the listener closes, for connections it accepted last to be made
FORCED_SETTLE_S = 2.0  # after a second signal, most time for the requests of the connections closed to end


class DrainGate:
    """ASGI middleware: while `state.draining`, refuse new work completely and close every connection."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state  # app.ServiceState: .draining, .metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.state.draining:
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        if (scope["method"], scope["path"]) not in WORK:
            await self.app(scope, receive, send_closing)
            return
        # Read the body to its end before answering: an answer written while the client is still
        # uploading, followed by a close, reaches it as a connection reset. The outer RequestContext's
        # receive bounds this read in size and time (413, 408).
        message = await receive()
        while message["type"] == "http.request" and message.get("more_body", False):
            message = await receive()
        if message["type"] == "http.disconnect":
            return  # gone: counted as 499 by RequestContext
        self.state.metrics.rejections.labels("draining").inc()
        raise Draining("the service is shutting down; retry on another replica",
                       headers={"Retry-After": RETRY_AFTER_S, "Connection": "close"})


class DrainingServer(uvicorn.Server):
    """uvicorn's server: drain at once on a signal, keep listening for the grace period, then shut down."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None], grace_s: float,
                 shutdown_timeout_s: float | None = None) -> None:
        """on_signal: called (from the signal handler) on the first SIGTERM/SIGINT; grace_s: seconds to keep
        listening after SIGTERM; shutdown_timeout_s: once the listener has closed, the most seconds to wait for
        the connections still open before closing them (None: no bound)."""
        super().__init__(config)
        self._on_signal = on_signal
        self._grace_s = grace_s
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop_at: float | None = None
        self._taking_in: set[asyncio.Task[Any]] = set()  # connections from the accept queue being made

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as a signal handler: only set flags here (on_signal only flips state and wakes the batcher).
        if self._stop_at is None:
            self._on_signal()
            grace = self._grace_s if sig == signal.SIGTERM else 0.0
            self._stop_at = time.monotonic() + grace
            log.info("draining: refusing new work, listening %.1f s more, then finishing queued work", grace)
        else:  # a second signal: no more grace (a second SIGINT also makes uvicorn stop waiting)
            self._stop_at = time.monotonic()
            super().handle_exit(sig, frame)

    async def on_tick(self, counter: int) -> bool:
        if self._stop_at is not None and time.monotonic() >= self._stop_at:
            self.should_exit = True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        # Stop accepting, then let the event loop make the connections it accepted in its last turn (asyncio calls
        # connection_made a turn or two after accept), so that uvicorn's shutdown below reaches them too. Each
        # connection then closes once idle, not before a request already on its way is answered
        # (BoundedHttpToolsProtocol.shutdown).
        self.stop_accepting()
        await asyncio.sleep(ACCEPTED_SETTLE_S)
        bound = None
        if self._shutdown_timeout_s is not None:
            bound = asyncio.get_running_loop().call_later(self._shutdown_timeout_s, self._close_open_connections)
        try:
            await super().shutdown(sockets)
        finally:
            if bound is not None:
                bound.cancel()
        if self.force_exit:
            # A second SIGINT: uvicorn stopped waiting and skipped the app's shutdown, leaving asyncio.run to cancel
            # what was left (an error with a traceback from the lifespan, and a hang behind a client that does not
            # read). End the open requests by closing their connections instead, then shut the app down.
            self._close_open_connections("at a second signal")
            deadline = time.monotonic() + FORCED_SETTLE_S
            while self.server_state.tasks and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await self.lifespan.shutdown()

    def stop_accepting(self) -> int:
        """Close the listeners, first accepting the connections waiting in their accept queues (a closed listener
        resets them: a client that had connected and sent its request in the event loop's last few milliseconds
        got a reset, not an answer); they are served as any other. Returns how many were taken in. Call it on the
        event loop."""
        loop = asyncio.get_running_loop()
        config, state = self.config, self.server_state
        app_state = self.lifespan.state

        def protocol() -> asyncio.Protocol:  # as uvicorn's own startup makes each connection's protocol
            return config.http_protocol_class(config=config, server_state=state, app_state=app_state)

        taken = 0
        for server in self.servers:
            for listener in server.sockets or ():
                if listener.type != socket.SOCK_STREAM:
                    continue
                with socket.socket(fileno=os.dup(listener.fileno())) as waiting:  # closing it closes only the dup
                    waiting.setblocking(False)  # as the listener already is (the flag is shared)
                    while True:
                        try:
                            conn, _ = waiting.accept()
                        except (BlockingIOError, InterruptedError):  # the queue is empty (the listener is non-blocking)
                            break
                        conn.setblocking(False)
                        task = loop.create_task(loop.connect_accepted_socket(protocol, conn))
                        self._taking_in.add(task)  # held until done
                        task.add_done_callback(self._taken_in)
                        taken += 1
            server.close()
        if taken:
            log.info("took in %d connection(s) waiting to be accepted as the listener closed", taken)
        return taken

    def _taken_in(self, task: asyncio.Task[Any]) -> None:
        """Done callback of a connection taken in from the accept queue: forget the task, and consume its error (a
        client that reset its connection before it was made: nobody to answer), which asyncio would log as never
        retrieved."""
        self._taking_in.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("a connection taken in from the accept queue was gone before it was made: %s", task.exception())

    def _close_open_connections(self, when: str | None = None) -> None:
        """Close what is still open: at the shutdown's bound (a client that does not read its answer, a request
        trickled to its deadlines) or at a second signal. Their requests are told the client is gone (a 499 each),
        so every task ends on its own: cancelled instead, one blocked on a client that does not read caught the
        cancellation, tried to write a 500 and waited for ever, and asyncio.run with it."""
        still_open = list(self.server_state.connections)
        if still_open:
            log.warning("graceful shutdown: %d connection(s) still open %s: closed", len(still_open),
                        when or f"{self._shutdown_timeout_s:.3g} s after the listener closed")
        for connection in still_open:
            connection.transport.abort()
