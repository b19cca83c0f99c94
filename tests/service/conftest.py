"""Service fixtures: a running app around the tiny artifact, and a live server."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from service_helpers import make_settings, serving

with warnings.catch_warnings():  # this starlette warns that httpx is deprecated for its TestClient
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

from titok.server.app import build_app


@pytest.fixture(scope="module")
def client(tiny_artifact: Path) -> Iterator[TestClient]:
    with TestClient(build_app(make_settings(tiny_artifact)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def live_url(tiny_artifact: Path) -> Iterator[str]:
    with serving(build_app(make_settings(tiny_artifact))) as url:
        yield url
