"""The upload form in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

With JavaScript on, the form is sent with fetch() and the results fragment replaces the empty
results panel without a page load; with JavaScript off, the plain multipart post shows the
full result page. Screenshots at laptop and phone width go to ``tmp_path`` for a human to look at.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from support import FIXTURES

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


def new_page(browser, viewport=LAPTOP, **options):
    context = browser.new_context(viewport=viewport, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context, context.new_page()


def test_upload_with_javascript_shows_results_in_place(browser, expect, server, tmp_path):
    context, page = new_page(browser)
    try:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server + "/")
        expect(page.get_by_role("heading", name="Recognize a digit")).to_be_visible()
        expect(page.locator(".empty")).to_be_visible()

        page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
        local = page.locator("#local-preview-img")
        expect(local).to_be_visible()  # the local preview, before anything is sent
        expect(page.locator("#local-preview-caption")).to_contain_text("digit7_28.png")

        with page.expect_request(lambda r: r.url.endswith("/result")) as sent:
            page.get_by_role("button", name="Recognize").click()
        assert sent.value.headers.get("x-requested-with") == "fetch"

        cards = page.locator("#results .model-result")
        expect(cards).to_have_count(2)
        expect(cards.locator(".top-label")).to_have_text(["7", "7"])
        model_input = cards.first.locator(".model-input img")
        expect(model_input).to_be_visible()
        assert model_input.evaluate("img => img.complete && img.naturalWidth") == 224
        assert page.url.rstrip("/") == server  # no page load: the fragment went in place
        expect(page.get_by_role("button", name="Recognize")).to_be_enabled()

        page.screenshot(path=tmp_path / "result-laptop.png", full_page=True)
        page.set_viewport_size(PHONE)
        page.screenshot(path=tmp_path / "result-phone.png", full_page=True)
        page.set_viewport_size(LAPTOP)

        # "Correct?" -> Yes sends the predicted label to /v1/feedback and thanks in place.
        feedback = cards.first.locator(".feedback")
        expect(feedback).to_contain_text("Correct?")
        with page.expect_response(lambda r: r.url.endswith("/v1/feedback")) as answer:
            feedback.get_by_role("button", name="Yes").click()
        assert answer.value.status == 200
        expect(feedback.locator(".feedback-status")).to_contain_text("Thanks")
        assert page.url.rstrip("/") == server

        page.get_by_label("Image file").set_input_files(FIXTURES / "not_an_image.txt")
        page.get_by_role("button", name="Recognize").click()
        alert = page.locator("#results").get_by_role("alert")
        expect(alert).to_contain_text("not an image")
        expect(alert).to_contain_text("HTTP 400")
        expect(cards).to_have_count(0)
        page.screenshot(path=tmp_path / "error-laptop.png", full_page=True)
        assert errors == []
        print(f"screenshots in {tmp_path}")
    finally:
        context.close()


def test_clicking_the_preview_sets_the_crop_centre(browser, expect, server):
    context, page = new_page(browser)
    try:
        page.goto(server + "/")
        page.get_by_label("Image file").set_input_files(FIXTURES / "dark_on_light.png")
        image = page.locator("#local-preview-img")
        expect(image).to_be_visible()
        page.wait_for_function("document.getElementById('local-preview-img').naturalWidth > 0")
        box = image.bounding_box()
        image.click(position={"x": box["width"] * 0.75, "y": box["height"] * 0.25})
        x, y = float(page.locator("#x").input_value()), float(page.locator("#y").input_value())
        assert abs(x - 150) <= 3 and abs(y - 50) <= 3  # pixels of the 200x200 original
        expect(page.locator("#crosshair")).to_be_visible()
        page.get_by_role("button", name="Clear").click()
        expect(page.locator("#x")).to_have_value("")
        expect(page.locator("#crosshair")).to_be_hidden()
    finally:
        context.close()


def test_plain_form_post_without_javascript(browser, expect, server, tmp_path):
    context, page = new_page(browser, viewport=PHONE, java_script_enabled=False)
    try:
        page.goto(server + "/")
        page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
        page.get_by_label("Model").select_option("digits-cnn")
        with page.expect_navigation():
            page.get_by_role("button", name="Recognize").click()
        assert page.url == server + "/result"
        cards = page.locator("#results .model-result")
        expect(cards).to_have_count(1)
        expect(cards.locator(".top-label")).to_have_text("7")
        expect(cards.locator(".model-input img")).to_be_visible()
        # The form is there again, with the model kept, to try another image.
        expect(page.get_by_label("Model")).to_have_value("digits-cnn")
        expect(page.get_by_role("button", name="Recognize")).to_be_visible()
        expect(page.get_by_role("button", name="Clear")).to_be_hidden()  # JS-only control
        page.screenshot(path=tmp_path / "nojs-result-phone.png", full_page=True)
        assert re.search(r"Result", page.title())
    finally:
        context.close()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A server whose form needs an API key (yields its URL and a user key)."""
    from service.access.keys import add_key
    from support import ServerProcess

    tmp = tmp_path_factory.mktemp("browser-keys")
    _, key = add_key(tmp / "keys.json", "tester")
    proc = ServerProcess(tmp, f'[service]\nmodels = ["digits-cnn"]\n'
                              f'[auth]\nkeys_file = "{tmp / "keys.json"}"\n').start()
    yield proc.url, key
    proc.stop()


@pytest.mark.parametrize("javascript", [True, False])
def test_a_tester_types_the_key_into_the_form(browser, expect, keyed_server, tmp_path,
                                              javascript):
    url, key = keyed_server
    context, page = new_page(browser, java_script_enabled=javascript)
    try:
        page.goto(url + "/")
        page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
        page.get_by_label("API key").fill("not-the-key")
        page.get_by_role("button", name="Recognize").click()
        expect(page.locator("#results")).to_contain_text("not valid")
        page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
        page.get_by_label("API key").fill(key)
        page.get_by_role("button", name="Recognize").click()
        cards = page.locator("#results .model-result")
        expect(cards.locator(".top-label")).to_have_text("7")
        feedback = cards.first.locator(".feedback")
        feedback.get_by_role("button", name="Yes").click()  # sends the key along
        thanks = feedback.locator(".feedback-status") if javascript else page.locator("main")
        expect(thanks).to_contain_text("Thanks" if javascript else "Thank")
        page.screenshot(path=tmp_path / f"keyed-{'js' if javascript else 'nojs'}.png",
                        full_page=True)
    finally:
        context.close()
