"""The playground page at /, in a real headless Chromium against the real Gunicorn server.

Browser tests need Debian's `chromium` (/usr/bin/chromium) and the `playwright` package
(`.ci/run` installs both); without them they are skipped, with the reason. Screenshots go
to test-artifacts/ at the repository root.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.support.apps import server_env
from tests.support.client import post_generation_http
from tests.support.gunicorn import ROOT, GunicornServer

try:
    from playwright.sync_api import Browser, Page, Playwright, expect, sync_playwright
except ImportError:  # the browser tests skip below, with the reason
    sync_playwright = None

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# The CPU is slow and shared: wait long for anything the server does.
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.slow  # a real browser against the real Gunicorn server


@pytest.fixture(scope="module")
def lora_dir(lora_sources: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two working LoRA adapters for the tiny model."""
    directory = tmp_path_factory.mktemp("playground-loras")
    for name in ("style_a", "style_b"):
        shutil.copyfile(lora_sources / f"{name}.safetensors", directory / f"{name}.safetensors")
    return directory


@pytest.fixture(scope="module")
def lora_server(
    model_cache: Path, lora_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The real server on the tiny model with LORA_DIR set, for the adapter test."""
    image_dir = tmp_path_factory.mktemp("playground-images")
    env = server_env(model_cache, image_dir, LORA_DIR=lora_dir)
    with GunicornServer(env) as server:
        yield server.base_url


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if sync_playwright is None:
        pytest.skip("the playwright package is not installed (pip install -r requirements-dev.txt)")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; .ci/run does)")
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
    yield browser
    browser.close()


@contextmanager
def open_playground(browser: Browser, server: str) -> Iterator[Page]:
    """Open the playground in a fresh context (own storage) once the page shows readiness.

    Any script error in the page fails the test.
    """
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{server}/")
    expect(page.locator("#readiness")).to_have_attribute("data-state", "ready", timeout=TIMEOUT_MS)
    yield page
    context.close()
    assert not errors, f"script errors in the page: {errors}"


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    with open_playground(browser, server) as page:
        yield page


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def server_streams(server: str) -> bool:
    """Ask the server directly whether generations stream (text/event-stream)."""
    body = {"prompt": "probe", "size": "64x64", "num_inference_steps": 1, "stream": True}
    response = post_generation_http(server, body, timeout=120)
    return response.ok and response.headers["Content-Type"].startswith("text/event-stream")


def fill_generation(page: Page, prompt: str, *, n: int = 1, steps: int = 2) -> None:
    page.fill("#prompt", prompt)
    page.select_option("#size", "64x64")
    page.select_option("#n", str(n))
    page.fill("#steps", str(steps))


def final_cards(page: Page, run: str = ".run") -> Any:
    return page.locator(f"{run} .card[data-state='final']")


def check_final_card(card: Any) -> tuple[str, int]:
    """Assert the card shows a loaded image, its seed and a download link; return src, seed."""
    img = card.locator("img")
    assert img.evaluate("img => img.complete && img.naturalWidth") == 64
    seed = int(card.locator(".seed code").inner_text())
    assert card.get_attribute("data-seed") == str(seed)
    link = card.locator("a.download")
    expect(link).to_be_visible()
    assert link.get_attribute("download") == f"image-{seed}.png"
    src = img.get_attribute("src")
    assert link.get_attribute("href") == src
    return src, seed


def test_page_and_assets_are_served(server: str) -> None:
    page = requests.get(f"{server}/", timeout=30)
    assert page.status_code == 200
    assert page.headers["Content-Type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        response = requests.get(f"{server}{asset}", timeout=30)
        assert response.status_code == 200, asset
    assert "/static/playground.js" in page.text and "/static/playground.css" in page.text


def test_generating_shows_images_with_seeds_and_download_links(page: Page, server: str) -> None:
    expect(page.locator("#model-id")).to_have_text("tiny-random")
    expect(page.locator("#empty")).to_be_visible()

    # Two images are never streamed: the page asks for URLs and shows both.
    fill_generation(page, "a lighthouse at dusk, warm light, soft fog", n=2)
    page.click("#submit")
    expect(final_cards(page)).to_have_count(2, timeout=TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
    expect(page.locator("#empty")).to_be_hidden()

    seeds = []
    for index in range(2):
        src, seed = check_final_card(final_cards(page).nth(index))
        assert src.startswith(f"{server}/static/images/"), src
        image = requests.get(src, timeout=30)
        assert image.status_code == 200 and image.content.startswith(PNG_MAGIC)
        seeds.append(seed)
    assert seeds[1] == seeds[0] + 1

    # "Use seed" puts the seed back in the form.
    final_cards(page).first.locator(".use-seed").click()
    expect(page.locator("#seed")).to_have_value(str(seeds[0]))
    screenshot(page, "playground.png")
    page.emulate_media(color_scheme="dark")
    page.wait_for_timeout(500)  # let the colour transitions finish before the picture
    screenshot(page, "playground-dark.png")


def test_adapters_are_offered_and_sent_with_their_scales(
    browser: Browser, lora_server: str, lora_dir: Path
) -> None:
    with open_playground(browser, lora_server) as page:
        page.click("#advanced summary")
        expect(page.locator(".lora-row")).to_have_count(2)
        row = page.locator(".lora-row[data-name='style_a']")
        row.locator(".lora-use").check()
        row.locator(".lora-scale").fill("0.5")
        fill_generation(page, "a fox in the snow", n=2)  # two images: URLs, no stream
        with page.expect_request("**/v1/images/generations") as sent:
            page.click("#submit")
        assert sent.value.post_data_json["loras"] == [{"name": "style_a", "scale": 0.5}]
        expect(final_cards(page)).to_have_count(2, timeout=TIMEOUT_MS)
        expect(page.locator(".run-meta").first).to_contain_text("style_a × 0.5")
        src, _ = check_final_card(final_cards(page).first)
        png = Image.open(io.BytesIO(requests.get(src, timeout=30).content))
        assert json.loads(png.text["parameters"])["loras"] == [{"name": "style_a", "scale": 0.5}]

        # A file dropped into LORA_DIR is offered when Advanced opens again; ticks stay.
        shutil.copyfile(lora_dir / "style_b.safetensors", lora_dir / "dropped_in.safetensors")
        page.click("#advanced summary")
        page.click("#advanced summary")
        expect(page.locator(".lora-row")).to_have_count(3)
        expect(row.locator(".lora-use")).to_be_checked()
        expect(row.locator(".lora-scale")).to_have_value("0.5")
        screenshot(page, "playground-loras.png")


def test_live_preview_shows_partial_images_before_the_final_one(page: Page, server: str) -> None:
    streams = server_streams(server)
    expect(page.locator("#stream")).to_be_checked()
    fill_generation(page, "a red bicycle leaning on a wall", n=1)
    page.keyboard.press("Control+Enter")  # submits from anywhere in the form
    expect(final_cards(page)).to_have_count(1, timeout=TIMEOUT_MS)
    card = final_cards(page).first
    src, _ = check_final_card(card)
    expect(page.locator("#error")).to_be_hidden()
    if not streams:
        # The page asked for a stream, got the 400 on `stream`, and asked again without.
        assert src.startswith(f"{server}/static/images/"), src
        pytest.skip(
            "the server does not stream yet (stream=true is a 400): checked the page's "
            "fallback to a plain request, not the partial images"
        )
    assert int(card.get_attribute("data-partials") or 0) >= 1, "no partial image was shown"
    assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)


def test_server_errors_are_shown_in_plain_words(page: Page, server: str) -> None:
    # What the server says about this request, asked directly.
    body = {"prompt": "too many steps", "size": "64x64", "num_inference_steps": 1000}
    answer = post_generation_http(server, body, timeout=60)
    assert answer.status_code == 400
    message = answer.json()["error"]["message"]

    fill_generation(page, "too many steps", steps=1000)
    page.click("#submit")
    banner = page.locator("#error")
    expect(banner).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.locator("#error-message")).to_have_text(message)
    assert "num_inference_steps" in message
    expect(page.locator("#submit")).to_be_enabled()
    screenshot(page, "playground-error.png")

    # An empty prompt is caught in the page, with a message that says what to do.
    page.click("#error-close")
    page.fill("#prompt", "")
    page.click("#submit")
    expect(page.locator("#error-title")).to_have_text("Check the form")
    expect(page.locator("#error-message")).to_contain_text("prompt")


# Keep the form data the page sends (Chromium does not report blob-backed request bodies).
RECORD_FORMS = """() => {
    const realFetch = window.fetch;
    window.sentForms = [];
    window.fetch = function (input, init) {
        if (init && init.body instanceof FormData) window.sentForms.push(init.body);
        return realFetch.apply(this, arguments);
    };
}"""
SENT_FILE = """async (name) => {
    const file = window.sentForms.at(-1).get(name);
    if (!file) return null;
    const bytes = new Uint8Array(await file.arrayBuffer());
    let text = "";
    for (const byte of bytes) text += String.fromCharCode(byte);
    return btoa(text);
}"""


def test_editing_an_uploaded_image_with_a_painted_mask(
    page: Page, server: str, tmp_path: Path
) -> None:
    probe = requests.post(f"{server}/v1/images/edits", timeout=30)
    if probe.status_code == 404:
        pytest.skip("POST /v1/images/edits does not exist on this server yet (404)")

    source = tmp_path / "source.png"
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(source)

    page.click("#tab-edit")
    expect(page.locator("#submit-label")).to_have_text("Edit image")
    page.set_input_files("#edit-image", str(source))
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box is not None
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.75, y, steps=10)
    page.mouse.up()

    page.fill("#prompt", "turn it into a stained glass window")
    page.fill("#steps", "2")
    page.evaluate(RECORD_FORMS)
    page.click("#submit")
    edits = final_cards(page, ".run[data-mode='edit']")
    expect(edits).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator("#error")).to_be_hidden()
    check_final_card(edits.first)
    screenshot(page, "playground-edit.png")

    # What was sent: the file as chosen, and a mask of its size whose painted pixels are
    # fully transparent and the rest opaque.
    assert base64.b64decode(page.evaluate(SENT_FILE, "image")) == source.read_bytes()
    mask = Image.open(io.BytesIO(base64.b64decode(page.evaluate(SENT_FILE, "mask"))))
    assert mask.format == "PNG" and mask.size == (64, 64)
    alpha = np.asarray(mask.convert("RGBA"))[..., 3]
    assert set(np.unique(alpha).tolist()) == {0, 255}
    painted = alpha == 0
    assert 0 < painted.sum() < 64 * 64 / 2
    assert painted[32, 16:48].all() and not painted[:8].any()  # the stroke, across the middle


def test_a_server_with_api_keys_gets_the_key_from_the_page(
    browser: Browser, model_cache: Path, tmp_path: Path
) -> None:
    key = "playground-test-key"
    env = server_env(model_cache, tmp_path / "images", API_KEYS=key)
    with GunicornServer(env) as server, open_playground(browser, server.base_url) as page:
        # GET /v1/models answered 401: the page asks for a key.
        expect(page.locator("#api-key-bar")).to_be_visible()
        expect(page.locator("#model-id")).to_have_text("API key needed")
        fill_generation(page, "a locked door")
        page.click("#submit")
        expect(page.locator("#error-title")).to_have_text("This server needs an API key")
        expect(page.locator("#error-message")).to_contain_text("API key")
        screenshot(page, "playground-api-key.png")

        page.fill("#api-key", key)
        page.click("#api-key-form button[type='submit']")
        expect(page.locator("#model-id")).to_have_text("tiny-random")
        assert page.evaluate("localStorage.getItem('imagePlayground.apiKey')") == key
        page.click("#submit")
        expect(final_cards(page)).to_have_count(1, timeout=TIMEOUT_MS)
        check_final_card(final_cards(page).first)
        expect(page.locator("#error")).to_be_hidden()
