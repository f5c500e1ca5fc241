"""Start ``trident serve`` as a child process on a free port and stop it again (live benches, tests,
benchmarks). It runs the server by command (``python -m tridentcore.cli serve``), never imports it.

The child binds port 0 and writes the port it got to a file once it is ready, so nothing is parsed
from its output. :meth:`ServerProcess.stop` sends SIGTERM (the server drains and writes its store)
and waits; only the child this object started is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..core.defaults import API_KEY_ENV, PARENT_PID_ENV, STOPPING_SUFFIX
from ..core.errors import TridentError


class LaunchError(TridentError, RuntimeError):
    pass


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    port: int
    host: str
    log_path: Path
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)
    port_file: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stopping_signal(self) -> int | None:
        """The signal that began to stop the server (``--port-file``'s ``.stopping`` file), while it
        drains and after; None while it serves."""
        if self.port_file is None:
            return None
        try:
            return int(self.port_file.with_name(self.port_file.name + STOPPING_SUFFIX).read_text())
        except (OSError, ValueError):
            return None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait for a clean exit (drain, store written); SIGKILL only past the timeout."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        code = self.proc.returncode
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        return code


SERVE_FOLDER_PREFIX = "trident-serve-"  # the temporary folder of a server's port file and log (its starter's)

def stop_process(proc: subprocess.Popen | None, timeout_s: float) -> int | None:
    """SIGTERM the child we started, wait; SIGKILL past the timeout. Returns its exit code."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def start_server(args: list[str], *, host: str = "127.0.0.1", timeout_s: float = 120.0,
                 env: dict[str, str] | None = None, pass_fds: tuple[int, ...] = (),
                 folder: Path | None = None) -> ServerProcess:
    """``trident serve ARGS --host HOST --port 0`` in a child process; returns once it serves.

    The child gets this process's environment and ``env``, less an inherited ``TRIDENT_API_KEY``:
    it has an API key only when ``env`` gives it one (through the environment, never argv); and
    ``TRIDENT_STOP_WITH_PARENT``, this process's PID: the server drains and stops when this process
    is gone, killed too (it was left serving for ever). ``pass_fds``: descriptors it keeps open
    (a live bench's lock on its work folder, :mod:`.orphans`). ``folder``: where its port file and
    log go (default: a temporary folder of its own, removed by :meth:`ServerProcess.stop`)."""
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix=SERVE_FOLDER_PREFIX) if folder is None else None
    where = Path(tmp.name) if tmp is not None else folder
    port_file = where / "port"
    log_path = where / "server.log"
    for stale in (port_file, port_file.with_name(port_file.name + STOPPING_SUFFIX)):  # an earlier server's, in a
        stale.unlink(missing_ok=True)  # folder given again: its port would be read before this one wrote its own
    cmd = [sys.executable, "-m", "tridentcore.cli", "serve", *args, "--host", host, "--port", "0",
           "--port-file", str(port_file)]
    child_env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    child_env[PARENT_PID_ENV] = str(os.getpid())  # it stops when this process is gone, even by kill -9
    child_env.update(env or {})
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env,
                            pass_fds=pass_fds)
    log.close()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if port_file.exists():
                return ServerProcess(proc, int(port_file.read_text()), host, log_path, tmp, port_file)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    except BaseException:
        # a Ctrl-C (or a stop taken as one) while it starts: it goes too, not left to start and serve on
        # its own (outside test 108: a live comparison stopped as its next policy's server started lost
        # that server's folder to the bench's clean-up while the server wrote into it, and nothing
        # recovered it)
        stop_process(proc, 10.0)  # (SIGTERM while it starts: "stopped before it served")
        if tmp is not None:
            tmp.cleanup()
        raise
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if tmp is not None:
        tmp.cleanup()
    raise LaunchError(f"trident serve did not start (exit {proc.returncode}):\n{text[-4000:]}")
