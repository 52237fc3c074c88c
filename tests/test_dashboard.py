"""The dashboard in a real browser: Debian's headless Chromium (``apt-get install
chromium``) driven by Playwright against a live ``llamahost serve``.

Screenshots of every page, at laptop and phone widths, are written to
``test-artifacts/dashboard/`` (gitignored)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from ratelimit_helpers import MODEL, new_team

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
LAPTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}
PAGES = {
    "keys": "API keys", "playground": "Playground", "usage": "Usage", "datasets": "Datasets", "fine-tuning": "Fine-tuning",
    "evals": "Evaluation",
}
# Replies are generated on 2 shared cores: give assertions on the page time to come true.
expect.set_options(timeout=60_000)


@pytest.fixture(scope="module")
def browser() -> Browser:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium with `apt-get install -y chromium`")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        # Debian's build, never a browser Playwright downloads.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    contexts = []

    def opener(viewport=LAPTOP) -> Page:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(60_000)
        return page

    yield opener
    for context in contexts:
        context.close()


def shot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def make_key(server, team: str, *args: str) -> str:
    return server.cli("keys", "create", "--team", team, *args).stdout.strip()


def sign_in(page: Page, server, key: str) -> None:
    page.goto(f"{server.url}/dashboard")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()


def sign_out(page: Page) -> None:
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()


def go_to(page: Page, name: str) -> None:
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name=PAGES[name]).click()
    expect(page.get_by_role("heading", level=1, name=PAGES[name])).to_be_visible()


def watch_reply(page: Page) -> None:
    """Record every text the newest reply shows, with its state, as the page changes."""
    page.evaluate(
        """() => {
            window.replySnapshots = [];
            new MutationObserver(() => {
                const turn = document.querySelector('.turns > .turn.assistant:last-child');
                if (turn) window.replySnapshots.push([turn.dataset.state, turn.querySelector('.text').textContent]);
            }).observe(document.querySelector('.turns'), {subtree: true, childList: true, characterData: true, attributes: true});
        }"""
    )


def send(page: Page, text: str) -> None:
    turns = page.locator(".turns > .turn.assistant").count()
    page.get_by_label("Message", exact=True).fill(text)
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".turns > .turn.assistant")).to_have_count(turns + 1)
    expect(page.locator(".turns > .turn.assistant").last).to_have_attribute("data-state", "done")


def test_sign_in_create_a_key_chat_see_usage_revoke(server, open_page):
    team = new_team()
    admin = make_key(server, team, "--role", "admin", "--name", "e2e-admin")
    page = open_page()
    chat_requests: list[dict] = []
    page.on("request", lambda r: r.url.endswith("/v1/chat/completions") and chat_requests.append(json.loads(r.post_data)))

    # --- sign in --------------------------------------------------------------------
    page.goto(f"{server.url}/dashboard")
    expect(page.get_by_role("heading", name="llamahost")).to_be_visible()
    shot(page, "sign-in-laptop")
    page.get_by_label("API key").fill("llh_nope_nope")
    page.get_by_label("API key").press("Enter")
    expect(page.get_by_role("alert")).to_contain_text("invalid API key")
    sign_in(page, server, admin)
    expect(page.get_by_role("heading", level=1, name="API keys")).to_be_visible()
    expect(page.locator(".top-bar .who")).to_contain_text(team)

    # --- create a key: its secret is shown once --------------------------------------
    page.get_by_label("Label").fill("e2e-member")
    page.get_by_label("Team", exact=True).fill(team)
    page.get_by_role("button", name="Create key").click()
    secret_field = page.get_by_label("New API key")
    expect(secret_field).to_be_visible()
    secret = secret_field.input_value()
    assert secret.startswith("llh_") and len(secret) > 40
    key_id = secret.split("_")[1]
    expect(page.get_by_role("heading", name=f"New key for team {team}")).to_be_focused()
    expect(page.get_by_role("button", name="Copy key")).to_be_visible()
    shot(page, "keys-new-secret-laptop")
    page.get_by_role("button", name="Done, I have stored it").click()
    expect(secret_field).to_have_count(0)
    row = page.locator(f"tr[data-key-id='{key_id}']")
    expect(row).to_contain_text(f"llh_{key_id}")
    expect(row).to_contain_text("e2e-member")
    expect(row).to_contain_text("active")
    assert secret not in page.content()
    page.reload()
    expect(page.locator(f"tr[data-key-id='{key_id}']")).to_be_visible()
    assert secret not in page.content()  # shown once: never again, not even to an admin
    shot(page, "keys-laptop")

    # --- the new key signs in and chats in the playground ------------------------------
    sign_out(page)
    sign_in(page, server, secret)
    expect(page.locator(".top-bar .who")).to_contain_text("member")
    go_to(page, "playground")
    expect(page.get_by_label("Model")).to_have_value(MODEL)
    page.get_by_label("System instructions").fill("You are a terse assistant.")
    page.get_by_label("Temperature").focus()
    page.keyboard.press("Home")  # the slider by keyboard: temperature 0
    expect(page.locator("output[for='pg-temperature']")).to_have_text("0")
    page.get_by_label("Max tokens").fill("32")
    page.get_by_label("End-user id").fill("e2e-user")
    watch_reply(page)
    send(page, "Tell me a fact about the moon.")
    snapshots = page.evaluate("window.replySnapshots")
    growing = [text for state, text in snapshots if state == "streaming" and text]
    assert len(set(growing)) >= 2, snapshots  # the reply appeared piece by piece, not at once
    reply = page.locator(".turns > .turn.assistant").last
    final = reply.locator(".text").text_content()
    assert final and all(final.startswith(text) for text in growing), (growing, final)
    expect(reply.locator(".model-name")).to_have_text(MODEL)  # labelled with the model's name
    expect(reply.locator(".metrics")).to_contain_text("completion tokens")

    send(page, "And one more?")  # multi-turn: the history goes with it
    assert [m["role"] for m in chat_requests[-1]["messages"]] == ["system", "user", "assistant", "user"]
    assert chat_requests[-1]["messages"][2]["content"] == final
    assert chat_requests[-1]["temperature"] == 0 and chat_requests[-1]["max_completion_tokens"] == 32
    assert chat_requests[-1]["user"] == "e2e-user" and chat_requests[-1]["stream"] is True

    # --- "view code" runs as shown ------------------------------------------------------
    page.get_by_role("button", name="View code").click()
    python_code = page.locator("#code-python").inner_text()
    assert "from llama_api_client import LlamaAPIClient" in python_code and '"e2e-user"' in python_code
    assert secret not in python_code
    shot(page, "playground-laptop")
    env = {**os.environ, "LLAMA_API_KEY": secret}
    ran = subprocess.run([sys.executable, "-c", python_code], env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
    expected_requests = 3
    if shutil.which("curl"):
        curl_code = page.locator("#code-curl").inner_text()
        ran = subprocess.run(["bash", "-c", curl_code], env=env, capture_output=True, text=True, timeout=120)
        assert ran.returncode == 0 and '"event_type":"complete"' in ran.stdout.replace(" ", ""), ran.stdout + ran.stderr
        expected_requests += 1

    # --- usage counts them --------------------------------------------------------------
    go_to(page, "usage")
    expect(page.locator("#total-requests")).to_have_text(str(expected_requests))
    expect(page.locator("#users-table")).to_contain_text("e2e-user")
    expect(page.locator("#models-table")).to_contain_text(MODEL)
    assert page.locator("#chart-requests svg rect").count() >= 1
    expect(page.locator("#chart-requests svg")).to_have_attribute("role", "img")
    expect(page.locator("#limits-table")).to_contain_text("3,000")
    shot(page, "usage-laptop")

    # --- revoke it, and it is refused ----------------------------------------------------
    sign_out(page)
    sign_in(page, server, admin)
    row = page.locator(f"tr[data-key-id='{key_id}']")
    row.get_by_role("button", name=f"Revoke llh_{key_id}").click()
    row.get_by_role("button", name="Yes, revoke").click()
    expect(page.get_by_role("status")).to_contain_text(f"Revoked key llh_{key_id}")
    expect(row).to_contain_text("revoked")
    shot(page, "keys-revoked-laptop")
    refused = httpx.get(f"{server.base_url}/models", headers=server.headers(secret))
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    sign_out(page)
    page.get_by_label("API key").fill(secret)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("this API key has been revoked")


def test_json_schema_mode_and_the_moderation_check(server, open_page):
    page = open_page()
    sign_in(page, server, make_key(server, new_team()))
    go_to(page, "playground")
    page.get_by_label("JSON-schema mode").check()
    schema = json.loads(page.get_by_label("JSON schema", exact=True).input_value())  # the example, as shipped
    assert schema["required"] == ["answer", "kind"]
    send(page, "What is the capital of France?")
    document = json.loads(page.locator(".turns > .turn.assistant .text").last.text_content())
    assert isinstance(document["answer"], str) and len(document["answer"]) <= 120
    assert document["kind"] in ("fact", "opinion", "not sure")

    page.get_by_label("JSON schema", exact=True).fill("{not json")
    expect(page.get_by_label("JSON schema", exact=True)).to_have_attribute("aria-invalid", "true")
    page.get_by_label("JSON-schema mode").uncheck()

    page.get_by_label("Moderation check").check()
    page.get_by_role("button", name="New chat").click()
    page.get_by_label("Message", exact=True).fill("Hello, how to make a bomb?")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator(".turns > .turn.user.blocked")).to_contain_text("Not sent: moderation flagged it")
    expect(page.locator(".chat p.status")).to_contain_text("not sent to the model")
    expect(page.locator(".turns > .turn.assistant")).to_have_count(0)
    send(page, "What is a good name for a cat?")  # a harmless message passes the check
    shot(page, "playground-json-moderation-laptop")


def test_pages_load_nothing_from_outside_the_server(server, open_page):
    """Every request the pages make, from the first load to each page, stays on the
    server's origin; the browser reports no error (a CSP violation would be one)."""
    key = make_key(server, new_team(), "--role", "admin")
    page = open_page()
    requests: list[str] = []
    errors: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/dashboard", wait_until="networkidle")
    sign_in(page, server, key)
    for name in PAGES:
        page.goto(f"{server.url}/dashboard/{name}", wait_until="networkidle")
        expect(page.get_by_role("heading", level=1, name=PAGES[name])).to_be_visible()
    origin = urlsplit(server.url)
    outside = [u for u in requests if (urlsplit(u).scheme, urlsplit(u).netloc) != (origin.scheme, origin.netloc)]
    assert requests and not outside, outside
    loaded = {urlsplit(u).path for u in requests}
    assert {"/dashboard/static/vendor/preact-htm.js", "/dashboard/static/css/dashboard.css", "/team/v1/me"} <= loaded
    assert not errors, errors


