"""The README's quick start, as a newcomer types it (issue 15).

CI runs the suite on a fresh clone through `make test`, so the second line of the quick start is
the run itself; this test runs the others from the repository root: `make run` (on a free port and
a results directory of its own, through the Makefile's WORKBENCH_ARGS) until the workbench answers
and its default comparison is stored, then `trident simulate` from the venv. The Locust command the
README gives next is `tests/test_locust_tiny.py`. If the README's block changes, this test fails
until it follows.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK_START = ["make run", "make test", "source .venv/bin/activate", "trident simulate"]


def _quick_start_block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_quick_start_is_the_one_this_test_runs():
    assert _quick_start_block() == QUICK_START


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_run_serves_the_workbench_with_its_comparison_stored_and_trident_simulate_runs(tmp_path):
    import duckdb

    bindir = Path(sys.executable).parent  # the venv `make` installed (.venv/bin under `make test`)
    if not (ROOT / "Makefile").exists() or not (bindir / "trident").exists():
        pytest.skip("needs the repository's Makefile and an installed venv")
    port, results = _free_port(), tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    log = (tmp_path / "make-run.log").open("w")
    proc = subprocess.Popen(["make", "run", f"PORT={port}", f"VENV={bindir.parent}",
                             f"WORKBENCH_ARGS=--results-dir {results}"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, page = time.monotonic() + 300, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    page = r.status
                if page == 200 and (results / "trident.duckdb").exists():
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert proc.poll() is None, (tmp_path / "make-run.log").read_text()[-3000:]
        assert page == 200, (tmp_path / "make-run.log").read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # make and the workbench under it: the group this test started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    with duckdb.connect(str(results / "trident.duckdb"), read_only=True) as con:
        policies = sorted(r[0] for r in con.execute("SELECT policy FROM runs").fetchall())
    assert len(policies) == 4 and "trident" in policies, policies

    out = subprocess.run([str(bindir / "trident"), "simulate"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split()[0] for line in out.stdout.splitlines()[1:] if line.strip()]
    assert sorted(rows) == policies, out.stdout
