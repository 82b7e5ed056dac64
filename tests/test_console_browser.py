"""The web console in a real browser: headless Chromium (Debian's ``chromium`` and ``chromium-driver``, which
scripts/test installs) driven by Selenium, against a real ``aiobroker serve`` process whose http resolver asks a
real HTTP registry in its own process (tests/http_registry.py), all on 127.0.0.1.

Each test clicks through the page as an operator would and checks the node, or the registry, behind it. A
screenshot of each page is saved under the test's tmp dir, and copied to ``test-artifacts/console/`` at the
repository's root when ``AIOBROKER_TEST_ARTIFACTS`` is set (CI keeps them); ``AIOBROKER_README_SCREENSHOT=PATH``
saves the conversations page with a DELAYED conversation there (how docs/console.png is made).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
from dynamic_helpers import Registry, toml_value
from node_process import NodeProcess, free_port, wait_for
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

import aiobroker

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium is not installed (Debian: apt-get install chromium chromium-driver; scripts/test"
    " installs them when it runs as root)",
)

ROOT = Path(__file__).resolve().parent.parent
FAR = "//far/Orders"
ADMIN_TOKEN = "ops-token-0123456789"
READER_TOKEN = "reader-token-0123456789"
#: how long the page may take to show what the node did: it polls every 2 s
SHOWN_WITHIN = 15.0

T = TypeVar("T")


def run(fn: Callable[[], Awaitable[T]]) -> T:
    """One short async client session, from a synchronous test (Selenium's calls block)."""
    return anyio.run(fn)


# ------------------------------------------------------------------------------------------------------ the node


def node_toml(home: Path, port: int, registry: Registry, *, authorization: bool = False) -> str:
    lines = [
        "[node]",
        f"listen = {toml_value(f'127.0.0.1:{port}')}",
        f"data_dir = {toml_value(str(home / 'data'))}",
        'store = "sqlite"',
        "",
        "[resolver]",
        'kind = "http"',
        f"url = {toml_value(registry.url())}",
        # a 404 holds this long: the node would not ask again by itself within the test, so a second request to the
        # registry is the console's "ask again"
        "default_lifetime = 3600",
        "",
        "[[queue]]", 'name = "qi"', "",
        "[[queue]]", 'name = "qt"', "",
        "[[service]]", 'name = "init"', 'queue = "qi"', "contracts = []", "",
        "[[service]]", 'name = "target"', 'queue = "qt"', 'contracts = ["DEFAULT"]', "",
    ]  # fmt: skip
    if authorization:
        lines += [
            "[security]", "authorization = true", "",
            "[[identity]]", 'name = "ops"', f"tokens = [{toml_value(ADMIN_TOKEN)}]", "admin = true", "",
            "[[identity]]", 'name = "reader"', f"tokens = [{toml_value(READER_TOKEN)}]", "",
        ]  # fmt: skip
    return "\n".join(lines) + "\n"


class ConsoleNode:
    def __init__(self, proc: NodeProcess) -> None:
        self.proc = proc
        self.address = f"tcp://127.0.0.1:{proc.port}"
        self.http = proc.http_url()

    def client(self) -> Any:
        return aiobroker.connect(self.address, token=ADMIN_TOKEN)

    def api(self, path: str) -> Any:
        r = httpx.get(self.http + path, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        assert r.status_code == 200, r.text
        return r.json()


@contextmanager
def console_node(tmp_path: Path, *, authorization: bool = False) -> Iterator[tuple[ConsoleNode, Registry]]:
    """A registry that knows no service (404), and a node asking it, with its HTTP listener on a free port; both
    stopped by pid at the end, and the node must exit cleanly."""
    home = tmp_path / "node"
    home.mkdir()
    port = free_port()
    with Registry(tmp_path) as registry:
        config = home / "node.toml"
        config.write_text(node_toml(home, port, registry, authorization=authorization))
        proc = NodeProcess(home / "data", port=port, http="127.0.0.1:0", extra=["--config", str(config)]).start()
        try:
            yield ConsoleNode(proc), registry
        except BaseException:
            print(f"===== log of the node =====\n{proc.output()}")
            raise
        finally:
            code = proc.stop()
        assert code == 0, f"the node exited with {code}:\n{proc.output()}"


# --------------------------------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--disable-extensions"):  # fmt: skip
        options.add_argument(arg)  # --no-sandbox: the tests run as root (CI), where Chromium's sandbox cannot start
    # the driver Debian ships with the browser, named, so that Selenium Manager looks nothing up and downloads nothing
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[WebDriver, str], Path]:
    """Save a screenshot of the page as ``<test>-<name>.png`` in the test's tmp dir (and in test-artifacts/console/
    when AIOBROKER_TEST_ARTIFACTS is set)."""

    def shoot(driver: WebDriver, name: str) -> Path:
        path = tmp_path / f"{request.node.name}-{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot of {name}"
        if os.environ.get("AIOBROKER_TEST_ARTIFACTS"):
            keep = ROOT / "test-artifacts" / "console"
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, keep / path.name)
        return path

    return shoot


