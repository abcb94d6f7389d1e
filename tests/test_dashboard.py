"""The dashboard in a real browser: a real run, ``runner.py dashboard``, then Debian's Chromium,
headless and offline, loads the page and the test reads what it drew.

Chromium runs as root with the flags the issue names (``CHROMIUM_FLAGS``) and a fresh profile; the
page is opened from a file:// URL with the network emulated offline and every proxied request sent
to a closed port, so a script or style fetched from anywhere would fail and show in the console.
Under ``CI=true`` a missing Chromium or driver fails the test; on a developer's machine it skips.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from analytics.dashboard import CHARTS
from analytics.report import build_report, format_cell
from tests.conftest import run_cli_in_process, service_missing

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
#: The proxy of every request the browser would make: a closed local port (the discard service).
NO_PROXY = "--proxy-server=127.0.0.1:9"
WIDTH = 1400

#: What each chart container holds once Plotly drew it: the size of its SVG, the bars drawn, and
#: whether it says "no data".
CHART_STATE_JS = """
return Array.from(document.querySelectorAll('.chart')).map(chart => {
  const svg = chart.querySelector('svg.main-svg');
  const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
  return {
    id: chart.id,
    width: box.width,
    height: box.height,
    marks: chart.querySelectorAll('.trace .point path').length,
    no_data: Array.from(chart.querySelectorAll('.annotation-text')).some(t => t.textContent === 'no data'),
  };
});
"""
RUNS_TABLE_JS = """
const table = document.getElementById('runs');
return {
  head: Array.from(table.tHead.rows[0].cells).map(c => c.textContent),
  body: Array.from(table.tBodies[0].rows).map(r => Array.from(r.cells).map(c => c.textContent)),
};
"""


@pytest.fixture(scope="module")
def run_out(analytics_out: Path) -> Path:
    """The shared real run (moderation and embeddings on): every chart has data."""
    return analytics_out


def write_dashboard(out: Path, html: Path, *flags: str) -> Path:
    result = run_cli_in_process("dashboard", "--out", out, "--html", html, *flags)
    assert result.returncode == 0, f"dashboard failed ({result.returncode}):\n{result.stderr}"
    return html


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """Headless Chromium, offline, with a fresh profile; console and network logs recorded."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            service_missing(f"{path} is missing: apt-get install chromium chromium-driver ({package})")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, NO_PROXY, f"--window-size={WIDTH},1000"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        yield driver
    finally:
        driver.quit()


def load(driver: webdriver.Chrome, page: Path) -> dict[str, Any]:
    """Open ``page``, wait until every chart holds an SVG, and read back what the browser did."""
    for log in ("browser", "performance"):
        driver.get_log(log)  # drop what an earlier page left
    driver.get(page.as_uri())
    WebDriverWait(driver, 30).until(
        lambda d: (
            d.execute_script("return document.querySelectorAll('.chart svg.main-svg').length") >= len(CHARTS)
        )
    )
    requests = [
        message["params"]["request"]["url"]
        for entry in driver.get_log("performance")
        if (message := json.loads(entry["message"])["message"])["method"] == "Network.requestWillBeSent"
    ]
    return {
        "console": driver.get_log("browser"),
        "requests": requests,
        "charts": driver.execute_script(CHART_STATE_JS),
    }


def screenshot(driver: webdriver.Chrome, to: Path) -> None:
    """The whole page as a PNG (the window stretched to the page's height)."""
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(WIDTH, height)
    assert driver.save_screenshot(str(to)), f"no screenshot written to {to}"


@pytest.fixture(scope="module")
def dashboard(run_out: Path, browser: webdriver.Chrome, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The run's dashboard, loaded: its HTML text and what the browser saw and drew."""
    base = tmp_path_factory.mktemp("dashboard")
    page = write_dashboard(run_out, base / "dashboard.html")
    seen = load(browser, page)
    screenshot(browser, base / "dashboard.png")
    return {"html": page.read_text(encoding="utf-8"), "browser": browser, **seen}


def test_the_page_inlines_every_script_and_style(dashboard: dict[str, Any]) -> None:
    page = dashboard["html"]
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.I), "a script is loaded from elsewhere"
    assert not re.search(r"<link\b", page, re.I), "a style sheet or resource is linked"
    assert "MathJax.js" not in page
    assert page.count("Plotly.newPlot(") == len(CHARTS)


