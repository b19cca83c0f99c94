"""The HTTP/1.1 protocol the service runs: uvicorn's httptools parser with a bound on each request's head.

httptools (llhttp, in C) parsed a one-item request in about 20% less of the event loop's time than h11 here
(a server with an instant engine, closed loop of 4,000 requests: 0.65 against 0.78-0.87 ms of CPU a request),
but unlike h11's `max_incomplete_event_size` nothing bounds a request line, header, chunk extension or trailer
that never ends, and uvicorn's protocol for it hands a chunked body's trailers on as request headers.
`BoundedHttpToolsProtocol` counts the bytes of each head (and of a chunked body's framing) as they arrive and,
past the limit, answers 400 and closes the connection, as h11 did, drops trailers, and times out a head that
never ends; a head that arrives whole and is over the limit is answered 431 by the app's middleware
(titok.server.middleware.RequestContext).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("titok.app")


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with bounds where httptools has none, and without chunked trailers.

    - A request head longer than `max_head_bytes` before it is complete: 400 and a closed connection. It is
      counted from the first read after the previous message ended (or the connection opened) until its headers
      are complete; a read that also holds the end of the previous body is not counted, so a head may run over
      by at most one read (the event loop reads at most 256 KiB at a time). When the head is that of a pipelined
      request behind ones still being answered, nothing more is read and the 400 follows their answers.
    - Bytes of a chunked body that are neither payload nor a complete chunk-size line (a chunk extension or a
      trailer that never ends) past `max_head_bytes`: 400 and a closed connection, as h11's bound on an
      unfinished event gave.
    - Trailer fields are dropped: uvicorn's httptools protocol appended them to the request's headers, where a
      trailer could stand in for a header (an API key, a request id, a content type) that a proxy had checked.
    - A head must end within `head_timeout_s` of the connection's start (the first) or of its first byte (the
      next ones): else 408 and a closed connection, or just the close when no request had begun. uvicorn's
      keep-alive timer covers only the time between an answer and the next request, and any bytes cancel it,
      even the empty lines that begin no request: those start the same deadline here.
    - When the client is gone, every request of the connection not yet answered is told so (uvicorn told only the
      newest, and a pipelined one being answered then wrote on the closed transport: an error with a traceback).
    - A graceful shutdown (uvicorn's `shutdown()`, on SIGTERM after the drain) does not cut a request on its way.
      uvicorn closed at once every connection with no request in progress, which includes one whose request is
      in the socket but not yet read, one whose head is half-read, and one accepted a moment before that has not
      sent yet: each client saw the connection closed without an answer. Here a connection closes when idle:
      one that has had an answer, `idle_settle_s` after the shutdown if nothing more came (enough for what is
      already in the socket to be read: the event loop reads ready sockets before it runs due timers); one that
      has not sent a request yet, `shutdown_settle_s` after it; a request begun meanwhile is answered and the
      connection then closed (`Connection: close`), a head that never ends is bounded by `head_timeout_s`.
    Every 400 and 408 written here is JSON in the service's error shape with an X-Request-ID; `on_refused(status)`
    is called for each (titok serve counts them in titok_requests_total under endpoint "other").
    """

    max_head_bytes = 16 * 1024
    head_timeout_s: float | None = None  # a connection's first head, and any head once begun, must end within this
    on_refused: Callable[[int], None] | None = None  # called with the status of every 400 or 408 written here
    shutdown_settle_s = 2.0  # on shutdown, time given to a connection that has not sent a request yet to send one
    idle_settle_s = 0.05  # on shutdown, time given to an idle kept-alive connection for what is already in the socket

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self._in_head = True  # a connection starts with a request head
        self._head_bytes = 0
        self._payload_bytes = 0  # body bytes handed on (on_body), so far
        self._framing_bytes = 0  # body-phase bytes that were not payload since the last chunk-size line
        self._chunk_line = False  # a chunk-size line was completed during this read
        self._cut_after_response = False  # a pipelined head ran over while an earlier answer was pending
        self._messages = 0  # requests begun on this connection
        self._in_message = False  # a request has begun and not yet been read to its end
        self._cycles: deque[Any] = deque()  # uvicorn's request cycles not yet answered, oldest first
        self._head_timer: asyncio.TimerHandle | None = None
        self._unread_body_timer: asyncio.TimerHandle | None = None  # the rest of the body of an answered request
        self._write_timer: asyncio.TimerHandle | None = None  # a paused write (a client not reading its answer)
        self._shutting_down = False
        self._shutdown_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()  # uvicorn's keep-alive timer starts only after a first answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_unread_body_timer()
        self._write_timer = _cancelled(self._write_timer)
        self._shutdown_timer = _cancelled(self._shutdown_timer)
        # uvicorn marks only its newest cycle disconnected: with pipelined requests, the one being answered (its
        # write paused by a client that does not read) then wrote on the closed transport, which uvloop answers
        # with a RuntimeError, logged as an error with a traceback. Every unanswered cycle is told instead.
        for cycle in self._cycles:
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """Called by uvicorn's server to begin a graceful shutdown: a request in progress is answered and the
        connection closed after it (uvicorn's rule); an idle connection is closed only once it stays idle for
        `idle_settle_s` (`shutdown_settle_s` when it has not sent a request yet), so that a request already in
        the socket, or just being sent, is answered rather than cut."""
        if self._shutting_down or self.transport.is_closing():
            return
        self._shutting_down = True
        if self._answer_pending():
            super().shutdown()  # the answer in progress says Connection: close
            return
        wait = self.shutdown_settle_s if self._messages == 0 else self.idle_settle_s
        self._shutdown_timer = self.loop.call_later(wait, self._close_if_idle)

    def _close_if_idle(self) -> None:
        """The shutdown's close: unless a request is being read or answered (its answer closes the connection)."""
        self._shutdown_timer = None
        if self.transport.is_closing() or self._in_message or self._answer_pending():
            return
        self.transport.close()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.head_timeout_s:
            self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def pause_writing(self) -> None:
        """The client reads slower than the answer is written (the transport's buffer is over its high-water mark):
        it must read some of it within `head_timeout_s`, or the connection closes. An answer to a client that
        never read was held, with its buffer, for as long as the client cared to stay (a hostile pass: 70 s, and no
        bound)."""
        super().pause_writing()
        if self.head_timeout_s and self._write_timer is None:
            self._write_timer = self.loop.call_later(self.head_timeout_s, self._write_timed_out)

    def resume_writing(self) -> None:
        self._write_timer = _cancelled(self._write_timer)
        super().resume_writing()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            log.warning("the client read none of its answer within %g s: connection closed", self.head_timeout_s)
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # a reset, not a FIN behind megabytes the kernel would keep trying to send
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()  # not close(): that would wait for the unread buffer to drain; lost -> told

    def _arm_unread_body_timer(self) -> None:
        self._cancel_unread_body_timer()
        if self.head_timeout_s:
            self._unread_body_timer = self.loop.call_later(self.head_timeout_s, self._unread_body_timed_out)

    def _cancel_unread_body_timer(self) -> None:
        self._unread_body_timer = _cancelled(self._unread_body_timer)

    def _unread_body_timed_out(self) -> None:
        """The body of a request already answered did not end in time: close (its answer has been written)."""
        self._unread_body_timer = None
        if self.transport.is_closing() or self._in_head or not self._in_message:
            return
        log.warning("body of an answered request not finished within %g s: connection closed", self.head_timeout_s)
        self.transport.close()

    def _cancel_head_timer(self) -> None:
        self._head_timer = _cancelled(self._head_timer)

    def _head_timed_out(self) -> None:
        """A head that did not end in time (a slow or silent client holding the connection): 408 and close, or
        just close when no request had begun (nothing sent, or only blank lines)."""
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self._answer_pending():  # the next head waits behind answers (pipelining pauses reading): not slow
            self._arm_head_timer()
            return
        if not self._in_message:  # nothing sent, or only the blank lines allowed before a request line
            self.transport.close()
            return
        log.warning("request head not finished within %g s: answered 408, connection closed", self.head_timeout_s)
        self._send_error(408, b"Request Timeout", "body_timeout",
                         f"the request head did not arrive within {self.head_timeout_s:g} s (TITOK_BODY_TIMEOUT_S); "
                         "the connection is closed")

    def data_received(self, data: bytes) -> None:
        if self._cut_after_response:  # the connection ends after the pending answers: nothing more is read
            self.flow.pause_reading()
            return
        started_in_head, message = self._in_head, self._messages
        if started_in_head:
            self._head_bytes += len(data)
        payload, self._chunk_line = self._payload_bytes, False
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self._in_head and not self._in_message and self._head_timer is None and not self._answer_pending():
            # Bytes that begin no request (the empty lines RFC 9112 lets a server skip) cancelled uvicorn's
            # keep-alive timer: bound the wait for a request from here, or a client could hold the connection
            # (and a graceful shutdown) for ever by sending CRLFs.
            self._arm_head_timer()
        if self._in_head and self._head_bytes > self.max_head_bytes:
            if self._answer_pending():
                self.flow.pause_reading()  # read no more of it; the 400 follows the pending answers
                self._cut_after_response = True
            else:
                self._refuse("request head over %d bytes and not finished", _HEAD_TOO_LARGE)
        elif not started_in_head and not self._in_head and self._messages == message:
            # The whole read was the body of one message (a read that also held other requests is not counted).
            if self._chunk_line:
                self._framing_bytes = 0
            else:
                self._framing_bytes += len(data) - (self._payload_bytes - payload)
            if self._framing_bytes > self.max_head_bytes:
                self._refuse("chunk extension or trailer over %d bytes", _FRAMING_TOO_LARGE)

    def _answer_pending(self) -> bool:
        return bool(self.pipeline) or (self.cycle is not None and not self.cycle.response_complete)

    def _refuse(self, log_message: str, message: str) -> None:
        """400 and close for a bound above: `message` names it ({limit}: max_head_bytes)."""
        log.warning(log_message + ": answered 400, connection closed", self.max_head_bytes)
        self._send_error(400, b"Bad Request", "bad_request", message.format(limit=self.max_head_bytes))

    def send_400_response(self, msg: str) -> None:
        """uvicorn's 400 for bytes that are not HTTP (its plain-text `msg`, "Invalid HTTP request received."), in
        the service's error shape instead."""
        self._send_error(400, b"Bad Request", "bad_request", _NOT_HTTP)

    def _send_error(self, status: int, reason: bytes, code: str, message: str) -> None:
        self._cancel_head_timer()
        rid = uuid.uuid4().hex
        body = json.dumps({"error": {"code": code, "message": message, "request_id": rid}}).encode()
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                 b"x-request-id: " + rid.encode() + b"\r\n", b"connection: close\r\n\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        if self.on_refused is not None:
            self.on_refused(status)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # else a trailer of a chunked body: dropped
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()
        self._in_head = False
        self._head_bytes = self._framing_bytes = 0
        super().on_headers_complete()
        if self.cycle is not None:
            while self._cycles and self._cycles[0].response_complete:  # answered in order: drop the done ones
                self._cycles.popleft()
            self._cycles.append(self.cycle)
            if self._shutting_down:
                self.cycle.keep_alive = False  # answered, then the connection closes

    def on_body(self, body: bytes) -> None:
        self._payload_bytes += len(body)
        super().on_body(body)

    def on_message_begin(self) -> None:
        self._messages += 1
        self._in_message = True
        if self._head_timer is None:  # the first head keeps the connection's deadline; a later one starts its own
            self._arm_head_timer()
        super().on_message_begin()

    def on_chunk_header(self) -> None:
        self._chunk_line = True

    def on_message_complete(self) -> None:
        self._in_message = False
        self._cancel_unread_body_timer()
        super().on_message_complete()
        self._in_head = True  # whatever comes next on this connection is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()  # resumes reading, and starts the next pipelined request if there is one
        if self._in_message and self.cycle is not None and self.cycle.response_complete:
            # uvicorn armed its keep-alive timer, which any byte cancels for good: a client could trickle for ever.
            self._unset_keepalive_if_required()
            # When the next head is already half read, the head deadline bounds it (and answers 408). Else:
            if not self._in_head and not self.transport.is_closing():
                # An early answer (401, 404, 413, ...) to a request whose body is still arriving: the rest of the
                # body must arrive within the same deadline as a head, or the connection closes (no answer is left
                # to give). It was held open for ever: 3,000 such connections kept 3,000 descriptors (a hostile pass).
                self._arm_unread_body_timer()
        if self._cut_after_response and not self.transport.is_closing():
            if self._answer_pending():
                self.flow.pause_reading()
            else:
                self._cut_after_response = False
                self._refuse("request head over %d bytes and not finished", _HEAD_TOO_LARGE)


def _cancelled(timer: asyncio.TimerHandle | None) -> None:
    """Cancel `timer` if there is one; None, to store in its place."""
    if timer is not None:
        timer.cancel()


# What each 400 says ({limit}: max_head_bytes).
_NOT_HTTP = ("the request is not valid HTTP/1.1 (a malformed request line, header, Content-Length or chunk); the "
             "connection is closed")
_HEAD_TOO_LARGE = ("the request line and headers run past {limit} bytes unfinished (TITOK_MAX_HEADER_BYTES); the "
                   "connection is closed")
_FRAMING_TOO_LARGE = ("a chunk extension or trailer of the chunked body runs past {limit} bytes "
                      "(TITOK_MAX_HEADER_BYTES); the connection is closed")


def bounded_httptools(max_head_bytes: int, head_timeout_s: float | None = None,
                      on_refused: Callable[[int], None] | None = None) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn.Config(http=...) with these bounds on a request's head (bytes, seconds);
    `on_refused(status)` is called for every 400 or 408 the protocol writes itself (titok serve counts them)."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,),
                {"max_head_bytes": max_head_bytes, "head_timeout_s": head_timeout_s,
                 "on_refused": staticmethod(on_refused) if on_refused else None})
