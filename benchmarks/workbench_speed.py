"""Workbench speed in a real browser (issue: first paint of the default comparison <= 5 s; interactions
over stored runs of 100,000 requests <= 1 s).

    python benchmarks/workbench_speed.py [--rounds 3] [--requests 100000] [--runs 2] [--db PATH] [--json]

Drives the system chromium through Playwright (never a downloaded browser; ``apt-get install
chromium``). Every server is started here on 127.0.0.1 and a free port, and stopped by its PID.

First paint: a fresh server and a fresh browser per round; the clock starts at ``page.goto`` and
stops when the 24 KPI cards (four policies) are on the page, then when both charts are drawn
(Plotly's SVG present). Three ways to serve: ``python -m workbench`` (what ``make run`` starts: the
default comparison computed before it serves), plain ``streamlit run app.py`` (the first visitor
pays for imports and simulations), and a second visitor of an already-used server (fresh browser).

Runs page: a results file with ``--runs`` simulated runs of ``--requests`` requests each
(pipeline-dynamic and pipeline-static:degree=1 on 8x8xH200; built once and reused from ``--db``),
opened read-only by the Runs page. Timed: opening the file (every query cold), then interactions
(filter the runs by policy, clear it, pick run A equal to B, pick another run A), each from the click until the
page has settled: the expected text is there, no element is stale and both charts are drawn.
The first round of interactions runs each query once; later rounds hit the caches.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tridentcore.bench.launch import stop_process

ROOT = Path(__file__).resolve().parents[1]
METRICS = "[data-testid=stMetricValue]"
SETTLED = """([text, charts]) => {
  const busy = [...document.querySelectorAll('[data-testid=stStatusWidget]')].some(e => /Running/.test(e.innerText));
  return !busy && document.querySelectorAll('[data-stale=true]').length === 0
    && document.querySelectorAll('.js-plotly-plot .main-svg').length >= charts
    && (text === null || document.body.innerText.includes(text));
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(warm: bool, log_dir: Path, script_args: tuple[str, ...] = ()):
    """A workbench server of our own on 127.0.0.1: ``python -m workbench`` or plain ``streamlit run``;
    ``script_args`` are the workbench's own (``--db PATH``, ``--results-dir DIR``)."""
    port = _free_port()
    if warm:
        # (--no-store-default: the timings are of pages, and the repository's results/ stays as it is)
        cmd = [sys.executable, "-m", "workbench", "--port", str(port), "--no-store-default", *script_args]
    else:
        cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.headless", "true",
               "--server.address", "127.0.0.1", "--server.port", str(port)]
        cmd += ["--", *script_args] if script_args else []
    log = open(log_dir / f"server-{port}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd} exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
            if time.perf_counter() - t0 > 120:
                raise TimeoutError(f"{url} did not come up")
        yield url, time.perf_counter() - t0
    finally:
        stop_process(proc, 15.0)
        log.close()


def first_paint(browser, url: str) -> tuple[float, float]:
    context = browser.new_context(viewport={"width": 1500, "height": 1400})  # fresh: no cached scripts
    try:
        page = context.new_page()
        t0 = time.perf_counter()
        page.goto(url)
        page.wait_for_function(f"document.querySelectorAll('{METRICS}').length >= 24", timeout=120_000)
        cards = time.perf_counter() - t0
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 2", timeout=120_000)
        return cards, time.perf_counter() - t0
    finally:
        context.close()


def build_store(path: Path, requests: int, runs: int) -> None:
    from tridentcore.bench.scenario import load_scenario, run_meta, run_one
    from tridentcore.bench.spec import RunSpec
    from tridentcore.store import ResultsStore, new_run_id

    rate = 4.0  # 8x8xH200 sustains about 3.3 req/s of this mix: busy, queues grow, nothing unreasonable
    loaded = load_scenario(RunSpec(cluster="8x8xH200", duration_s=requests / rate))
    policies = ["pipeline-dynamic", "pipeline-static:degree=1", "pipeline-static:degree=2", "pipeline-static:degree=4"]
    tmp = path.with_suffix(".building")
    tmp.unlink(missing_ok=True)
    for k in range(runs):
        spec = policies[k % len(policies)]
        t0 = time.perf_counter()
        res = run_one(loaded, spec, rate)
        ResultsStore(tmp).write_run(run_meta(new_run_id(spec, k), loaded, spec, rate, res), res.requests, res.spans,
                                    res.placements, res.gpu_samples)
        print(f"  stored {spec}: {len(res.requests)} requests, {len(res.spans)} spans "
              f"({time.perf_counter() - t0:.1f} s)", flush=True)
    tmp.replace(path)


def settle(page, text: str | None, charts: int = 2, timeout_ms: int = 60_000) -> None:
    try:
        page.wait_for_function(SETTLED, arg=[text, charts], timeout=timeout_ms)
    except Exception:
        page.screenshot(path=str(ROOT / "out" / "workbench-speed-timeout.png"), full_page=True)
        raise


def pick(page, label: str, option: str) -> None:
    box = page.locator("[data-testid=stSelectbox], [data-testid=stMultiSelect]").filter(has_text=label).first
    box.locator("input").click()
    page.get_by_role("option", name=option, exact=True).click()


def unpick_last(page, label: str) -> None:
    box = page.locator("[data-testid=stMultiSelect]").filter(has_text=label).first
    box.locator("input").click()
    page.keyboard.press("Backspace")
    page.keyboard.press("Escape")


def runs_page(browser, url: str, db: Path, rounds: int) -> dict:
    from tridentcore.store import list_runs
    from workbench.access import database_label

    runs = list_runs(str(db))
    n, ids, policies = len(runs), list(runs["run_id"]), list(runs["policy"])
    label = {r.run_id: f"{r.policy} · {r.rate_rps:g} req/s · {r.run_id}" for r in runs.itertuples()}
    context = browser.new_context(viewport={"width": 1500, "height": 1400})
    out: dict[str, list[float]] = {}
    try:
        page = context.new_page()
        page.goto(url + "/runs")
        page.get_by_text("no results database at").first.wait_for(timeout=60_000)  # on the missing file first
        settle(page, None, charts=0)
        t0 = time.perf_counter()
        pick(page, "Results database (opened read-only)", database_label(db.resolve()))
        settle(page, f"{n} of {n} runs")
        out["open the file (cold queries)"] = [time.perf_counter() - t0]

        def timed(name: str, action, text: str) -> None:
            t0 = time.perf_counter()
            action()
            settle(page, text)
            out.setdefault(name, []).append(time.perf_counter() - t0)

        first, last = ids[0], ids[-1]
        for _ in range(rounds):
            timed("filter runs by policy", lambda: (pick(page, "policy", policies[0]), page.keyboard.press("Escape")),
                  f"{policies.count(policies[0])} of {n} runs")
            timed("clear the filter", lambda: unpick_last(page, "policy"), f"{n} of {n} runs")
            pick(page, "Run B", label[last])  # (the filter may have moved B) not timed
            settle(page, None)
            timed("pick run A (= B)", lambda: pick(page, "Run A", label[last]), "A and B are the same run")
            if n > 1:
                timed("pick run A (another run)", lambda: pick(page, "Run A", label[first]), "Configuration that differs")
        page.screenshot(path=str(ROOT / "out" / "workbench-speed-runs.png"))
    finally:
        context.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="servers started per way of serving; interaction rounds")
    ap.add_argument("--requests", type=int, default=100_000, help="requests per stored run")
    ap.add_argument("--runs", type=int, default=2, help="stored runs in the results file")
    ap.add_argument("--db", default=str(ROOT / "out" / "workbench-speed.duckdb"),
                    help="results file to use (built when missing or smaller than asked)")
    ap.add_argument("--skip-paint", action="store_true")
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no system chromium (apt-get install chromium)")
    (ROOT / "out").mkdir(exist_ok=True)
    results: dict = {"rounds": args.rounds}
    with tempfile.TemporaryDirectory(prefix="wb-speed-") as tmp, sync_playwright() as p:
        logs = Path(tmp)
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--headless=new"])
        try:
            if not args.skip_paint:
                paint: dict[str, list[tuple[float, float]]] = {}
                for _ in range(args.rounds):
                    for warm in (True, False):
                        with serve(warm, logs) as (url, up_s):
                            key = "python -m workbench (make run)" if warm else "streamlit run app.py"
                            paint.setdefault(key, []).append(first_paint(browser, url))
                            if warm:
                                paint.setdefault("second visitor, same server", []).append(first_paint(browser, url))
                            results.setdefault("server start to healthy (s)", {}).setdefault(key, []).append(up_s)
                results["first paint (s): KPI cards, charts"] = paint
            if not args.skip_runs:
                db = Path(args.db)
                reuse = False
                if db.is_file():  # built before: reuse it when it holds enough runs of about that size
                    from tridentcore.store import run_summary

                    sizes = run_summary(str(db))["requests"]
                    reuse = len(sizes) >= args.runs and int(sizes.min()) >= 0.95 * args.requests
                if not reuse:
                    print(f"building {db}: {args.runs} runs x {args.requests} requests", flush=True)
                    build_store(db, args.requests, args.runs)
                from tridentcore.store import run_summary

                results["store"] = {"path": str(db), "runs": int(len(run_summary(str(db)))),
                                    "requests": int(run_summary(str(db))["requests"].sum()),
                                    "size_mib": round(db.stat().st_size / 2**20, 1)}
                # The page may open only databases under --results-dir and those named with --db: a missing one
                # first (the page opens on nothing, as on a fresh clone), then the file, picked from the list.
                dbs = ("--results-dir", str(logs / "results"), "--db", str(logs / "missing.duckdb"), "--db", str(db))
                with serve(True, logs, dbs) as (url, _):
                    results["runs page (s)"] = runs_page(browser, url, db, args.rounds)
        finally:
            browser.close()

    if args.json:
        print(json.dumps(results, indent=1))
        return
    for key, rows in results.get("first paint (s): KPI cards, charts", {}).items():
        cards, charts = [r[0] for r in rows], [r[1] for r in rows]
        print(f"first paint, {key}: KPI cards median {statistics.median(cards):.2f} s (max {max(cards):.2f}), "
              f"charts median {statistics.median(charts):.2f} s (max {max(charts):.2f}) over {len(rows)}")
    for key, vals in results.get("server start to healthy (s)", {}).items():
        print(f"server start, {key}: median {statistics.median(vals):.2f} s")
    if "store" in results:
        s = results["store"]
        print(f"store: {s['runs']} runs, {s['requests']} requests, {s['size_mib']} MiB")
    for key, vals in results.get("runs page (s)", {}).items():
        first, rest = vals[0], vals[1:]
        tail = f", then median {statistics.median(rest):.2f} s (max {max(rest):.2f})" if rest else ""
        print(f"runs page, {key}: first {first:.2f} s{tail}")


if __name__ == "__main__":
    main()
