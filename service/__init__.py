"""The TiTok tokenizer: its public API at the top, each name imported only when first used.

    from titok import Tokenizer       # in-process: images <-> tokens (needs the [serve] extra: torch)
    from titok import TitokClient     # a running service over HTTP (the bare install: httpx, numpy, Pillow)
    from titok import load_tokens     # a `titok tokenize` output directory (pyarrow)

So `from titok import TitokClient` loads neither torch nor the web framework.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import AsyncTitokClient, TitokClient, TitokError
    from .core.budgets import TargetTokens
    from .core.errors import CoreError, ModelLoadError
    from .core.tokenizer import Tokenizer
    from .dataset import load_tokens, read_dir_meta

_WHERE = {
    "Tokenizer": ".core.tokenizer",
    "TargetTokens": ".core.budgets",
    "ModelLoadError": ".core.errors",
    "CoreError": ".core.errors",
    "TitokClient": ".client",
    "AsyncTitokClient": ".client",
    "TitokError": ".client",
    "load_tokens": ".dataset",
    "read_dir_meta": ".dataset",
}
__all__ = ["AsyncTitokClient", "CoreError", "ModelLoadError", "TargetTokens", "TitokClient", "TitokError", "Tokenizer",
           "load_tokens", "read_dir_meta"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name], __name__), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
