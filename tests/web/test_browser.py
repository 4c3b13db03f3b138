"""The testers' pages in a real headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright): the upload form, the drawing pad, drop and paste, the heat maps, /models, and
axe-core's accessibility checks.

With JavaScript on, the form is sent with fetch() and the results fragment replaces the empty
results panel without a page load; with JavaScript off, the plain multipart post shows the
full result page. Screenshots at laptop and phone width go to ``tmp_path`` for a human to look at.
"""
from __future__ import annotations

import base64
import math
import os
import re
from pathlib import Path

import pytest

from support import FIXTURES, REPO

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
        page.get_by_role("button", name="Clear", exact=True).click()
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
        expect(page.get_by_role("button", name="Clear", exact=True)).to_be_hidden()  # JS-only
        expect(page.locator("#pad")).to_be_hidden()  # drawing needs JavaScript
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


# -- the tester's page: draw, drop, paste, why, the models page, accessibility -----------------
AXE = REPO / "var" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
SMALL_PHONE = {"width": 360, "height": 740}
SHOTS = REPO / "var" / "screenshots"  # test artifacts; the README's copies live in docs/
# Strokes on the pad, as fractions of its size; each a list of points.
SHAPES = {
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "0": [[(0.5 + 0.25 * math.sin(t / 20 * 2 * math.pi),
            0.5 - 0.35 * math.cos(t / 20 * 2 * math.pi)) for t in range(21)]],
    "7": [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]],
}


def draw(page, strokes) -> None:
    pad = page.locator("#pad")
    pad.scroll_into_view_if_needed()
    box = pad.bounding_box()
    for stroke in strokes:
        (x, y), rest = stroke[0], stroke[1:]
        page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for x, y in rest:
            page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=8)
        page.mouse.up()


def ink_pixels(page) -> int:
    return page.evaluate("""() => { const pad = document.getElementById('pad');
        const d = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 128) n++; return n; }""")


def cnn_reads(page):
    return page.locator('#results .model-result[data-model="digits-cnn"] .top-label')


def axe_violations(page) -> list[dict]:
    """axe-core run inside the page: its serious and critical violations."""
    if not AXE.exists():
        reason = f"{AXE} is missing (make install runs npm install axe-core)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    page.add_script_tag(path=str(AXE))
    found = page.evaluate("async () => (await axe.run()).violations.map(v => ({id: v.id, "
                          "impact: v.impact, help: v.help, nodes: v.nodes.length}))")
    return [v for v in found if v["impact"] in ("serious", "critical")]


def test_drawing_is_read_as_you_draw_with_undo_and_clear(browser, expect, server, tmp_path):
    context, page = new_page(browser)
    try:
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server + "/")
        page.get_by_label("Model").select_option("digits-cnn")
        for digit, strokes in SHAPES.items():
            page.get_by_role("button", name="Clear drawing").click()
            assert ink_pixels(page) == 0
            draw(page, strokes)
            expect(cnn_reads(page)).to_have_text(digit)
            page.screenshot(path=tmp_path / f"draw-{digit}.png", full_page=True)
        before = ink_pixels(page)
        draw(page, [[(0.1, 0.9), (0.3, 0.9)]])  # a stray stroke...
        assert ink_pixels(page) > before
        page.get_by_role("button", name="Undo stroke").click()  # ...taken back
        assert ink_pixels(page) == before
        expect(cnn_reads(page)).to_have_text("7")
        card = page.locator('#results .model-result[data-model="digits-cnn"]')
        heat = card.get_by_role("img", name=re.compile("Heat map over the input"))
        expect(heat).to_be_visible()
        card.locator(".second-map summary").click()
        expect(card.get_by_role("img", name=re.compile("Heat map for the runner-up"))).to_be_visible()
        assert errors == []
    finally:
        context.close()


