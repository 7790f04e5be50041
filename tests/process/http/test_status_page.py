"""The status page in a real headless browser (Debian's chromium, driven by selenium through chromedriver)
against a real appliance: it loads without console errors, lists the live shards, redraws them every 2 s,
classifies a chosen and a dropped photo, and asks for the bearer token when one is set.

With INFERD_STATUS_SCREENSHOT=PATH the first test saves the page as PNG there (the README's picture).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any

import pytest

from tests.needs import need_module, need_program
from tests.process.conftest import SKIMAGE_DATA, default_model_section

pytestmark = pytest.mark.slow

need_module("selenium", "pip install selenium: the test extra")

from selenium import webdriver  # noqa: E402 (only once the skip above has had its say)
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "status-page-token-5678"
WAIT_S = 60.0
"""How long the page may take to show what it must: a photo through the real model on two shared cores."""
SCREENSHOT_ENV = "INFERD_STATUS_SCREENSHOT"
CAT_LABELS = {"tabby", "tiger cat", "Egyptian cat"}

DROP_FILE = """
const [name, type, base64] = arguments;
const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type}));
const zone = document.getElementById("drop");
zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
"""
"""What a user's drag and drop of a file onto the drop zone makes the browser do (WebDriver cannot drag files)."""
WATCH_REDRAWS = """
window.inferdRedraws = [];
new MutationObserver(() => window.inferdRedraws.push(performance.now() / 1000))
  .observe(document.querySelector("#shards tbody"), {childList: true});
"""
"""Records the time (s) of each redraw of the table: one observer call per redraw, which replaces its rows at once."""
REFRESH_S = 2.0
"""How often the page promises to redraw the shards (docs/status-page.md)."""
REFRESH_JITTER_S = 1.0
"""Each gap may miss REFRESH_S by this much: the /shards round trip and a loaded box's scheduling."""


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    """Headless chromium through the system's chromedriver, given explicitly so Selenium Manager never
    tries to download a browser or a driver (the appliance's machines are offline)."""
    chromium = need_program("chromium", "apt-get install chromium")
    driver_path = need_program("chromedriver", "apt-get install chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,740"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    yield driver
    driver.quit()


@pytest.fixture()
def page(browser: webdriver.Chrome, start_appliance: Any) -> Iterator[webdriver.Chrome]:
    """The browser for one test's appliance: what an earlier page logged is dropped first, and the page is
    left before the appliance stops (it would go on asking a closed port for the shards, and log it)."""
    console(browser)
    yield browser
    browser.get("about:blank")


def console(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The errors and warnings the page logged since the last call, failed loads included (Chromium's
    DEBUG-level advice, such as on password forms, is left out)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry for entry in entries if entry["level"] in ("SEVERE", "WARNING")]


def wait_for(driver: webdriver.Chrome, what: str, predicate: Callable[[webdriver.Chrome], Any]) -> Any:
    """predicate's first truthy value; failing loudly with the page's text and console when none comes."""
    try:
        return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(predicate)
    except TimeoutException:
        text = driver.find_element(By.TAG_NAME, "body").text
        pytest.fail(f"the page did not show {what} within {WAIT_S:g}s; it shows:\n{text}\n{console(driver)}")


def shard_rows(driver: webdriver.Chrome) -> dict[str, list[str]]:
    """The table's rows by shard, read in one script call: the page redraws it every few seconds, so
    elements found one call earlier may be gone."""
    rows: list[list[str]] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#shards tbody tr'),"
        " (row) => [row.dataset.shard, ...Array.from(row.cells, (cell) => cell.textContent)]);"
    )
    return {row[0]: row[1:] for row in rows}


def redraw_gaps(driver: webdriver.Chrome, gaps: int) -> list[float]:
    """The seconds between the table's next `gaps` + 1 redraws, as the browser timed them."""
    driver.execute_script(WATCH_REDRAWS)
    times: list[float] = wait_for(
        driver,
        f"{gaps + 1} redraws of the table",
        lambda d: (times := d.execute_script("return window.inferdRedraws")) and len(times) > gaps and times,
    )
    return [round(later - earlier, 3) for earlier, later in pairwise(times[: gaps + 1])]


def top_five(driver: webdriver.Chrome) -> list[str] | None:
    """The five labels shown, once they are (a new photo clears the last one's at once)."""
    labels = predictions(driver)
    return labels if len(labels) == 5 else None


