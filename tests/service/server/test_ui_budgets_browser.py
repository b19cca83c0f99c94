"""The page's token budgets in a real browser (issue #20, item 6): the slider over k, the PSNR curve, the target box.

Runs the toy prefix-decodable model (prefix_helpers: K = 8, 32 px); every picture and figure the page shows is
checked against the service's own answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, expect
from prefix_helpers import K, prefix_artifact  # noqa: F401  (a fixture)
from service_helpers import make_settings, serving
from test_ui_browser import PHOTO, browser, open_page, server_decode, shown_pixels, site  # noqa: F401  (fixtures)

from titok.core import codec
from titok.core.engine import Engine, psnr
from titok.server.app import build_app


@pytest.fixture(scope="module")
def prefix_site(prefix_artifact: Path) -> Iterator[str]:  # noqa: F811
    with serving(build_app(make_settings(prefix_artifact))) as url:
        yield url


def test_the_slider_the_curve_and_the_target_box(browser: Browser, prefix_site: str,  # noqa: F811
                                                 prefix_artifact: Path) -> None:  # noqa: F811
    photo = PHOTO.read_bytes()
    page, requests, errors = open_page(browser, prefix_site)
    page.get_by_label("Choose images").set_input_files(PHOTO)
    card = page.locator(".card")
    expect(card).to_have_attribute("data-decoded", "1")
    tokens = httpx.post(f"{prefix_site}/encode", files={"images": ("p.jpg", photo)}, timeout=60).json()["tokens"][0]
    slider = page.get_by_label("Tokens used")
    expect(slider).to_have_attribute("max", str(K))
    expect(slider).to_have_value(str(K))
    expect(page.locator(".card .cell.unused")).to_have_count(0)

    # the slider: the first k tokens are decoded, the rest are marked unused in the grid
    slider.fill("3")
    expect(card).to_have_attribute("data-decoded", "2")
    assert np.array_equal(shown_pixels(page, ".card .recon"), server_decode(prefix_site, tokens[:3]))
    expect(page.locator(".card .k-value")).to_have_text(f"3 of {K}")
    expect(page.locator(".card .recon-caption")).to_have_text("Reconstruction from 3 tokens")
    unused = page.locator(".card .cell.unused")
    expect(unused).to_have_count(K - 3)
    assert unused.evaluate_all("cells => cells.map(c => c.getAttribute('aria-label'))") == [
        f"Token {i}" for i in range(4, K + 1)]

    # the curve: the service's PSNR at every k, drawn
    curve = page.locator(".card .curve")
    expect(curve).to_have_attribute("data-psnr", re.compile(r"^\["))
    model_input = codec.load_image(photo, 32)
    eng = Engine.load(prefix_artifact, "cpu", "float32")
    try:
        full = eng.run("encode", model_input[None].copy())
        expected = [float(psnr(eng.run("decode", full[:, :k]), model_input[None])[0]) for k in range(1, K + 1)]
    finally:
        eng.close()
    assert json.loads(curve.get_attribute("data-psnr")) == pytest.approx(expected, abs=1e-3)
    drawn = curve.evaluate("c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data"
                           ".filter((v, i) => i % 4 === 3 && v > 0).length")
    assert drawn > 100  # a line, not a blank canvas

    # the target box: the service's search picks k, the slider moves there
    target = round(expected[4], 1)  # reached by the fifth token at the latest
    answer = httpx.post(f"{prefix_site}/encode", params={"target_psnr": target}, files={"images": ("p.jpg", photo)},
                        timeout=60).json()
    k = answer["num_tokens"][0]
    page.get_by_label("Target PSNR (dB)").fill(str(target))
    page.get_by_role("button", name="Find the fewest tokens").click()
    expect(card).to_have_attribute("data-target-k", str(k))
    expect(slider).to_have_value(str(k))
    expect(card).to_have_attribute("data-decoded", "3")
    expect(page.locator(".card .target-result")).to_contain_text(f"{k} tokens reach {target} dB")
    assert np.array_equal(shown_pixels(page, ".card .recon"), server_decode(prefix_site, tokens[:k]))
    expect(page.locator(".card .cell.unused")).to_have_count(K - k)

    # a target out of range: the service's message, and nothing else changes
    page.get_by_label("Target PSNR (dB)").fill("-4")
    page.get_by_role("button", name="Find the fewest tokens").click()
    expect(page.locator(".card .card-error")).to_contain_text("(0, 100]")
    expect(slider).to_have_value(str(k))
    assert f"POST {prefix_site}/ui/curve?resize=crop" in requests
    assert not errors


def test_a_fixed_length_model_shows_no_budget_controls(browser: Browser, site: str) -> None:  # noqa: F811
    page, _, errors = open_page(browser, site)
    page.get_by_label("Choose images").set_input_files(PHOTO)
    expect(page.locator(".card")).to_have_attribute("data-decoded", "1")
    expect(page.locator(".card .budget")).to_be_hidden()
    expect(page.locator(".card .cell.unused")).to_have_count(0)
    r = httpx.post(f"{site}/ui/curve", content=PHOTO.read_bytes(), headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "not_prefix_decodable"
    assert not errors
