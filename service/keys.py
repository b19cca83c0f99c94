"""API keys as settings see them: parsing `TITOK_API_KEYS` and naming a key without revealing it.

Shared by the settings (every door reads them) and the HTTP door's key check (service/server/auth.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

MIN_KEY_LENGTH = 16  # a short key is guessable, and so is its 8-hex key ID by brute force


def key_id(key: str) -> str:
    """A short, non-reversible name for a key, safe for logs and metric labels."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(spec: str | Iterable[str]) -> tuple[str, ...]:
    """`TITOK_API_KEYS`: "key1,key2", or "@FILE" with one key a line (blank lines and # comments skipped)."""
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("@"):
            try:
                lines = Path(text[1:]).read_text().splitlines()
            except OSError as e:
                raise ValueError(f"cannot read the key file {text[1:]}: {e.strerror}") from None
            spec = [line for line in lines if not line.strip().startswith("#")]
        else:
            spec = text.split(",")
    keys = tuple(k.strip() for k in spec if k.strip())
    for k in keys:
        if len(k) < MIN_KEY_LENGTH or not (k.isascii() and k.isprintable()) or " " in k:
            raise ValueError(f"the API key with key ID {key_id(k)} is not usable: each key needs at least "
                             f"{MIN_KEY_LENGTH} printable ASCII characters and no spaces")
    return keys
