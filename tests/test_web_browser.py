"""The web UI in a real browser: Debian's headless Chromium driven by selenium
(chromedriver). Sign-in by token and by password, browsing, search, upload and its refusal,
making a token (then using and revoking it with curl), the privacy toggle, with the keyboard.

The README's screenshots come from this run: set ``UPDATE_SCREENSHOTS=1`` to write them
to docs/screenshots/ (otherwise they go to the test's temporary directory only).
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import requests

from conftest import require_tool
from fixtures.wheels import make_wheel
from harness import REPO_ROOT
from webui_world import PASSWORD, World, build_world, signed_in

selenium = pytest.importorskip("selenium", reason="selenium is in the test extras")
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1100,760")
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, upstream_factory, channelgate_factory) -> World:  # type: ignore[no-untyped-def]
    return build_world(tmp_path_factory.mktemp("webui-browser"), upstream_factory, channelgate_factory)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    """One headless Chromium for the module, on a fresh profile directory."""
    chromium = require_tool("chromium")
    driver_path = require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chromium: WebDriver) -> WebDriver:
    """The browser with no cookie from an earlier test."""
    chromium.execute_cdp_cmd("Network.clearBrowserCookies", {})
    return chromium


def wait_for(driver: WebDriver, css: str, timeout: float = 20):  # type: ignore[no-untyped-def]
    return WebDriverWait(driver, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    target = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("UPDATE_SCREENSHOTS"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(target, SCREENSHOTS / target.name)


def sign_in_with_token(driver: WebDriver, world: World, who: str) -> None:
    """Sign in with the keyboard only: Tab to the token field, type, Enter."""
    driver.get(f"{world.url}/ui/login")
    token_field = wait_for(driver, "#token")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=token]").text == "Token"
    token_field.click()
    token_field.send_keys(world.tokens[who] + Keys.ENTER)
    assert wait_for(driver, "#signed-in-user").text == who


def test_sign_in_with_a_token_browse_and_screenshot(browser: WebDriver, world: World, tmp_path: Path) -> None:
    browser.get(f"{world.url}/")
    assert browser.current_url == f"{world.url}/ui/"  # the root sends a browser to the UI
    assert "team-a" not in wait_for(browser, "main").text  # anonymous: public channels only
    sign_in_with_token(browser, world, "alice")
    channels = wait_for(browser, "#channels").text
    assert "team-a" in channels and "mirror" in channels and "team-b" not in channels
    screenshot(browser, tmp_path, "home")
    browser.find_element(By.LINK_TEXT, "team-a").click()
    table = wait_for(browser, "#packages").text
    assert "alphaconda" in table and "alpha-wheel" in table
    snippets = browser.find_element(By.ID, "setup").find_element(By.XPATH, "following-sibling::div").text
    assert f"{world.url}/t/<TOKEN>" in snippets and "cgt-" not in snippets
    screenshot(browser, tmp_path, "channel")
    browser.find_element(By.LINK_TEXT, "alphaconda").click()
    files = wait_for(browser, "#files").text
    assert world.files["alphaconda"].name in files and "alice" in files and "hosted" in files
    screenshot(browser, tmp_path, "package")


def test_keyboard_skip_link_filter_and_search(browser: WebDriver, world: World) -> None:
    browser.get(f"{world.url}/ui/c/mirror")
    body = wait_for(browser, "body")
    body.send_keys(Keys.TAB)
    active = browser.switch_to.active_element
    assert active.get_attribute("class") == "skip"  # the first Tab stop skips the navigation
    active.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    field = browser.find_element(By.ID, "q")
    page = browser.find_element(By.TAG_NAME, "html")
    field.send_keys("bulk-1" + Keys.ENTER)
    WebDriverWait(browser, 20).until(EC.staleness_of(page))  # the filtered page replaced this one
    wait_for(browser, "#count")
    names = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#packages td:first-child a")]
    assert names == [f"bulk-1{i}" for i in range(10)]
    search = browser.find_element(By.ID, "top-q")
    search.send_keys("upconda" + Keys.ENTER)
    results = wait_for(browser, "#results").text
    assert "upcondapkg" in results and "mirror" in results
    browser.find_element(By.LINK_TEXT, "upcondapkg").click()
    versions = wait_for(browser, "#versions").text.split()
    assert versions == ["1.1", "1.0"]
    assert "up-conda" in browser.find_element(By.ID, "files").text


def test_writer_uploads_and_reader_is_refused(browser: WebDriver, world: World, tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path, "browser-wheel", "1.2")
    sign_in_with_token(browser, world, "alice")
    browser.get(f"{world.url}/ui/upload")
    wait_for(browser, "#upload-form")
    Select(browser.find_element(By.ID, "channel")).select_by_visible_text("team-a")
    browser.find_element(By.ID, "content").send_keys(str(wheel))
    browser.find_element(By.ID, "upload-submit").click()
    assert f"Uploaded {wheel.name} to team-a" in wait_for(browser, ".flash").text
    assert "browser-wheel" in browser.find_element(By.ID, "packages").text
    # the effect: pip's index of the channel now lists the file
    index = requests.get(f"{world.url}/api/repo/team-a/simple/browser-wheel/", auth=(world.tokens["amy"], "x-auth-token"),
                         timeout=30)
    assert index.status_code == 200 and wheel.name in index.text

    browser.execute_cdp_cmd("Network.clearBrowserCookies", {})
    sign_in_with_token(browser, world, "amy")
    browser.get(f"{world.url}/ui/upload")
    assert "may not upload" in wait_for(browser, "#no-write").text
    assert not browser.find_elements(By.ID, "upload-form")


def test_sign_out(browser: WebDriver, world: World) -> None:
    sign_in_with_token(browser, world, "amy")
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, "#login-link")
    assert not browser.find_elements(By.ID, "signed-in-user")
    browser.get(f"{world.url}/ui/c/team-a")
    assert "404" in wait_for(browser, "h1").text


def test_sign_in_with_a_password(browser: WebDriver, world: World) -> None:
    browser.get(f"{world.url}/ui/login")
    wait_for(browser, "#username").send_keys("paula")
    browser.find_element(By.ID, "password").send_keys("wrong" + Keys.ENTER)
    assert "Wrong user name or password" in wait_for(browser, "#error").text
    browser.find_element(By.ID, "password").send_keys(PASSWORD + Keys.ENTER)
    assert wait_for(browser, "#signed-in-user").text == "paula"
    assert "team-a" in browser.find_element(By.ID, "channels").text


def test_make_a_token_use_it_with_curl_and_revoke_it(browser: WebDriver, world: World) -> None:
    curl = require_tool("curl")
    sign_in_with_token(browser, world, "amy")
    browser.get(f"{world.url}/ui/tokens")
    wait_for(browser, "#name").send_keys("laptop")
    browser.find_element(By.CSS_SELECTOR, "input[name=scope][value='pypi:download']").click()
    browser.find_element(By.ID, "make-submit").click()
    secret = wait_for(browser, "#new-token").text
    assert secret.startswith("cgt-")
    assert "laptop" in browser.find_element(By.ID, "tokens").text
    index = f"{world.url}/api/repo/team-a/simple/"

    def curl_status(url: str) -> str:
        return subprocess.run([curl, "-s", "-o", "/dev/null", "-w", "%{http_code}", "-u", f"{secret}:x-auth-token", url],
                              capture_output=True, text=True, timeout=60).stdout

    assert curl_status(index) == "200"
    assert curl_status(f"{world.url}/api/repo/team-a/noarch/repodata.json") == "403"  # only the scope ticked
    browser.get(f"{world.url}/ui/tokens")
    assert secret not in browser.page_source  # shown once
    browser.find_element(By.CSS_SELECTOR, "button[aria-label='Revoke laptop']").click()
    assert "Token laptop revoked" in wait_for(browser, ".flash").text
    assert "laptop" not in browser.find_element(By.ID, "tokens").text
    assert curl_status(index) == "401"


def test_privacy_toggle(browser: WebDriver, world: World) -> None:
    page_path = "/ui/c/mirror/conda/mirror-secret"
    repodata = f"{world.url}/mirror/noarch/repodata.json"

    def anonymous_sees() -> tuple[bool, bool, bool, bool]:
        listing = requests.get(f"{world.url}/ui/c/mirror?q=mirror-secret", timeout=30).text
        found = requests.get(f"{world.url}/ui/search?q=mirror-sec", timeout=30).text
        page = requests.get(f"{world.url}{page_path}", timeout=30)
        index = requests.get(repodata, timeout=30).text
        return (">mirror-secret<" in listing, ">mirror-secret<" in found, page.status_code == 200,
                "mirror-secret" in index)

    assert anonymous_sees() == (True, True, True, True)
    sign_in_with_token(browser, world, "alice")
    browser.get(f"{world.url}{page_path}")
    assert "visible" in wait_for(browser, "#privacy").text
    browser.find_element(By.ID, "privacy-toggle").click()
    assert "now private" in wait_for(browser, ".flash").text
    assert browser.find_element(By.ID, "privacy").text == "private"
    assert anonymous_sees() == (False, False, False, False)  # the page, listings, search and the index
    amy = signed_in(world, "amy")  # signed in, but no role on the mirror: the same as anonymous
    assert ">mirror-secret<" not in amy.get(f"{world.url}/ui/c/mirror?q=mirror-secret", timeout=30).text
    assert amy.get(f"{world.url}{page_path}", timeout=30).status_code == 404
    browser.get(f"{world.url}/ui/c/mirror?q=mirror-secret")  # the admin still sees it
    assert "mirror-secret" in wait_for(browser, "#packages").text
    browser.get(f"{world.url}{page_path}")
    wait_for(browser, "#privacy-toggle").click()
    assert "now public" in wait_for(browser, ".flash").text
    assert anonymous_sees() == (True, True, True, True)
