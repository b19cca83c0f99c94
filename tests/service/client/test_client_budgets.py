"""The clients' token budgets (issue #20) against a live server of the toy prefix-decodable model."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prefix_helpers import K, banded_images, prefix_artifact, psnr_by_k  # noqa: F401  (prefix_artifact: fixture)
from service_helpers import make_settings, serving

from titok.client import AsyncTitokClient, TargetTokens, TitokClient, TitokError
from titok.core.engine import Engine
from titok.server.app import build_app


@pytest.fixture(scope="module")
def prefix_url(prefix_artifact: Path) -> Iterator[str]:  # noqa: F811
    with serving(build_app(make_settings(prefix_artifact, max_images_per_request=2))) as url:
        yield url


@pytest.fixture(scope="module")
def engine(prefix_artifact: Path) -> Iterator[Engine]:  # noqa: F811
    eng = Engine.load(prefix_artifact, "cpu", "float32")
    yield eng
    eng.close()


@pytest.mark.parametrize("arrays", [True, False])
def test_sync_num_tokens_target_and_ragged_decode(prefix_url: str, engine: Engine, arrays: bool) -> None:
    images = banded_images(5, seed=4)  # 5 images, 2 per request: three requests each way
    full = engine.run("encode", images)
    with TitokClient(prefix_url, arrays=arrays) as client:
        three = client.encode(list(images), num_tokens=3)
        assert isinstance(three, np.ndarray) and three.tolist() == full[:, :3].tolist()
        target = client.encode(list(images), target_psnr=12.0)
        assert isinstance(target, TargetTokens) and len(target) == 5
        expected = [next(k for k, p in enumerate(psnr_by_k(engine, im), 1) if p >= 12.0) for im in images]
        assert target.num_tokens.tolist() == expected and target.reached.all()
        assert [t.tolist() for t in target.tokens] == [full[i, :k].tolist() for i, k in enumerate(expected)]
        assert (target.psnr >= 12.0).all()
        pixels = client.decode(target, as_array=True)  # ragged: JSON lists
        assert np.array_equal(pixels, np.stack([engine.run("decode", t[None])[0] for t in target.tokens]))
        assert np.array_equal(client.decode(three, as_array=True), engine.run("decode", full[:, :3]))
        pictures = client.decode([[1, 2], [3]])
        assert all(isinstance(p, Image.Image) for p in pictures) and len(pictures) == 2
        with pytest.raises(TitokError) as refused:
            client.encode(list(images[:1]), num_tokens=K + 1)
        assert refused.value.code == "invalid_budget" and f"[1, {K}]" in refused.value.message


def test_async_num_tokens_target_and_ragged_decode(prefix_url: str, engine: Engine) -> None:
    images = banded_images(3, seed=9)
    full = engine.run("encode", images)

    async def scenario() -> None:
        async with AsyncTitokClient(prefix_url) as client:
            two = await client.encode(list(images), num_tokens=2)
            assert two.tolist() == full[:, :2].tolist()
            target = await client.encode(list(images), target_psnr=10.0)
            assert isinstance(target, TargetTokens) and (target.psnr >= 10.0).all()
            pixels = await client.decode([t.tolist() for t in target.tokens], as_array=True)
            assert np.array_equal(pixels, np.stack([engine.run("decode", t[None])[0] for t in target.tokens]))

    asyncio.run(scenario())


def test_a_fixed_length_model_refuses_a_budget_through_the_client(live_url: str) -> None:
    with TitokClient(live_url) as client:
        with pytest.raises(TitokError) as refused:
            client.encode(np.zeros((1, 32, 32, 3), np.uint8), target_psnr=20.0)
        assert refused.value.status == 422 and refused.value.code == "not_prefix_decodable"
        with pytest.raises(TitokError, match="tokens\\[1\\] must be a flat sequence"):
            client.decode([[1, 2], [[3]]])


def test_titok_encode_takes_a_budget_and_decode_takes_its_answer_back(prefix_url: str, engine: Engine,
                                                                    tmp_path: Path, capsys) -> None:
    from titok.client.cli import decode_main, encode_main

    images = banded_images(2, seed=5)
    files = [tmp_path / f"{i}.png" for i in range(2)]
    for f, im in zip(files, images, strict=True):
        Image.fromarray(im).save(f)
    full = engine.run("encode", images)
    assert encode_main([*map(str, files), "--url", prefix_url, "--num-tokens", "3"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["num_tokens"] == 3 and fixed["tokens"] == full[:, :3].tolist()
    assert encode_main([*map(str, files), "--url", prefix_url, "--target-psnr", "12"]) == 0
    target = json.loads(capsys.readouterr().out)
    expected = [next(k for k, p in enumerate(psnr_by_k(engine, im), 1) if p >= 12.0) for im in images]
    assert target["num_tokens"] == expected and target["target_psnr"] == 12.0 and all(target["reached"])
    assert target["tokens"] == [full[i, :k].tolist() for i, k in enumerate(expected)] and len(target["psnr"]) == 2
    (tmp_path / "target.json").write_text(json.dumps(target))
    assert decode_main(["--tokens", f"@{tmp_path / 'target.json'}", "--out", str(tmp_path / "r.png"),
                        "--url", prefix_url]) == 0
    assert sorted(p.name for p in tmp_path.glob("r-*.png")) == ["r-0.png", "r-1.png"]
    capsys.readouterr()
    assert encode_main([str(files[0]), "--url", prefix_url, "--num-tokens", str(K + 1)]) == 1
    assert f"422 num_tokens is {K + 1}; it must be in [1, {K}]" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse: not both
        encode_main([str(files[0]), "--num-tokens", "2", "--target-psnr", "10"])