def open_page(driver: WebDriver, node: ConsoleNode, page: str) -> None:
    driver.get(f"{node.http}/#{page}")
    # each page of the console is a fresh tab's: no token left from an earlier test
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{node.http}/#{page}")


def shown(driver: WebDriver, css: str, text: str, timeout: float = SHOWN_WITHIN) -> WebElement:
    """The first element matching ``css`` whose text contains ``text``, once the page shows it (it polls)."""

    def find() -> WebElement | None:
        try:
            for element in driver.find_elements(By.CSS_SELECTOR, css):
                if text in element.text:
                    return element
        except StaleElementReferenceException:  # the page redrew the table meanwhile: look again
            return None
        return None

    found: WebElement = wait_for(find, timeout, f"the page to show {text!r} in {css}")
    return found


def click(driver: WebDriver, row_css: str, row_text: str, label: str) -> None:
    """Click the button ``label`` in the row showing ``row_text``; the page redraws its tables every poll, so a
    row found may be gone by the click: find it again then."""

    def attempt() -> bool:
        try:
            row = shown(driver, row_css, row_text)
            button = next(b for b in row.find_elements(By.TAG_NAME, "button") if b.text == label)
            button.click()
            return True
        except (StaleElementReferenceException, StopIteration):
            return False

    wait_for(attempt, SHOWN_WITHIN, f"a {label!r} button in the row showing {row_text!r}")


def route_requests(registry: Registry, service: str) -> list[dict[str, Any]]:
    """What the registry was asked about ``service``'s route (not its remote service binding, which a node with a
    resolver asks for too once it has a route)."""
    return [r for r in registry.requests(service) if not r["path"].split("?")[0].endswith("/binding")]


def notice(driver: WebDriver, text: str) -> str:
    return shown(driver, "#notice", text).text


# -------------------------------------------------------------------------------------------------------- tests


def test_a_delayed_conversation_shows_its_reason_and_ask_again_makes_the_registry_get_a_request(
    tmp_path: Path, browser: WebDriver, shots: Callable[[WebDriver, str], Path]
) -> None:
    with console_node(tmp_path) as (node, registry):

        async def begin() -> tuple[str, list[str]]:
            async with node.client() as client:
                local = []
                for i in range(2):  # conversations that flow, beside the one that waits
                    other = await client.begin_dialog("init", "target")
                    await other.send("DEFAULT", b"local %d" % i)
                    local.append(str(other.handle))
                dialog = await client.begin_dialog("init", FAR)
                await dialog.send("DEFAULT", b"order 1")
                return str(dialog.handle), local

        handle, local = run(begin)
        wait_for(lambda: route_requests(registry, FAR), SHOWN_WITHIN, "the node to ask the registry about the service")
        wait_for(lambda: "404" in str(node.api(f"/api/conversations/{handle}")["delayed"]), SHOWN_WITHIN,
                 "the registry's 404 to come back")  # fmt: skip

        open_page(browser, node, "conversations")
        shown(browser, f"tr[data-handle='{handle}'] .wait", "next attempt in")
        assert [shown(browser, f"tr[data-handle='{h}']", "conversing") for h in local]
        if os.environ.get("AIOBROKER_README_SCREENSHOT"):
            browser.execute_script("window.scrollTo(0, 0)")
            browser.save_screenshot(os.environ["AIOBROKER_README_SCREENSHOT"])
        browser.find_element(By.CSS_SELECTOR, "#f-delayed option[value=true]").click()
        browser.find_element(By.CSS_SELECTOR, "#filters button").click()
        shown(browser, "#conv-summary", "showing 1–1 of the matching ones (the node has 5 conversations)")
        assert not browser.find_elements(By.CSS_SELECTOR, f"tr[data-handle='{local[0]}']"), "filtered out"
        row = shown(browser, f"tr[data-handle='{handle}']", "the last request failed")
        # the reason in words, the resolver's last answer, and when the node asks again
        assert "waiting for dynamic routing: the last request failed (not found:" in row.text
        assert "answered 404" in row.text
        shown(browser, f"tr[data-handle='{handle}'] .wait", "next attempt in")
        assert "last answer" in row.find_element(By.CSS_SELECTOR, ".wait").text
        shots(browser, "conversations")

        assert len(route_requests(registry, FAR)) == 1
        click(browser, f"tr[data-handle='{handle}']", "the last request failed", "ask again")
        assert f"asked the http resolver again about service {FAR!r}" in notice(browser, "asked")
        wait_for(lambda: len(route_requests(registry, FAR)) == 2, SHOWN_WITHIN, "the registry to get the second request")

        open_page(browser, node, "resolving")
        shown(browser, f"#delayed tr[data-service='{FAR}']", "retry wait")
        shown(browser, "#resolvers tr", "http")
        shots(browser, "resolving")

        open_page(browser, node, f"service/{FAR.replace('/', '%2F')}")
        shown(browser, "#decision", "DELAYED")
        shown(browser, "#request", "answered 404")
        assert "the http resolver" in browser.find_element(By.ID, "request").text
        shots(browser, "service")

        open_page(browser, node, "links")
        shown(browser, "#links", "no links")
        shots(browser, "links")
    assert len(route_requests(registry, FAR)) == 2, "one request at the start, one for the click: no more"