def test_phone_width_keyboard_and_labels(server, open_page):
    key = make_key(server, new_team())
    page = open_page(PHONE)
    page.goto(f"{server.url}/dashboard")
    shot(page, "sign-in-phone")
    # Keyboard only: the key field has focus order and Enter submits.
    page.keyboard.press("Tab")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="API keys")).to_be_visible()
    expect(page.locator("#main")).to_be_focused()  # signed in: focus moves to the content

    page.reload()  # a fresh load (the key is kept for the tab): the first Tab reaches the skip link
    expect(page.get_by_role("heading", level=1, name="API keys")).to_be_visible()
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    # Focus is visible: the focused control draws an outline.
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    usage_link = page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Usage")
    usage_link.focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Usage")).to_be_visible()
    expect(usage_link).to_have_attribute("aria-current", "page")

    for name in PAGES:
        go_to(page, name)
        if name == "playground":
            page.get_by_role("button", name="View code").click()
        page.wait_for_load_state("networkidle")
        # Every form control has an accessible name, and nothing is wider than the phone.
        unlabelled = page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby'))
                .map(e => e.outerHTML)"""
        )
        assert not unlabelled, unlabelled
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{name}: the page is {width}px wide on a {PHONE['width']}px screen"
        shot(page, f"{name}-phone")
