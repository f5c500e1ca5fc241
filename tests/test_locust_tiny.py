"""The README's first live run on a CPU, end to end: `trident serve --models tiny-sd3,tiny-wan --devices
cpu:2` and `locust -f workloads/mixed.py --headless --mix tiny` with no other flag (the cpu profile
and the 2xcpu cluster follow from the mix), and Locust without --mix sending what the server serves.

Locust runs as its own process (its gevent patching breaks in a process that imported requests or
transformers); the servers are child processes on free loopback ports, stopped by their own PIDs.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tridentcore.bench.launch import start_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LOCUSTFILE = REPO / "workloads" / "mixed.py"


def _locust(tmp_path: Path, host: str, *args: str,
            run_s: int = 20) -> tuple[subprocess.CompletedProcess, list[dict], dict]:
    """Locust headless for ``run_s`` against ``host``: the process, its per-request rows, its aggregated stats."""
    rows = tmp_path / "rows.jsonl"
    out = subprocess.run([sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-t", f"{run_s}s",
                          "--host", host, *args, "--rows-out", str(rows), "--csv", str(tmp_path / "l"),
                          "--only-summary"], capture_output=True, text=True, timeout=180, cwd=tmp_path)
    got = [json.loads(line) for line in rows.read_text().splitlines()] if rows.exists() else []
    stats = {}
    if (tmp_path / "l_stats.csv").exists():
        with open(tmp_path / "l_stats.csv", newline="") as f:
            stats = {r["Name"]: r for r in csv.DictReader(f)}.get("Aggregated", {})
    return out, got, stats


def test_locust_mix_tiny_against_the_tiny_cpu_server_needs_no_other_flag(tmp_path):
    server = start_server(["--models", "tiny-sd3,tiny-wan", "--devices", "cpu:2"], timeout_s=300)
    try:
        out, rows, stats = _locust(tmp_path, server.url, "--mix", "tiny")
    finally:
        assert server.stop() == 0
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(stats["Request Count"]) > 0 and int(stats["Failure Count"]) == 0, stats
    answered = [r for r in rows if r["http_status"]]  # (-t cuts the last ones short: unfinished, not failed)
    assert answered and {r["http_status"] for r in answered} == {200} and len(rows) - len(answered) <= 3
    assert {r["model"] for r in rows} == {"tiny-sd3", "tiny-wan"}
    assert "profile='cpu', cluster='2xcpu'" in out.stderr  # the SLOs are priced by the cpu profile


def test_locust_without_mix_sends_what_a_tiny_sd3_server_serves_and_replays_a_trace(tmp_path):
    server = start_server(["--models", "tiny-sd3", "--devices", "cpu:2"], timeout_s=300)
    trace = tmp_path / "trace.jsonl"  # no prompts (the API needs one) and tiny models (priced by cpu, not h200)
    trace.write_text("".join(f'{{"t": {t}, "model": "tiny-sd3", "height": 64, "width": 64, "steps": 2}}\n'
                             for t in (0, 0.5, 1.0, 1.5)))
    try:
        out, rows, stats = _locust(tmp_path, server.url, run_s=8)  # one model: a few requests show what it sends
        (tmp_path / "replay").mkdir()
        replay, replayed, _ = _locust(tmp_path / "replay", server.url, "--arrival", f"trace:{trace}", run_s=20)
    finally:
        assert server.stop() == 0
    assert out.returncode == 0, out.stderr[-3000:]
    assert "sending mix tiny:models=tiny-sd3" in out.stderr
    answered = [r for r in rows if r["http_status"]]
    assert answered and not [r for r in answered if r["http_status"] == 404]
    assert {r["state"] for r in answered} == {"done"} and {r["model"] for r in rows} == {"tiny-sd3"}
    # (Locust's CSV lags its last responses by up to its write interval when -t ends the run)
    assert 0 < int(stats["Request Count"]) <= len(answered) and int(stats["Failure Count"]) == 0
    # one row per scheduled request, those -t cut off included (the schedule fills -t by default)
    scheduled = int(re.search(r"run \S+: \d+ of (\d+) scheduled requests", out.stderr).group(1))
    assert len(rows) == scheduled and sorted(r["request_index"] for r in rows) == list(range(scheduled))
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "profile='cpu', cluster='2xcpu'" in replay.stderr
    assert [r["state"] for r in replayed] == ["done"] * 4, [r["reason"] for r in replayed]
