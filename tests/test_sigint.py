"""Children spawned under ``sigint_blocked`` are deaf to Ctrl-C from their first instruction.

Run in a fresh interpreter: multiprocessing's resource tracker is not running yet there, and its
first start (inside ``Process.start``) used to unblock SIGINT just before the child was forked, so a
Ctrl-C while the first child unpickled its target printed that child's KeyboardInterrupt traceback
(a fresh-clone CI run of ``generate --degree 2`` caught it).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from children import default_sigint  # noqa: E402  (tests/, on sys.path under pytest)

SCRIPT = textwrap.dedent("""
    import multiprocessing as mp, os, signal, sys, time

    from tridentcore.runtime.sigint import ignore_sigint, sigint_blocked

    def child():
        ignore_sigint()
        time.sleep(0.3)

    def masked(pid):  # SIGINT (signal 2, bit 1) blocked or ignored in the child, from /proc
        status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
        return bool((int(status["SigBlk"], 16) | int(status["SigIgn"], 16)) & 2)

    if __name__ == "__main__":
        ctx = mp.get_context("spawn")
        codes = []
        for _ in range(2):  # the first spawn starts the resource tracker; the second finds it running
            proc = ctx.Process(target=child)
            with sigint_blocked():
                proc.start()
            deaf = masked(proc.pid)
            os.kill(proc.pid, signal.SIGINT)  # while it unpickles its target, long before child() runs
            proc.join(30)
            codes.append((deaf, proc.exitcode))
        print(codes)
""")


def test_a_child_spawned_with_sigint_blocked_ignores_a_ctrl_c_during_its_start(tmp_path):
    script = tmp_path / "spawn_deaf.py"
    script.write_text(SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                         preexec_fn=default_sigint)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "[(True, 0), (True, 0)]", (run.stdout, run.stderr[-3000:])
    assert "KeyboardInterrupt" not in run.stderr, run.stderr[-3000:]