def test_enabling_a_disabled_queue_from_the_console_delivers_its_messages(
    tmp_path: Path, browser: WebDriver, shots: Callable[[WebDriver, str], Path]
) -> None:
    with console_node(tmp_path) as (node, _registry):

        async def send_then_disable() -> None:
            async with node.client() as client:
                dialog = await client.begin_dialog("init", "target")
                for i in range(3):
                    await dialog.send("DEFAULT", b"m%d" % i)
                await client.alter_queue("qt", status="off")
                with pytest.raises(aiobroker.errors.QueueDisabled):
                    await client.receive("qt", max_messages=10)

        run(send_then_disable)
        open_page(browser, node, "queues")
        row = shown(browser, "tr[data-queue='qt']", "off")
        assert "set off by an administrator" in row.text
        shown(browser, "tr[data-queue='qt'] td.num", "3")
        shots(browser, "queues")
        click(browser, "tr[data-queue='qt']", "off", "enable")
        assert "queue 'qt' is enabled" in notice(browser, "enabled")
        wait_for(lambda: shown(browser, "tr[data-queue='qt'] td.status", "").text == "on", SHOWN_WITHIN,
                 "the page to show queue qt on")  # fmt: skip

        async def receive() -> list[bytes]:
            async with node.client() as client:
                batch = await client.receive("qt", max_messages=10, timeout=10)
                await batch.commit()
                return [m.body for m in batch]

        assert run(receive) == [b"m0", b"m1", b"m2"]


