"""The web page in a real browser: Debian's chromium, headless, driven by Playwright (no browser download).

Each test starts the app on a live port around the tiny artifact (32 px, K=8, codebook 64), opens `/` and
works the page as a person would; every picture the page shows is checked against the service's own answer.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sample_images import save, two_halves
from service_helpers import FakeEngine, make_settings, serving

from titok.core import codec
from titok.model.quality import psnr
from titok.server.app import build_app

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                "(apt-get install -y chromium); the browser tests drive it headless")
# No sandbox: CI runs as root in a container. The rest keeps a headless run quiet and off the network.
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # a real photo, shipped offline
expect.set_options(timeout=30_000)  # two shared CPU cores: a decode can take a while


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def site(tiny_artifact: Path) -> Iterator[str]:
    with serving(build_app(make_settings(tiny_artifact))) as url:
        yield url


def open_page(browser: Browser, url: str) -> tuple[Page, list[str], list[str]]:
    """A fresh page at `url`/, with the URLs it requests and its uncaught script errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=url)
    page = context.new_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/")
    return page, requests, errors


def shown_pixels(page: Page, selector: str) -> np.ndarray:
    """The bytes behind an <img> on the page, decoded here: uint8 (H, W, 3)."""
    data = page.locator(selector).evaluate(
        "async (img) => Array.from(new Uint8Array(await (await fetch(img.src)).arrayBuffer()))")
    return np.asarray(Image.open(io.BytesIO(bytes(data))).convert("RGB"))


