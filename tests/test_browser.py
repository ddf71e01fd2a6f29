"""The HTML report in headless Chromium (Debian's, driven by Selenium and chromium-driver; never a downloaded
browser): verdict and every finding shown, no console error, no network request, the filters work.

A screenshot is kept as a test artifact; its path is printed (``pytest -s``) and written to
``$MECHAUDIT_ARTIFACTS`` when that is set.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from report_cases import audit_project, example_result, hostile_project, require_binary

from mechaudit.report import render_html

CHROMIUM_ARGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-dev-shm-usage", "--window-size=1280,1600")


@pytest.fixture(scope="module")
def browser():
    """Headless Debian Chromium, logging the console and the network."""
    chromium, chromedriver = require_binary("chromium"), require_binary("chromedriver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser, tmp_path_factory):
    """The digits report opened in Chromium: (driver, file URL, the findings, artifact directory)."""
    result = example_result("digits")
    artifacts = tmp_path_factory.mktemp("browser")
    report = artifacts / "report.html"
    report.write_text(render_html(result), encoding="utf-8")
    browser.get(report.as_uri())
    yield browser, report.as_uri(), result.findings, artifacts


def _visible_findings(driver) -> list[str]:
    return [el.get_attribute("id") for el in driver.find_elements("css selector", ".finding") if el.is_displayed()]


def test_shows_verdict_and_every_finding_without_errors_or_requests(page) -> None:
    driver, url, findings, artifacts = page
    verdict = driver.find_element("css selector", ".masthead .verdict")
    assert verdict.is_displayed() and verdict.text.startswith("Verdict: FAIL")
    assert _visible_findings(driver) == [f"finding-{i + 1}" for i in range(len(findings))]
    for i, finding in enumerate(findings):
        card = driver.find_element("id", f"finding-{i + 1}").text
        assert finding.rule_id in card and (finding.location.component if finding.location else "model") in card
    assert driver.find_elements("css selector", ".evidence-figure svg"), "no inline figure rendered"
    errors = [entry for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "ERROR")]
    assert errors == []
    requests = [json.loads(entry["message"])["message"] for entry in driver.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests if m["method"] == "Network.requestWillBeSent"]
    # data: URLs are the rasters inside the inline SVG figures (read from the page itself, never from a network)
    assert urls and {u for u in urls if not u.startswith("data:")} == {url}, urls
    _keep_screenshot(driver, artifacts)


def test_filters_hide_and_show_findings(page) -> None:
    driver, _, findings, _ = page
    assert driver.find_element("id", "filters").is_displayed()  # revealed by the script; hidden in the static page
    count = driver.find_element("id", "filter-count")
    assert count.text == f"Showing {len(findings)} of {len(findings)} findings."
    for severity in ("warning", "info"):
        driver.find_element("css selector", f"input[name=severity][value={severity}]").click()
    errors = [(f"finding-{i + 1}", f) for i, f in enumerate(findings) if f.severity == "error"]
    assert errors and _visible_findings(driver) == [anchor for anchor, _ in errors]
    assert count.text == f"Showing {len(errors)} of {len(findings)} findings."
    shown_rules = {el.get_attribute("id") for el in driver.find_elements("css selector", ".rule") if el.is_displayed()}
    assert shown_rules == {f"rule-{f.rule_id}" for _, f in errors}
    driver.find_element("css selector", "input[name=family][value=localization]").click()
    assert _visible_findings(driver) == [anchor for anchor, f in errors if not f.rule_id.startswith("L")]
    for box in driver.find_elements("css selector", "#filters input:not(:checked)"):
        box.click()
    assert len(_visible_findings(driver)) == len(findings)


def test_hostile_strings_keep_the_layout(browser, tmp_path: Path) -> None:
    report = tmp_path / "hostile.html"
    report.write_text(render_html(audit_project(hostile_project(tmp_path / "p"))), encoding="utf-8")
    browser.get_log("browser")  # drop what earlier pages logged
    browser.get(report.as_uri())  # an alert() would make every later call fail
    assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
    assert browser.find_element("css selector", ".masthead h1").text == 'q\'uo"te&amp;<b>'
    browser.save_screenshot(str(tmp_path / "hostile.png"))


def _keep_screenshot(driver, artifacts: Path) -> None:
    shot = artifacts / "report-top.png"
    assert driver.save_screenshot(str(shot))
    card = driver.find_element("css selector", ".finding-fail")
    driver.execute_script("arguments[0].scrollIntoView()", card)
    card.screenshot(str(artifacts / "failing-finding.png"))
    if os.environ.get("MECHAUDIT_ARTIFACTS"):
        target = Path(os.environ["MECHAUDIT_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        for png in artifacts.glob("*.png"):
            shutil.copy(png, target / png.name)
    print(f"\nbrowser screenshots: {artifacts}")


@pytest.mark.parametrize("width", [1300, 390])
def test_no_horizontal_overflow_and_non_empty_figures(page, width: int) -> None:
    """At a desktop and a phone width (390 px), the page never scrolls sideways and every figure has a size."""
    driver, url, _, artifacts = page
    driver.set_window_size(width, 1600)
    driver.get(url)
    try:
        inner = driver.execute_script("return window.innerWidth")
        assert inner <= width
        assert driver.execute_script("return document.documentElement.scrollWidth") <= inner
        wide = driver.execute_script(
            "return [...document.querySelectorAll('main *')].filter(e => e.getBoundingClientRect().right > "
            "window.innerWidth + 1 && !e.closest('table.data, table.counts')).map(e => e.tagName + '.' + e.className)"
            ".slice(0, 5)")
        assert wide == []
        sizes = driver.execute_script(
            "return [...document.querySelectorAll('.evidence-figure svg')].map(s => [s.getBoundingClientRect().width,"
            " s.getBoundingClientRect().height, s.querySelectorAll('path, text, image').length])")
        assert sizes and all(w > 50 and h > 30 and n > 0 for w, h, n in sizes), sizes
        assert [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")] == []
        driver.save_screenshot(str(artifacts / f"report-{width}px.png"))
    finally:
        driver.set_window_size(1280, 1600)
        driver.get(url)
