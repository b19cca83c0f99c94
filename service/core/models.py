"""Which model to load: an artifact path, a bundled model by name, or a published checkpoint on the Hugging Face
Hub by name.

Only a Hub name loads the hub code (titok.model.hub: huggingface_hub and the converter); a path never does.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from .errors import ModelLoadError

__all__ = ["BUNDLED", "CACHE_ENV", "cache_dir", "model_with_hash", "resolve_model"]

# The models shipped inside the package, by name (model/MODEL_CARD.md describes both):
# default, the 32-token model every door serves unless told otherwise, and ordered, a prefix-decodable model
# whose first k tokens decode for every k (token budgets, the page's slider), trained with tail drop.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "models"
BUNDLED = {"default": BUNDLED_DIR / "default.pt", "ordered": BUNDLED_DIR / "ordered.pt"}
WHAT_TO_GIVE = ("give an exported artifact's path, a bundled model's name (default, ordered), or a Hugging Face Hub "
                "name such as yucornetto/tokenizer_titok_l32_imagenet (see titok models)")


CACHE_ENV = "TITOK_CACHE_DIR"  # read by every door that loads by name (serve, pull, tokenize, Tokenizer.load)


def cache_dir() -> Path:
    """Where converted Hub models live: TITOK_CACHE_DIR, else $XDG_CACHE_HOME/titok, else ~/.cache/titok (its
    `artifacts/` folder holds the artifacts)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "titok"


def model_with_hash(content_hash: str) -> Path | None:
    """The bundled model, or the converted Hub model in the titok cache, whose content hash is `content_hash`; None
    when none is (only each file's meta.json is read, not its weights)."""
    from .artifact import read_meta

    if not content_hash:
        return None
    for path in [*BUNDLED.values(), *sorted((cache_dir() / "artifacts").glob("*.pt"))]:
        try:
            if read_meta(path).get("content_hash") == content_hash:
                return path
        except ModelLoadError:
            continue
    return None


def model_argument(text: str) -> str:
    """argparse `type` for a --model option: the text as given; ArgumentTypeError for an empty or blank one (which
    would otherwise mean "the default model" without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"is empty: {WHAT_TO_GIVE}, or leave the option out for the default")
    return text


def resolve_model(name_or_path: str | Path) -> Path:
    """An artifact path as given, a bundled model's name (`default`, `ordered`: BUNDLED), or a Hugging Face Hub
    name (`owner/name[@revision]`) pulled, converted and cached (titok.model.hub.pull) -> the artifact's path.

    A string that names an existing file is that file; else a bundled name is that model; else a string ending in
    .pt, or without the owner/name shape, is a path; otherwise `owner/name` is a Hub name.
    Raises ModelLoadError (missing file, unknown repository, offline without a cached copy, ...).
    """
    if name_or_path is None or not str(name_or_path).strip():
        raise ModelLoadError(f"no model given ({name_or_path!r}): {WHAT_TO_GIVE}")
    text = str(name_or_path)
    path = Path(text).expanduser()
    if text in BUNDLED and not path.is_file():  # a folder named like a bundled model does not hide it
        return BUNDLED[text]
    if path.is_dir():
        raise ModelLoadError(f"{text} is a folder, not a model file: {WHAT_TO_GIVE}")
    if text.lower().startswith(("http://", "https://")):
        hub = re.match(r"https?://(?:www\.)?huggingface\.co/([^/?#]+/[^/?#]+)", text)
        hint = f"; to load this Hub model give its name, {hub[1]}" if hub else ""
        raise ModelLoadError(f"{text} is a URL; models load from a file path, a bundled name or a Hub name{hint}")
    if not path.exists() and not _looks_like_hub_name(text):
        raise ModelLoadError(f"model file not found: {text} ({WHAT_TO_GIVE})")
    if path.exists():
        return path
    try:
        from titok.model.hub import pull  # the converter needs the model code; a plain artifact path never loads it
    except ImportError as e:
        raise ModelLoadError(f"{text} is not a file here, and loading it by name from the Hugging Face Hub needs "
                             f"the [serve] extra ({e.name} is missing): pip install 'titok-service[serve]'") from None
    return pull(text)


def _looks_like_hub_name(text: str) -> bool:
    name, _, _ = text.partition("@")
    parts = name.split("/")
    return (len(parts) == 2 and all(parts) and not name.endswith((".pt", ".pth", ".bin", ".safetensors"))
            and not text.startswith((".", "/", "~")))
