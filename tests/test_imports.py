"""What an import loads: the client and the dataset reader come without torch, the model code or the server;
the core (codec, arrays, artifact, Tokenizer) without a web framework. Checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PKG, MODEL = "titok", "titok.model"  # the installed import names of the package and of its model code
WEB = ("fastapi", "starlette", "uvicorn", f"{PKG}.server", f"{PKG}.errors")


def _loaded(module: str, statement: str = "") -> set[str]:
    code = f"import json, sys, {module}; {statement or 'pass'}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def _top(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("module", ["client", "dataset.reader"])
def test_the_client_and_the_reader_load_neither_torch_nor_the_server(module: str) -> None:
    loaded = _loaded(f"{PKG}.{module}")
    assert _top(loaded, ("torch", MODEL, *WEB)) == []


@pytest.mark.parametrize("module", ["core.codec", "core.arrays", "core.artifact", "core.tokenizer", "core.engine"])
def test_the_core_loads_no_web_framework_and_no_door(module: str) -> None:
    loaded = _loaded(f"{PKG}.{module}")
    assert _top(loaded, (*WEB, f"{PKG}.client", f"{PKG}.dataset", f"{PKG}.bench", MODEL)) == []


def test_the_public_api_is_at_the_top_and_each_name_loads_only_its_own_dependencies() -> None:
    client_only = _loaded(PKG, f"from {PKG} import TitokClient, TitokError")
    assert _top(client_only, ("torch", MODEL, "pyarrow", *WEB)) == []
    assert _top(_loaded(PKG, f"from {PKG} import load_tokens"), ("torch", MODEL, *WEB)) == []
    loaded = _loaded(PKG, f"from {PKG} import Tokenizer, ModelLoadError")
    assert "torch" in loaded and _top(loaded, (MODEL, *WEB)) == []

    import titok as api
    from titok.client import TitokClient
    from titok.core.tokenizer import Tokenizer
    from titok.dataset import load_tokens

    assert (api.Tokenizer, api.TitokClient, api.load_tokens) == (Tokenizer, TitokClient, load_tokens)
    assert set(api.__all__) == set(api._WHERE) and set(api.__all__) <= set(dir(api))  # noqa: SLF001