def server_decode(url: str, tokens: list[int]) -> np.ndarray:
    r = httpx.post(f"{url}/decode", json={"tokens": tokens}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def cell_values(page: Page) -> list[int]:
    return [int(v) for v in page.locator(".card .cell").evaluate_all("cells => cells.map(c => c.value)")]


def wait_decoded(page: Page, n: int) -> None:
    expect(page.locator(".card")).to_have_attribute("data-decoded", str(n))


def test_photo_to_tokens_to_picture_and_every_control(browser: Browser, site: str) -> None:
    photo = PHOTO.read_bytes()
    page, requests, errors = open_page(browser, site)
    expect(page.locator("#model dd").first).to_have_text("test-tiny")
    assert page.locator("#model dd").all_inner_texts()[:5] == ["test-tiny", "32 × 32 px", "8", "64", "cpu, float32"]

    page.get_by_label("Choose images").set_input_files(PHOTO)
    wait_decoded(page, 1)
    expect(page.locator(".card .psnr-value")).to_contain_text("dB")
    tokens = httpx.post(f"{site}/encode", files={"images": ("p.jpg", photo)}, timeout=60).json()["tokens"][0]
    assert cell_values(page) == tokens and len(tokens) == 8  # K cells, the service's own tokens
    for img in (".card .input", ".card .recon"):
        assert page.locator(img).evaluate("i => [i.naturalWidth, i.naturalHeight]") == [32, 32]
    model_input = codec.load_image(photo, 32)
    assert np.array_equal(shown_pixels(page, ".card .input"), model_input)
    before = shown_pixels(page, ".card .recon")
    assert np.array_equal(before, server_decode(site, tokens))
    expected = psnr(*(torch.tensor(a).permute(2, 0, 1)[None] for a in (model_input, before))).item()
    shown = float(page.locator(".card .psnr-value").inner_text().removesuffix(" dB"))
    assert abs(shown - expected) <= 0.005 + 1e-9, (shown, expected)

    # typing an ID decodes again at once, and the picture is the service's decode of the edited tokens
    edited = [*tokens]
    edited[0] = (tokens[0] + 17) % 64
    cell = page.get_by_label("Token 1", exact=True)
    cell.fill(str(edited[0]))
    cell.press("Enter")
    wait_decoded(page, 2)
    after = shown_pixels(page, ".card .recon")
    assert not np.array_equal(after, before)
    assert np.array_equal(after, server_decode(site, edited))
    expect(cell).to_have_class(re.compile(r"\bedited\b"))
    expect(cell).to_have_attribute("title", f"Token 1: ID {edited[0]}")

    # R randomises a token, Up steps one; an ID outside the codebook is refused with a message, not sent
    page.get_by_label("Token 2", exact=True).press("r")
    wait_decoded(page, 3)
    assert cell_values(page)[1] != tokens[1] and 0 <= cell_values(page)[1] < 64
    third = page.get_by_label("Token 3", exact=True)
    third.fill("64")
    third.press("Enter")
    expect(page.locator(".card .card-error")).to_contain_text("from 0 to 63")
    expect(third).to_have_value(str(tokens[2]))
    third.press("ArrowUp")
    wait_decoded(page, 4)  # the refused ID sent nothing
    assert cell_values(page)[2] == (tokens[2] + 1) % 64
    page.get_by_role("button", name="Randomise token 3").click()
    wait_decoded(page, 5)
    assert cell_values(page)[2] != (tokens[2] + 1) % 64

    page.get_by_role("button", name="Reset tokens").click()
    wait_decoded(page, 6)
    assert cell_values(page) == tokens
    assert np.array_equal(shown_pixels(page, ".card .recon"), before)
    expect(page.get_by_role("button", name="Reset tokens")).to_be_disabled()

    page.get_by_role("button", name="Copy tokens as JSON").click()
    expect(page.locator("#status")).to_contain_text("Copied")
    assert json.loads(page.evaluate("navigator.clipboard.readText()")) == {"tokens": tokens}
    with page.expect_download() as download:
        page.get_by_role("link", name="Download PNG").click()
    assert download.value.suggested_filename == "grace_hopper-reconstruction.png"
    assert np.array_equal(np.asarray(Image.open(download.value.path()).convert("RGB")), before)

    assert [r for r in requests if "/encode" in r] == [f"POST {site}/encode?resize=crop"]
    assert all(r.split(" ", 1)[1].startswith((site, "blob:", "data:")) for r in requests), requests
    assert not errors


def test_several_images_go_in_one_request_and_the_resize_mode_is_used(browser: Browser, site: str,
                                                                       tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    wide.write_bytes(save(two_halves(64, 32), "PNG"))
    page, requests, errors = open_page(browser, site)
    page.get_by_label("Resize").select_option("pad")
    page.get_by_label("Choose images").set_input_files([PHOTO, wide])
    cards = page.locator(".card")
    expect(cards).to_have_count(2)
    expect(cards.nth(0).locator(".name")).to_have_text("grace_hopper.jpg")
    expect(cards.nth(1).locator(".name")).to_have_text("wide.png")
    for i in range(2):
        expect(cards.nth(i)).to_have_attribute("data-decoded", "1")
        expect(cards.nth(i).locator(".psnr-value")).to_contain_text("dB")
        assert cards.nth(i).locator(".cell").count() == 8
    padded = shown_pixels(page, ".card:nth-child(2) .input")
    assert np.array_equal(padded, codec.load_image(wide.read_bytes(), 32, "pad"))
    assert [r for r in requests if "/encode" in r] == [f"POST {site}/encode?resize=pad"]
    assert not errors


def test_api_errors_are_shown_as_readable_messages(browser: Browser, site: str, tmp_path: Path) -> None:
    page, _, errors = open_page(browser, site)
    upload = page.get_by_label("Choose images")
    notes = tmp_path / "notes.png"
    notes.write_bytes(b"a shopping list, not a picture")
    upload.set_input_files(notes)
    error = page.get_by_role("alert").first
    expect(error).to_contain_text('images[0] "notes.png": the data is not an image in a supported format')
    expect(error).to_contain_text("HTTP 400, invalid_image")
    big = tmp_path / "big.bmp"
    big.write_bytes(b"BM" + bytes(300 * 1024))  # over make_settings' 256 KiB upload limit
    upload.set_input_files(big)
    expect(error).to_contain_text("over the limit of 262144 bytes")
    expect(error).to_contain_text("HTTP 413, payload_too_large")
    upload.set_input_files(PHOTO)  # the page and the service carry on
    expect(page.locator(".card")).to_have_attribute("data-decoded", "1")
    expect(page.locator("#error")).to_be_hidden()
    assert not errors


def test_a_full_queue_is_shown_with_when_to_retry(browser: Browser, tiny_artifact: Path) -> None:
    engine = FakeEngine()
    app = build_app(make_settings(tiny_artifact, max_queue_size=1, max_batch_size=1), engine=engine)
    with serving(app) as url:
        page, _, errors = open_page(browser, url)
        expect(page.locator("#model dd").first).to_have_text("fake")
        engine.gate.clear()  # one item in the model, one waiting: the queue (1 item) is full
        held = [threading.Thread(target=httpx.post, args=(f"{url}/decode",),
                                 kwargs={"json": {"tokens": [0] * 8}, "timeout": 60}) for _ in range(2)]
        held[0].start()
        assert engine.entered.wait(30)
        held[1].start()
        for _ in range(3000):
            if app.state.service.batcher.depth == 1:
                break
            threading.Event().wait(0.01)
        page.get_by_label("Choose images").set_input_files(PHOTO)
        expect(page.locator("#error")).to_contain_text("the queue is full")
        expect(page.locator("#error")).to_contain_text("retry in 1 s (HTTP 503, queue_full)")
        engine.gate.set()
        for t in held:
            t.join(30)
        assert not errors


class KeyRequired:
    """The contract of the API-key middleware being built alongside (Bearer key; else 401, a JSON error and
    WWW-Authenticate), wrapped around the app so the page's side of it is tested now. The page's own files
    stay open: a browser cannot send a header when it navigates."""

    def __init__(self, app: Any, key: str) -> None:
        self.app, self.key = app, key
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and not (scope["path"] == "/" or scope["path"].startswith("/ui/")
                                            and scope["method"] == "GET"):
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            self.seen.append((scope["path"], auth))
            if auth != f"Bearer {self.key}":
                body = json.dumps({"error": {"code": "unauthorized", "message": "a valid API key is required",
                                             "request_id": "test"}}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"www-authenticate", b'Bearer realm="titok"')]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def test_an_api_key_is_asked_for_kept_for_the_tab_and_sent_on_every_call(browser: Browser,
                                                                         tiny_artifact: Path) -> None:
    guarded = KeyRequired(build_app(make_settings(tiny_artifact)), "sesame")
    with serving(guarded) as url:
        page, _, errors = open_page(browser, url)
        key = page.get_by_label("API key")
        expect(key).to_be_visible()
        expect(key).to_be_focused()
        key.fill("wrong")
        key.press("Enter")
        expect(page.locator("#error")).to_contain_text("enter the service's API key above (HTTP 401, unauthorized)")
        expect(key).to_be_visible()
        key.fill("sesame")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#model dd").first).to_have_text("test-tiny")
        expect(key).to_be_hidden()
        guarded.seen.clear()
        page.get_by_label("Choose images").set_input_files(PHOTO)
        expect(page.locator(".card")).to_have_attribute("data-decoded", "1")
        expect(page.locator(".card .psnr-value")).to_contain_text("dB")
        assert {path for path, _ in guarded.seen} == {"/encode", "/decode", "/ui/input"}
        assert all(auth == "Bearer sesame" for _, auth in guarded.seen), guarded.seen
        assert page.evaluate("sessionStorage.getItem('titok-api-key')") == "sesame"
        assert not errors


def test_drop_and_paste_and_the_keyboard(browser: Browser, site: str) -> None:
    page, _, errors = open_page(browser, site)
    png = list(save(two_halves(), "PNG"))
    for event, name in (("drop", "dropped.png"), ("paste", "pasted.png")):
        page.evaluate("""([event, name, bytes]) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], name, {type: "image/png"}));
            const init = {bubbles: true, cancelable: true};
            const target = event === "drop" ? document.querySelector("#drop") : document.body;
            target.dispatchEvent(event === "drop" ? new DragEvent("drop", {...init, dataTransfer: data})
                                                  : new ClipboardEvent("paste", {...init, clipboardData: data}));
        }""", [event, name, png])
        expect(page.locator(".card .name")).to_have_text(name)
        expect(page.locator(".card")).to_have_attribute("data-decoded", "1")
    # every control has a name a screen reader reads out, and Tab reaches them in reading order
    unnamed = page.evaluate("""() => [...document.querySelectorAll("input, select, button, a")]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute("aria-label") && !el.textContent.trim())
        .map(el => el.outerHTML)""")
    assert unnamed == []
    page.locator("body").focus()
    order = []
    for _ in range(4):
        page.keyboard.press("Tab")
        order.append(page.evaluate("document.activeElement.id || document.activeElement.getAttribute('aria-label')"))
    assert order == ["files", "resize", "Token 1", "Token 2"]
    # a phone-sized window scrolls down only, never sideways
    for width, height in ((390, 844), (1280, 800)):
        page.set_viewport_size({"width": width, "height": height})
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    assert not errors
