"""What the tests that signal a child process they started share.

A shell that runs a job in the background without job control (``make test &`` in a script) starts
it with SIGINT ignored, and an ignored signal stays ignored across fork and exec: a child that a
test means to stop with SIGINT (a Ctrl-C) would never see it. Such children are started with
``preexec_fn=default_sigint``.
"""

from __future__ import annotations

import signal
import time


def default_sigint() -> None:
    """``subprocess.Popen(preexec_fn=...)``: the child takes SIGINT at its default action (Python's
    KeyboardInterrupt), whatever this process does with it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ended(pid: int) -> bool:
    """No such process, or a zombie nobody reaps yet (it ended)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_ended(pid: int, timeout_s: float) -> bool:
    """Whether ``pid`` ended within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ended(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return ended(pid)


def served_past_a_hung_worker(models: str, policy: str, submission, degree: int = 1) -> tuple:
    """A ``cpu:2`` runtime with quick hang bounds (8 s and 5 x the predicted time) serves
    ``submission``; the worker process of its diffuse (the last member at ``degree`` > 1) is stopped
    with SIGSTOP as it runs. Returns the request's outcome and the engine's count of hung stages."""
    import asyncio
    import dataclasses
    import os
    import time

    from tridentcore.runtime.build import build_runtime

    async def main():
        rt = build_runtime(models, "cpu:2", policy)
        e = rt.engine
        # (3 s let a busy CI host judge the retry hung too, three times: the request failed)
        e.config = dataclasses.replace(e.config, hung_min_s=8.0, hung_factor=5.0)
        await rt.start()
        try:
            rid = e.submit([submission]).ids[0]
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                run = next((r for r in list(e.state.running.values())
                            if r.action.stage.value == "diffuse" and len(r.action.gpus) == degree), None)
                if run is not None:
                    os.kill(e.workers[run.action.gpus[-1]].pid, signal.SIGSTOP)  # a process this runtime started
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError(f"no diffuse of degree {degree} ever ran")
            return await e.wait(rid, 150), e.hung
        finally:
            await e.shutdown(5)

    return asyncio.run(asyncio.wait_for(main(), 300))
