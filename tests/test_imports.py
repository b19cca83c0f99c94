"""What an import loads: the client and the dataset reader come without torch, the model code or the server;
the core (codec, arrays, artifact, Tokenizer) without a web framework. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

WEB = ("fastapi", "starlette", "uvicorn", "service.server", "service.errors")


def _loaded(module: str, statement: str = "") -> set[str]:
    code = f"import json, sys, {module}; {statement or 'pass'}; print(json.dumps(sorted(sys.modules)))"
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


def test_the_public_api_is_at_the_top_and_each_name_loads_only_its_own_dependencies() -> None:
    client_only = _loaded("service", "from service import TitokClient, TitokError")
    assert _top(client_only, ("torch", "model", "pyarrow", *WEB)) == []
    assert _top(_loaded("service", "from service import load_tokens"), ("torch", "model", *WEB)) == []
    loaded = _loaded("service", "from service import Tokenizer, ModelLoadError")
    assert "torch" in loaded and _top(loaded, ("model", *WEB)) == []

    import service
    from service.client import TitokClient
    from service.core.tokenizer import Tokenizer
    from service.dataset import load_tokens

    assert (service.Tokenizer, service.TitokClient, service.load_tokens) == (Tokenizer, TitokClient, load_tokens)
    assert set(service.__all__) == set(service._WHERE) and set(service.__all__) <= set(dir(service))  # noqa: SLF001
