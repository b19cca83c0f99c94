"""The models bundled in the package, by name: what `titok serve --model NAME` and Tokenizer.load(NAME) resolve."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from titok.core.artifact import read_meta
from titok.core.models import BUNDLED, resolve_model
from titok.settings import DEFAULT_MODEL_PATH


def test_bundled_names_resolve_to_the_package_files() -> None:
    assert resolve_model("default") == BUNDLED["default"] == DEFAULT_MODEL_PATH
    assert resolve_model("ordered") == BUNDLED["ordered"]
    assert all(path.parent == DEFAULT_MODEL_PATH.parent for path in BUNDLED.values())


def test_a_file_of_that_name_here_wins_over_the_bundled_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ordered").write_bytes(b"mine")
    assert resolve_model("ordered") == Path("ordered")
    assert resolve_model("default") == DEFAULT_MODEL_PATH  # no such file here


def test_titok_models_lists_the_bundled_models_from_their_meta(capsys: pytest.CaptureFixture[str]) -> None:
    from titok.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "Bundled with the package" in out
    for name, path in BUNDLED.items():
        meta = read_meta(path)
        line = next(ln for ln in out.splitlines() if ln.startswith(f"  {name}: "))
        assert meta["name"] in line and f"{meta['num_tokens']} tokens" in line
        assert ("prefix-decodable" in line) == bool(meta.get("prefix_decodable"))


def _psnr(a, b) -> float:
    import numpy as np

    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float((10 * np.log10(255.0**2 / mse)).mean())


def test_the_ordered_model_decodes_every_prefix_coarse_to_fine() -> None:
    import numpy as np

    from titok.bench.bench import synthetic_photos
    from titok.core.codec import load_image
    from titok.core.engine import Engine
    from titok.model.quality import prefix_lengths

    engine = Engine.load("ordered", "cpu", "float32", torch_threads=1)
    try:
        assert engine.prefix_decodable and engine.image_size == 128 and engine.num_tokens in (64, 128)
        images = np.stack([load_image(p, engine.image_size) for p in synthetic_photos(8)])  # photo-like, not trained on
        tokens = engine.run("encode", images)
        by_k = {k: _psnr(engine.run("decode", tokens[:, :k]), images) for k in prefix_lengths(engine.num_tokens)}
        values = list(by_k.values())
        assert all(b >= a - 0.1 for a, b in itertools.pairwise(values)), by_k  # non-decreasing (0.1 dB dip at most)
        assert values[-1] - values[0] > 3.0, by_k  # and the tokens after the first carry the picture
    finally:
        engine.close()


def test_the_service_serves_the_ordered_model_by_name_with_token_budgets() -> None:
    from fastapi.testclient import TestClient
    from service_helpers import make_settings

    from titok.bench.bench import synthetic_photos
    from titok.server.app import build_app

    with TestClient(build_app(make_settings(BUNDLED["default"], model="ordered"))) as client:
        info = client.get("/info").json()["model"]
        assert info["prefix_decodable"] is True and info["name"] == read_meta(BUNDLED["ordered"])["name"]
        r = client.post("/encode?num_tokens=8", content=synthetic_photos(1)[0], headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        assert r.json()["num_tokens"] == 8 and len(r.json()["tokens"][0]) == 8
        png = client.post("/decode", json={"tokens": r.json()["tokens"][0]})
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