def predictions(driver: webdriver.Chrome) -> list[str]:
    labels: list[str] = driver.execute_script(
        "return Array.from(document.querySelectorAll('#predictions .label'), (label) => label.textContent);"
    )
    return labels


def test_the_page_lists_the_live_shards_and_classifies_a_chosen_and_a_dropped_photo(
    start_appliance, default_model, page
):
    appliance = start_appliance(shards=2, model=default_model_section(default_model))
    page.get(f"{appliance.url}/")

    rows = wait_for(
        page,
        "both shards live",
        lambda d: (rows := shard_rows(d)) and all(row[2] == "live" for row in rows.values()) and rows,
    )
    assert sorted(rows) == ["cpu0", "cpu1"]
    for row in rows.values():
        assert row[1] == "CPU" and row[7:] == ["-", "-"]  # no GPU: its columns say so
    assert page.find_element(By.ID, "summary").text == "2 shard(s): 2 live, 0 down"
    assert page.find_element(By.ID, "model").text == "model efficientnet-lite0.keras, inferd 0.1.0"
    # Redrawn every 2 s, as promised: three gaps in a row, none far longer (stale) or far shorter (a busy loop).
    gaps = redraw_gaps(page, 3)
    assert all(abs(gap - REFRESH_S) <= REFRESH_JITTER_S for gap in gaps), f"the table redrew after {gaps} s"

    cat = base64.b64encode((SKIMAGE_DATA / "chelsea.png").read_bytes()).decode()
    page.execute_script(DROP_FILE, "chelsea.png", "image/png", cat)
    top = wait_for(page, "the dropped cat photo's top 5", top_five)
    assert top[0] in CAT_LABELS, top

    # Choosing a file, as the file dialog would (send_keys sets the input's file list).
    page.find_element(By.ID, "photo").send_keys(str(SKIMAGE_DATA / "coffee.png"))
    top = wait_for(page, "the chosen coffee photo's top 5", top_five)
    assert top[0] == "espresso", top
    first = page.find_element(By.CSS_SELECTOR, "#predictions li").text
    assert first.startswith("espresso") and first.endswith("%"), first
    assert page.find_element(By.ID, "predict-message").text == ""

    # The table goes on refreshing: the photos' batches show in the shards' mean batch size.
    wait_for(page, "a batch size", lambda d: any(row[6] != "-" for row in shard_rows(d).values()))
    assert console(page) == []
    screenshot = os.environ.get(SCREENSHOT_ENV)
    if screenshot:
        page.save_screenshot(screenshot)

    # A file the appliance cannot read: the API's reason, as text on the page.
    page.execute_script(DROP_FILE, "notes.txt", "text/plain", base64.b64encode(b"not a photo").decode())
    message = page.find_element(By.ID, "predict-message")
    refusal = "notes.txt: 415: the upload is not an image in a supported format"
    wait_for(page, "the refusal", lambda d: message.text.startswith(refusal))
    assert predictions(page) == []
    assert [entry["message"].rsplit(" - ", 1)[-1] for entry in console(page)] == [
        "Failed to load resource: the server responded with a status of 415 (Unsupported Media Type)"
    ]


def test_with_a_token_set_the_page_asks_for_it_refuses_a_wrong_one_and_shows_the_shards(
    start_appliance, tmp_path, page
):
    token_file = tmp_path / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    appliance = start_appliance(shards=1, api={"auth_token_file": str(token_file)})
    page.get(f"{appliance.url}/")

    form = page.find_element(By.ID, "token-form")
    wait_for(page, "the token form", lambda d: form.is_displayed())
    assert not page.find_element(By.ID, "main").is_displayed()
    assert page.find_element(By.ID, "token-message").text == ""

    def give(token: str) -> None:
        page.find_element(By.ID, "token").send_keys(token)
        page.find_element(By.CSS_SELECTOR, "#token-form button").click()

    give("not-the-token")
    message = page.find_element(By.ID, "token-message")
    wait_for(page, "the wrong token refused", lambda d: "refused" in message.text)
    assert form.is_displayed() and not page.find_element(By.ID, "main").is_displayed()

    give(TOKEN)
    rows = wait_for(page, "the shard, once the token is right", lambda d: shard_rows(d))
    assert list(rows) == ["cpu0"] and rows["cpu0"][2] == "live"
    assert not form.is_displayed()
    assert page.execute_script("return sessionStorage.getItem('inferd-token')") == TOKEN

    # The page reports each refused request; nothing else may have gone wrong.
    unexpected = [entry for entry in console(page) if "status of 401" not in entry["message"]]
    assert unexpected == []
