"""The dashboard in a real Chromium against a real agent, the camera faked from footage.

The whole ai_nano flow as a student clicks it: log in, make a project of three classes,
capture each class from the browser's camera (a y4m of that digit), split, train with
live curves, deploy through the gate, start a run on the browser's camera and see the
predicted class and the lit pin follow the footage. Screenshots of every page at a
desktop's and a phone's width go to the folder the summary names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Launch
from tests.browser.y4m import changing_video, class_video
from tests.helpers import RunningAgent, agent_in_thread

pytestmark = pytest.mark.slow

TOKEN = "browser-token-123"
CLASSES = ("zero", "one", "two")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
PAGES = ("/", "/models", "/workspaces", "/workspaces/digits", "/run", "/jobs", "/agents")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    data = tmp_path_factory.mktemp("dash-agent")
    with agent_in_thread(data, token=TOKEN, max_queue_delay_ms=1.0) as running:
        yield running


def _url(agent: RunningAgent, path: str = "/") -> str:
    return f"http://127.0.0.1:{agent.http}{path}"


def _log_in(page: Any, agent: RunningAgent, path: str = "/") -> None:
    page.goto(_url(agent, path))
    page.get_by_label("Token").fill(TOKEN)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(path) + "$"))


def _signed_in(browser: Any, cookies: list[Any], viewport: dict[str, int]) -> Any:
    """A page of a new browser (another fake camera) with the session already made."""
    context = browser.new_context(viewport=viewport)
    context.add_cookies(cookies)
    return context.new_page()


def _errors(page: Any) -> list[str]:
    """Script errors of ``page`` (a failed API call is shown, not thrown)."""
    found: list[str] = []
    page.on("pageerror", lambda exc: found.append(str(exc)))
    return found


def test_login_refuses_a_wrong_token_and_a_management_action_needs_the_cookie(
    agent: RunningAgent, launch_browser: Launch, tmp_path: Path
) -> None:
    browser = launch_browser(class_video(tmp_path / "cam.y4m", 0, seconds=1))
    page = browser.new_page()
    page.goto(_url(agent, "/models"))
    assert "/login" in page.url
    page.get_by_label("Token").fill("wrong-token-1")
    page.get_by_role("button", name="Log in").click()
    assert "not this agent's token" in page.locator("#login-error").inner_text()
    # Without the cookie the API refuses the page's own call.
    refused = page.evaluate("async () => (await fetch('/api/models/x', {method: 'DELETE'})).status")
    assert refused == 401
    _log_in(page, agent, "/models")
    # With the cookie but without the page's CSRF header: still refused.
    bare = page.evaluate("async () => (await fetch('/api/models/x', {method: 'DELETE'})).status")
    assert bare == 401
    # The page's own call (cookie + header) gets past the check: the model is not there.
    own = page.evaluate(
        """async () => {
            const csrf = document.querySelector('meta[name="csrf"]').content;
            const r = await fetch('/api/models/x', {method: 'DELETE',
                                  headers: {'X-Edgewire-CSRF': csrf}});
            return r.status;
        }"""
    )
    assert own == 404
    cookie = next(
        c for c in page.context.cookies() if c["name"] == f"edgewire_session_{agent.http}"
    )
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie") == ""  # not readable by scripts


def test_the_ai_nano_flow_in_the_browser(
    agent: RunningAgent, launch_browser: Launch, screenshots_dir: Path, tmp_path: Path
) -> None:
    # --- a project of three classes ------------------------------------------------------
    browser = launch_browser(class_video(tmp_path / "zero.y4m", 0, seconds=6))
    page = browser.new_page(viewport=DESKTOP)
    errors = _errors(page)
    _log_in(page, agent, "/workspaces")
    page.get_by_label("Project name").fill("digits")
    page.get_by_label("Classes (comma-separated)").fill(", ".join(CLASSES))
    page.get_by_role("button", name="Create").click()
    page.wait_for_url(re.compile("/workspaces/digits$"))
    cookies = page.context.cookies()

    # --- capture each class from the browser's camera, one footage file per class --------
    for digit, name in enumerate(CLASSES):
        if digit:
            browser = launch_browser(class_video(tmp_path / f"{name}.y4m", digit, seconds=6))
            page = _signed_in(browser, cookies, DESKTOP)
            errors += _errors(page)
            page.goto(_url(agent, "/workspaces/digits"))
        page.get_by_label("Images per capture").fill("40")
        page.get_by_label("Every (ms)").fill("120")
        page.get_by_role("button", name="Start this browser's camera").click()
        button = page.get_by_role(
            "button", name=f"Capture images of {name} from this browser's camera"
        )
        button.wait_for()
        page.wait_for_function("() => !document.querySelector('button.capture').disabled")
        button.click()
        page.wait_for_function(
            "n => Number(document.querySelector('#capture-progress').dataset.done || 0) >= 1",
            arg=1, timeout=60_000,
        )  # fmt: skip
        count = page.locator(f'article[data-class="{name}"] .count')
        page.wait_for_function(
            "name => Number(document.querySelector(`article[data-class=\"${name}\"] .count`)"
            ".dataset.count) >= 30", arg=name, timeout=20_000,
        )  # fmt: skip
        assert int(count.get_attribute("data-count") or 0) >= 30
        assert page.locator(f'article[data-class="{name}"] .thumbs img').count() >= 30
    page.screenshot(path=str(screenshots_dir / "workspace-captured-desktop.png"), full_page=True)

    # A bad image is deleted from its thumbnail.
    before = int(page.locator('article[data-class="two"] .count').get_attribute("data-count") or 0)
    page.locator('article[data-class="two"] .thumb button').first.click()
    page.wait_for_function(
        "n => Number(document.querySelector('article[data-class=\"two\"] .count')"
        ".dataset.count) === n", arg=before - 1,
    )  # fmt: skip

    # --- split, train, report -------------------------------------------------------------
    page.get_by_role("button", name="Split").click()
    page.wait_for_function(
        "() => /Split: \\d+ train/.test(document.querySelector('#split-result').textContent)"
    )
    page.get_by_label("Epochs").fill("15")
    page.get_by_label("Image size (px)").fill("32")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_function(
        "() => Number(document.querySelector('#train-state').dataset.epochs || 0) >= 2",
        timeout=120_000,
    )
    assert page.locator("#chart path").count() >= 3  # live curves drawn while it trains
    page.wait_for_function(
        "() => document.querySelector('#train-state').dataset.done === '1'", timeout=240_000
    )
    accuracy = float(page.locator("#test-accuracy").get_attribute("data-accuracy") or 0)
    assert accuracy >= 0.6, page.locator("#report").inner_text()
    assert page.locator("#confusion tbody tr").count() == 3
    page.screenshot(path=str(screenshots_dir / "workspace-trained-desktop.png"), full_page=True)

    # --- deploy through the gate ----------------------------------------------------------
    page.get_by_label("Model name").fill("digits")
    page.get_by_label("Least test accuracy (0-1)").fill("0.6")
    page.get_by_role("button", name="Deploy the trained model").click()
    row = page.locator("#deploy-table tbody tr").first
    row.wait_for(timeout=60_000)
    assert row.get_attribute("data-ok") == "1", row.inner_text()
    assert "accuracy" in row.inner_text()  # the gate's numbers are shown
    page.screenshot(path=str(screenshots_dir / "workspace-deployed-desktop.png"), full_page=True)
    # A reload finds the finished run again: its report, and Deploy ready.
    page.reload()
    page.locator("#test-accuracy").wait_for(timeout=20_000)
    assert page.get_by_role("button", name="Deploy the trained model").is_enabled()

    # --- a run on the browser's camera: the class changes every 3 s ------------------------
    video, shown = changing_video(tmp_path / "run.y4m", [0, 1, 2], segment_s=3.0)
    browser = launch_browser(video)
    page = _signed_in(browser, cookies, DESKTOP)
    errors += _errors(page)
    page.goto(_url(agent, "/run?model=digits"))
    page.get_by_label("Frames per second").fill("8")
    page.get_by_role("button", name="Start run").click()
    labels: set[str] = set()
    lit: set[str] = set()
    for _ in range(160):  # up to 16 s: more than one pass of the 9 s footage
        page.wait_for_timeout(100)
        label = page.locator("#run-label").get_attribute("data-label")
        if label:
            labels.add(label)
        for led in page.locator('.led[data-on="1"]').all():
            lit.add(led.get_attribute("data-pin") or "")
        if labels >= set(CLASSES) and len(lit) >= 2:
            break
    page.screenshot(path=str(screenshots_dir / "run-live-desktop.png"), full_page=True)
    assert labels >= set(CLASSES), labels
    assert len(lit) >= 2, lit  # the lit pin changed with the footage
    bars = page.locator("#run-bars meter")
    assert bars.count() == 3
    page.get_by_role("button", name="Stop run").click()
    page.wait_for_function("() => document.querySelector('#run-stop').disabled", timeout=20_000)
    assert not errors, errors
    assert len(shown) == 3 * round(3.0 * 15)

    # --- every page at a desktop's and a phone's width ------------------------------------
    for width, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        page = _signed_in(browser, cookies, viewport)
        errors = _errors(page)
        for path in PAGES:
            page.goto(_url(agent, path))
            page.wait_for_load_state("networkidle")
            name = path.strip("/").replace("/", "-") or "overview"
            page.screenshot(path=str(screenshots_dir / f"{name}-{width}.png"), full_page=True)
            # Every control is labelled (a teaching tool).
            unlabelled = page.evaluate(
                """() => [...document.querySelectorAll('input, select, button')]
                    .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length)
                             && !e.getAttribute('aria-label') && !e.textContent.trim())
                    .map(e => e.outerHTML.slice(0, 80))"""
            )
            assert not unlabelled, (path, unlabelled)
            if width == "phone":  # nothing wider than the phone but what scrolls itself
                wide = page.evaluate("() => document.documentElement.scrollWidth")
                assert wide <= PHONE["width"] + 1, (path, wide)
        assert not errors, errors


def test_another_agent_is_added_and_acted_on_through_this_one(
    agent: RunningAgent, launch_browser: Launch, screenshots_dir: Path, tmp_path: Path
) -> None:
    other_token = "other-agent-token-9"
    with agent_in_thread(tmp_path / "other", token=other_token) as other:
        browser = launch_browser(class_video(tmp_path / "cam.y4m", 0, seconds=1))
        page = browser.new_page(viewport=DESKTOP)
        errors = _errors(page)
        _log_in(page, agent, "/agents")
        page.get_by_label("Name").fill("nano1")
        page.get_by_label("Address").fill(f"http://127.0.0.1:{other.http}")
        page.get_by_label("Its token").fill(other_token)
        page.get_by_role("button", name="Add").click()
        row = page.locator('tr[data-agent="nano1"]')
        row.wait_for()
        page.wait_for_function(
            "() => /ready, version/.test(document.querySelector('tr[data-agent=\"nano1\"]')"
            ".textContent)"
        )
        assert other_token not in page.content()  # the token stays on the agent
        page.screenshot(path=str(screenshots_dir / "agents-added-desktop.png"), full_page=True)
        # Act on it: the pages now reach its own API through this agent.
        page.get_by_role("button", name="Act on nano1").click()
        page.wait_for_url(re.compile(r"/$"))
        # The menu fills in once the page has asked this agent for its list.
        page.wait_for_function("() => document.querySelector('#agent-select').value === 'nano1'")
        page.get_by_role("link", name="Workspaces").click()
        page.get_by_label("Project name").fill("on-nano")
        page.get_by_label("Classes (comma-separated)").fill("a, b")
        page.get_by_role("button", name="Create").click()
        page.wait_for_url(re.compile("/workspaces/on-nano$"))
        assert (other.config.data_dir / "workspaces" / "on-nano").is_dir()
        assert not (agent.config.data_dir / "workspaces" / "on-nano").exists()
        assert not errors, errors