def test_with_authorization_the_page_asks_for_a_token_and_shows_a_refusal_in_words(
    tmp_path: Path, browser: WebDriver, shots: Callable[[WebDriver, str], Path]
) -> None:
    with console_node(tmp_path, authorization=True) as (node, _registry):

        async def disable() -> None:
            async with node.client() as client:
                await client.alter_queue("qt", status="off")

        run(disable)
        open_page(browser, node, "queues")
        token = wait_for(lambda: browser.find_element(By.ID, "token") if browser.find_element(By.ID, "login")
                         .is_displayed() else None, SHOWN_WITHIN, "the page to ask for a token")  # fmt: skip
        shots(browser, "login")
        token.send_keys(READER_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        shown(browser, "#who", "identity reader (read only")
        click(browser, "tr[data-queue='qt']", "off", "enable")
        words = notice(browser, "refused")
        assert "refused (403): identity 'reader' may not alter queue 'qt': it needs the admin right" in words
        shots(browser, "refused")
        assert next(q for q in node.api("/api/queues") if q["name"] == "qt")["status"] == "off", "refused: unchanged"

        browser.find_element(By.ID, "logout").click()  # forget the token; the page asks again
        token = wait_for(lambda: browser.find_element(By.ID, "token") if browser.find_element(By.ID, "login")
                         .is_displayed() else None, SHOWN_WITHIN, "the page to ask for a token again")  # fmt: skip
        token.send_keys(ADMIN_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        shown(browser, "#who", "identity ops (admin)")
        click(browser, "tr[data-queue='qt']", "off", "enable")
        notice(browser, "queue 'qt' is enabled")
        assert next(q for q in node.api("/api/queues") if q["name"] == "qt")["status"] == "on"


def test_conversations_are_paged_through_the_nodes_cursor_fifty_at_a_time(
    tmp_path: Path, browser: WebDriver, shots: Callable[[WebDriver, str], Path]
) -> None:
    # the page never asks for more than a page, however many conversations the node has: here 120 (60 dialogs on
    # one node, two sides each), walked forward and back with the cursor the node gives
    with console_node(tmp_path) as (node, _registry):

        async def begin() -> None:
            async with node.client() as client:
                for i in range(60):
                    await (await client.begin_dialog("init", "target")).send("DEFAULT", b"%d" % i)

        run(begin)
        open_page(browser, node, "conversations")
        summary = "the matching ones (the node has 120 conversations)"
        shown(browser, "#conv-summary", f"showing 1–50 of {summary}")
        assert len(browser.find_elements(By.CSS_SELECTOR, "#conversations tbody tr")) == 50
        first_page = browser.find_element(By.CSS_SELECTOR, "#conversations tbody tr").get_attribute("data-handle")
        browser.find_element(By.ID, "next").click()
        shown(browser, "#conv-summary", f"showing 51–100 of {summary}")
        browser.find_element(By.ID, "next").click()
        shown(browser, "#conv-summary", f"showing 101–120 of {summary}")
        assert not browser.find_element(By.ID, "next").is_enabled(), "the last page"
        shots(browser, "conversations-last-page")
        browser.find_element(By.ID, "prev").click()
        shown(browser, "#conv-summary", f"showing 51–100 of {summary}")
        browser.find_element(By.ID, "prev").click()
        shown(browser, "#conv-summary", f"showing 1–50 of {summary}")
        shown(browser, f"tr[data-handle='{first_page}']", "conversing")
        asked = browser.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/api/conversations'))"
        )
        assert asked and all("limit=50" in url for url in asked), asked
        assert any("after=" in url for url in asked), "pages after the first were asked from the node's cursor"


def accept_confirmation(driver: WebDriver) -> None:
    """Say OK to the page's "are you sure?" (window.confirm)."""

    def alert() -> Any:
        try:
            return driver.switch_to.alert
        except NoAlertPresentException:
            return None

    wait_for(alert, SHOWN_WITHIN, "the page to ask for confirmation").accept()


def test_a_conversation_on_a_retrying_link_shows_why_and_dropping_its_route_hands_it_to_dynamic_routing(
    tmp_path: Path, browser: WebDriver, shots: Callable[[WebDriver, str], Path]
) -> None:
    dead = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there: the link retries
    service = "//b/Orders"
    with console_node(tmp_path) as (node, registry):

        async def begin() -> str:
            async with node.client() as client:
                await client.create_route("to-b", dead, service_name=service)
                dialog = await client.begin_dialog("init", service)
                await dialog.send("DEFAULT", b"x")
                return str(dialog.handle)

        handle = run(begin)
        open_page(browser, node, "conversations")
        row = shown(browser, f"tr[data-handle='{handle}']", f"retrying {dead}: ")
        assert "(attempt " in row.text
        shown(browser, f"tr[data-handle='{handle}'] .wait", "next attempt in")
        shots(browser, "conversations-retrying")

        open_page(browser, node, "links")
        link = shown(browser, "#links tbody tr", dead)
        assert "retrying" in link.text and " at " in link.text, link.text
        shots(browser, "links-retrying")

        open_page(browser, node, f"service/{service.replace('/', '%2F')}")
        shown(browser, "#routes tr[data-route='to-b']", dead)
        assert not route_requests(registry, service), "a route is known: nothing asked"
        click(browser, "#routes tr[data-route='to-b']", dead, "drop")
        accept_confirmation(browser)
        notice(browser, "route 'to-b' is dropped; the conversations that used it are routed again")
        wait_for(lambda: route_requests(registry, service), SHOWN_WITHIN, "the node to ask the registry, the route gone")
        shown(browser, "#decision", "DELAYED")
        shots(browser, "service-route-dropped")
        assert not [r for r in node.api("/api/list/route") if r["name"] == "to-b"]