def test_a_dropped_or_pasted_image_is_read(browser, expect, server):
    context, page = new_page(browser)
    try:
        page.goto(server + "/")
        page.get_by_label("Model").select_option("digits-cnn")
        data = base64.b64encode((FIXTURES / "digit2_112.gif").read_bytes()).decode()
        make = ("b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));"
                " const t = new DataTransfer(); t.items.add(new File([bytes], 'digit.gif',"
                " {type: 'image/gif'})); return t; }")
        page.evaluate(f"""b64 => {{ const t = ({make})(b64);
            document.querySelector('main').dispatchEvent(new DragEvent('drop',
                {{dataTransfer: t, bubbles: true, cancelable: true}})); }}""", data)
        expect(cnn_reads(page)).to_have_text("2")
        page.get_by_role("button", name="Clear drawing").click()
        data = base64.b64encode((FIXTURES / "digit7_112.jpg").read_bytes()).decode()
        make = make.replace("digit.gif", "digit.jpg").replace("image/gif", "image/jpeg")
        page.evaluate(f"""b64 => {{ const t = ({make})(b64);
            document.dispatchEvent(new ClipboardEvent('paste',
                {{clipboardData: t, bubbles: true, cancelable: true}})); }}""", data)
        expect(cnn_reads(page)).to_have_text("7")
        assert page.locator("#camera").get_attribute("capture") == "environment"
    finally:
        context.close()


def test_the_models_page_shows_each_model_and_live_accuracy(browser, expect, server, tmp_path):
    context, page = new_page(browser)
    try:
        page.goto(server + "/models")
        for name in ("digits-cnn", "digits-rnn"):
            card = page.locator(f'section[aria-labelledby="model-{name}"]')
            expect(card.get_by_role("heading", name=re.compile(name))).to_be_visible()
            picture = card.get_by_role("img", name=re.compile("Confusion matrix"))
            expect(picture).to_be_visible()
            assert picture.evaluate("img => img.complete && img.naturalWidth") > 0
        cell = page.locator('section[aria-labelledby="model-digits-cnn"] .live-accuracy')
        before = cell.all_inner_texts()
        # a tester reads a 7 and says it was a 1: the live figure moves
        page.goto(server + "/")
        page.get_by_label("Model").select_option("digits-cnn")
        page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
        page.get_by_role("button", name="Recognize").click()
        feedback = page.locator("#results .model-result").first.locator(".feedback")
        feedback.get_by_label("No, it is").select_option("1")
        feedback.get_by_role("button", name="Send").click()
        expect(feedback.locator(".feedback-status")).to_contain_text("Thanks")
        page.goto(server + "/models")
        assert cell.all_inner_texts() != before
        page.screenshot(path=tmp_path / "models.png", full_page=True)
    finally:
        context.close()


@pytest.mark.parametrize("path", ["/", "result", "/models"])
def test_no_serious_accessibility_violations(browser, expect, server, path):
    context, page = new_page(browser)
    try:
        page.goto(server + ("/" if path == "result" else path))
        if path == "result":
            page.get_by_label("Image file").set_input_files(FIXTURES / "digit7_28.png")
            page.get_by_role("button", name="Recognize").click()
            expect(page.locator("#results .model-result")).to_have_count(2)
        assert axe_violations(page) == []
    finally:
        context.close()


def test_the_pages_fit_a_small_phone(browser, expect, server):
    """360 px wide, no horizontal scroll. The screenshots go to var/screenshots/; the
    README shows copies of them from docs/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    context, page = new_page(browser, viewport=SMALL_PHONE)
    try:
        page.goto(server + "/")
        page.get_by_label("Model").select_option("digits-cnn")
        draw(page, SHAPES["7"])
        expect(cnn_reads(page)).to_have_text("7")
        assert page.evaluate("document.documentElement.scrollWidth") <= SMALL_PHONE["width"]
        page.screenshot(path=SHOTS / "tester-draw.png", full_page=True)
        page.goto(server + "/models")
        assert page.evaluate("document.documentElement.scrollWidth") <= SMALL_PHONE["width"]
        page.screenshot(path=SHOTS / "tester-models.png", full_page=True)
        page.set_viewport_size(LAPTOP)
        page.goto(server + "/")
        page.get_by_label("Image file").set_input_files(FIXTURES / "photo_digit.jpg")
        page.get_by_role("button", name="Recognize").click()
        expect(page.locator("#results .model-result")).to_have_count(2)
        page.screenshot(path=SHOTS / "tester-result.png", full_page=True)
    finally:
        context.close()
