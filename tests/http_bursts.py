"""Concurrent synchronous generations against a real server (the burst tests' client)."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence

import httpx

TINY = {"model": "tiny-sd3", "prompt": "a red cube", "size": "128x128", "steps": 8}


def burst(url: str, n: int, body: dict | Sequence[dict] = TINY, timeout_s: float = 300,
          **extra) -> list[httpx.Response]:
    """``n`` concurrent ``POST /v1/images/generations`` of ``body`` (seeds 0..n-1), one client each;
    a sequence of bodies is taken in turn (request i sends ``body[i % len(body)]``)."""
    bodies = [body] if isinstance(body, dict) else list(body)

    def one(i: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=timeout_s) as client:
            return client.post("/v1/images/generations", json={**bodies[i % len(bodies)], **extra, "seed": i})

    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))
