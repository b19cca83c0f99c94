"""Dataset-job fixtures: the tiny artifact's engine, and a second tiny model (another codebook)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from titok.core.engine import Engine


@pytest.fixture(autouse=True)
def _exact_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job's runs compare their tokens with the fp32 engine's: TITOK_DTYPE=float32 unless a test says otherwise."""
    monkeypatch.setenv("TITOK_DTYPE", "float32")


@pytest.fixture
def interruptible_children() -> Iterator[None]:
    """Children started by the test begin with SIGINT at its default, so that a Ctrl-C reaches them as it does
    from a terminal: a test run started as a background job of a non-interactive shell (`bash -c '... &'`) has
    SIGINT ignored, POSIX passes that on to every child, and Python then never raises KeyboardInterrupt (the
    job ran to its end and exited 0 in such a run)."""
    import signal

    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.fixture(scope="module")
def engine(tiny_artifact: Path) -> Iterator[Engine]:
    eng = Engine.load(tiny_artifact, "cpu", "float32", torch_threads=1)  # fp32: the exact tokens
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def other_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from titok.model.config import get_preset
    from titok.model.export import export_model
    from titok.model.tokenizer import TiTok

    torch.manual_seed(7)
    cfg = get_preset("tiny", image_size=32, patch_size=8, num_tokens=8, enc_width=32, enc_depth=1, enc_heads=2,
                     dec_width=32, dec_depth=1, dec_heads=2, codebook_size=64, head_channels=8)
    path = tmp_path_factory.mktemp("other") / "other.pt"
    export_model(TiTok(cfg), cfg, path, {"name": "test-other"})
    return path