def test_the_page_loads_offline_without_console_errors_or_requests(dashboard: dict[str, Any]) -> None:
    errors = [entry for entry in dashboard["console"] if entry["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"
    fetched = [url for url in dashboard["requests"] if not url.startswith(("file:", "data:"))]
    assert not fetched, f"the page asked the network for {fetched}"


def test_every_chart_draws_its_data(dashboard: dict[str, Any]) -> None:
    charts = {chart["id"]: chart for chart in dashboard["charts"]}
    assert list(charts) == [chart.element_id for chart in CHARTS]
    for element_id, chart in charts.items():
        assert chart["width"] > 0 and chart["height"] > 0, f"{element_id} drew an empty SVG: {chart}"
        assert chart["marks"] > 0 and not chart["no_data"], f"{element_id} drew no data: {chart}"


def test_runs_table_shows_exactly_the_reports_runs(dashboard: dict[str, Any], run_out: Path) -> None:
    runs = build_report(run_out).sections["runs"]
    shown = dashboard["browser"].execute_script(RUNS_TABLE_JS)
    assert shown["head"] == list(runs.columns)
    assert shown["body"] == [[format_cell(value) for value in row] for row in runs.rows]
    summary = json.loads(next((run_out / "_runs").glob("*.json")).read_text())
    assert len(shown["body"]) == 1
    assert shown["body"][0][runs.columns.index("events_read")] == str(summary["events_read"])


def test_a_period_without_data_still_draws_every_chart(
    run_out: Path, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    page = write_dashboard(run_out, tmp_path / "empty.html", "--since", "2031-01-01", "--until", "2031-01-31")
    seen = load(browser, page)
    screenshot(browser, tmp_path / "empty.png")
    assert not [entry for entry in seen["console"] if entry["level"] == "SEVERE"]
    for chart in seen["charts"]:
        assert chart["width"] > 0 and chart["height"] > 0, chart
        if chart["id"] == "chart-review-queue":  # the store's queue now, whatever the period
            assert chart["marks"] > 0 and not chart["no_data"], chart
        else:
            assert chart["no_data"] and chart["marks"] == 0, chart


@pytest.mark.parametrize(
    ("flags", "status", "message"),
    [
        (["--since", "2025-13-01"], 2, "argument --since: must be a date, YYYY-MM-DD"),
        (["--until", "20250707"], 2, "argument --until: must be a date, YYYY-MM-DD"),
        (["--since", "2025-07-09", "--until", "2025-07-08"], 2, "--since 2025-07-09 is after --until"),
    ],
)
def test_bad_flags_exit_2(flags: list[str], status: int, message: str, tmp_path: Path) -> None:
    result = run_cli_in_process("dashboard", "--out", tmp_path, "--html", tmp_path / "d.html", *flags)
    assert (result.returncode, result.stdout) == (status, "")
    assert message in result.stderr
    assert not (tmp_path / "d.html").exists()


def test_help_names_every_flag() -> None:
    result = run_cli_in_process("dashboard", "--help")
    assert result.returncode == 0
    for flag in ("--out", "--html", "--since", "--until", "--config", "--audit-db", "Exit status"):
        assert flag in result.stdout


def test_a_missing_output_directory_exits_1(tmp_path: Path) -> None:
    result = run_cli_in_process("dashboard", "--out", tmp_path / "no-such-dir", "--html", tmp_path / "d.html")
    assert result.returncode == 1
    assert "no output directory" in result.stderr
    assert not (tmp_path / "d.html").exists()


def test_an_unwritable_file_exits_1_and_leaves_nothing(run_out: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "d.html"
    result = run_cli_in_process("dashboard", "--out", run_out, "--html", target)
    assert result.returncode == 1
    assert f"cannot write --html {target}" in result.stderr
    assert not target.parent.exists()
