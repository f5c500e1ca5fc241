"""The workbench in a real browser: `streamlit run app.py`, driven by Playwright through Debian's chromium.

Playwright never downloads a browser here: it drives the system's ``chromium`` (``apt-get install
chromium``; ``PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 pip install playwright``). Without either the
test is skipped. It saves a screenshot and the measured times under ``out/`` (git-ignored).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = ROOT / "out"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no system chromium (apt-get install chromium)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"streamlit did not answer on {url} within {timeout_s} s")


@pytest.fixture()
def server(tmp_path):
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
         "--server.port", str(port), "--server.address", "127.0.0.1", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


METRICS = "[data-testid=stMetric]"
VALUES = "[data-testid=stMetricValue]"


def test_browser_default_comparison_then_policy_and_rate(server):
    ARTIFACTS.mkdir(exist_ok=True)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1400})
            t0 = time.perf_counter()
            page.goto(server)
            page.wait_for_function(f"document.querySelectorAll('{METRICS}').length >= 24", timeout=90_000)
            kpis_s = time.perf_counter() - t0
            page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 2", timeout=90_000)
            charts_s = time.perf_counter() - t0
            before = page.locator(VALUES).all_inner_texts()
            assert len(before) == 24 and before[0].endswith("%")

            page.get_by_role("button", name="Remove pipeline-dynamic").click()
            page.wait_for_function(f"document.querySelectorAll('{METRICS}').length === 18", timeout=60_000)
            three = page.locator(VALUES).all_inner_texts()

            rate = page.get_by_label("Rate (req/s)")
            rate.fill("0.9")
            rate.press("Enter")
            page.wait_for_function(
                "old => { const v = [...document.querySelectorAll('" + VALUES + "')].map(e => e.innerText);"
                " return v.length === 18 && v.join('|') !== old.join('|'); }",
                arg=three, timeout=60_000,
            )
            after = page.locator(VALUES).all_inner_texts()
            assert after != three
            page.screenshot(path=str(ARTIFACTS / "workbench-browser.png"))
        finally:
            browser.close()
    (ARTIFACTS / "workbench-browser.txt").write_text(
        f"first open of the default comparison (cold server): KPI cards {kpis_s:.2f} s, charts {charts_s:.2f} s\n")
