"""What an import loads: the client and the dataset reader come without torch, the model code or the server;
the core (codec, arrays, artifact, Tokenizer) without a web framework. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WEB = ("fastapi", "starlette", "uvicorn", "service.server", "service.errors")


def _loaded(module: str) -> set[str]:
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _top(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module", ["service.client", "service.dataset.reader"])
def test_the_client_and_the_reader_load_neither_torch_nor_the_server(module: str) -> None:
    loaded = _loaded(module)
    assert _top(loaded, ("torch", "model", *WEB)) == []


@pytest.mark.parametrize("module", ["service.core.codec", "service.core.arrays", "service.core.artifact",
                                    "service.core.tokenizer", "service.core.engine"])
def test_the_core_loads_no_web_framework_and_no_door(module: str) -> None:
    loaded = _loaded(module)
    assert _top(loaded, (*WEB, "service.client", "service.dataset", "service.bench", "model")) == []
