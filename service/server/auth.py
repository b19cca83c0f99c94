"""API keys: pure ASGI middleware that guards every path except an open list (health, readiness, docs).

Keys are compared as SHA-256 digests with `hmac.compare_digest` against every configured key, so
neither the key nor its length leaks through timing, and no key is ever logged: logs and metrics
carry a key ID, the first 8 hex digits of the key's SHA-256, which names a key without revealing it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import Unauthorized
from ..keys import key_id
from .metrics import Metrics
from .middleware import error_response

log = logging.getLogger("titok.auth")
REALM = 'Bearer realm="titok"'
DOCS = "/docs"  # the API docs page; its own files live under it


def open_paths(openapi_url: str | None, metrics_auth: bool) -> frozenset[str]:
    """The paths anyone may call; one ending in "/*" opens everything under it (Swagger UI's own files).

    Load balancers probe health and readiness without keys; the docs hold no secret, and Swagger UI cannot
    send a key to fetch the schema (its Authorize button then lets a user try the API with theirs).
    Everything else is guarded, so a new route is protected unless it is added here.
    """
    paths = {"/healthz", "/readyz", DOCS, f"{DOCS}/*", *([openapi_url] if openapi_url else [])}
    return frozenset(paths if metrics_auth else paths | {"/metrics"})


def is_open(path: str, open_paths: frozenset[str]) -> bool:
    return path in open_paths or any(p.endswith("/*") and path.startswith(p[:-1]) for p in open_paths)


def describe(keys: tuple[str, ...], metrics_auth: bool) -> str:
    """The start-up log line: whether the service is open, and which keys (by ID) it accepts."""
    if not keys:
        return "authentication off: any client that can reach this service may use it (set TITOK_API_KEYS)"
    ids = ", ".join(key_id(k) for k in keys)
    return (f"authentication on: {len(keys)} API key(s), key IDs {ids}; /metrics "
            f"{'needs a key' if metrics_auth else 'is open'}")


OWS = " \t"  # HTTP's optional whitespace: str.strip() would also take a non-breaking space off a key


def _presented_key(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str]:
    """(the key the client sent, or None; what was wrong if none)."""
    found = dict(headers)  # each at most once: see middleware.SINGLE_HEADERS
    # Authorization first: when both are sent, it is the key checked and X-API-Key is not read (README, "API keys").
    # Refusing the pair when they differ was tried: schemathesis sends a generated X-API-Key beside the Bearer key
    # it is given, as other clients built from the schema's two security schemes may.
    auth = found.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").strip(OWS).partition(" ")
        if scheme.lower() != "bearer" or not token.strip(OWS):
            return None, "the Authorization header must be 'Bearer KEY'"
        return token.strip(OWS), ""
    api_key = found.get(b"x-api-key")
    if api_key is not None:
        return api_key.decode("latin-1").strip(OWS), ""
    return None, "this service needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"


class ApiKeyAuth:
    """401 + WWW-Authenticate for a missing or unknown key on every path outside `open_paths`."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...], open_paths: frozenset[str], metrics: Metrics) -> None:
        self.app = app
        self.digests = [(hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys]
        self.open_paths = open_paths
        self.metrics = metrics

    def match(self, presented: str) -> str | None:
        """The key ID of the configured key equal to `presented`, else None; every key is compared."""
        digest = hashlib.sha256(presented.encode("latin-1", "replace")).digest()
        found = None
        for key_digest, kid in self.digests:  # no early exit: the time does not say which key matched
            if hmac.compare_digest(digest, key_digest):
                found = kid
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.digests or is_open(scope["path"], self.open_paths):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        presented, problem = _presented_key(scope["headers"])
        kid = self.match(presented) if presented is not None else None
        if kid is None:
            self.metrics.rejections.labels("unauthorized").inc()
            challenge = REALM if presented is None else f'{REALM}, error="invalid_token"'
            if presented is not None:
                problem = f"the API key with key ID {key_id(presented)} is not accepted here"
            error = Unauthorized(problem, headers={"WWW-Authenticate": challenge})
            await error_response(error.status, error.code, error.message, state.get("request_id", ""), error.headers)(
                scope, receive, send)
            return
        state["key_id"] = kid
        self.metrics.key_requests.labels(kid).inc()
        await self.app(scope, receive, send)
