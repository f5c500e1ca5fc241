"""K local processes in one torch.distributed group, this process the lead (rank 0): what
``trident generate --degree K`` runs its diffuse on.

:class:`LocalGroup` spawns K-1 member processes; each loads the same pipeline by name (the built-in
models have seeded weights, directories and hub ids load the same files), joins the group through a
TCPStore on 127.0.0.1 (the lead's, on a free port) and then follows the lead: for every
:meth:`LocalGroup.diffuse` the lead broadcasts a command, the call and the encode output, and all
members run the diffuse sequence-parallel (:func:`tridentcore.pipelines.parallel.diffuse_parallel`).
Encode and decode stay with the caller, on the lead.

CPU and CUDA differ in exactly two things per member, both decided by :func:`plan_members`: the
backend (gloo or NCCL) and the device (``cpu``, or ``cuda:I+r`` for rank r of ``cuda:I``). Each
member, the lead included, computes with ``cores // K`` torch threads, so K members share the host.

A diffuse that fails alike on every member before any collective (a ``ValueError``: a degree the
shape cannot take, bad steps) leaves the group usable; any other failure breaks it, and closing
then stops the member processes this group started instead of asking them to stop.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from .parallel_worlds import meet, store_client, store_server
from .sigint import ignore_sigint, sigint_blocked

__all__ = ["LocalGroup", "Member", "MemberFailed", "plan_members"]

logger = logging.getLogger(__name__)

_DIFFUSE, _STOP = "diffuse", "stop"


class MemberFailed(RuntimeError):
    """A member process could not start, or died, or its diffuse failed while the lead's did not."""


@dataclass(frozen=True, slots=True)
class Member:
    """How rank ``rank`` of a ``world``-process group joins it and computes."""

    rank: int
    world: int
    backend: str
    device: str
    threads: int


def plan_members(device: str, degree: int, cores: int) -> tuple[Member, ...]:
    """Every rank's :class:`Member`: ``device`` ``cpu``, ``cuda`` or ``cuda:I`` (ranks on ``cuda:I``..``I+K-1``)."""
    from ..pipelines.parallel import backend_for

    if degree < 1:
        raise ValueError(f"degree must be at least 1 (got {degree})")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise ValueError(f"unknown device {device!r}; valid: cpu, cuda, cuda:I")
    first = int(index or 0)
    threads = max(1, cores // degree)
    return tuple(
        Member(rank=r, world=degree, backend=backend_for(kind), device="cpu" if kind == "cpu" else f"cuda:{first + r}",
               threads=threads)
        for r in range(degree)
    )


def _join(member: Member, port: int, timeout_s: float, store=None):
    import torch

    if member.device.startswith("cuda"):
        torch.cuda.set_device(member.device)
    return meet(member.backend, store if store is not None else store_client(port, timeout_s, member.world),
                member.rank, member.world, timeout_s)


def _ended(proc) -> str:
    """How a member process ended, for messages (reaped first: its exit code is known only then)."""
    proc.join(1.0)
    code = proc.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed (signal {-code})"
    return f"exited (code {code})"


def _command(group, command: str) -> str:
    import torch.distributed as dist

    box = [command]
    dist.broadcast_object_list(box, group=group, group_src=0)
    return box[0]


def _tell(conn, message) -> bool:
    """Send ``message`` to the lead; False when the lead is gone (killed: nobody left to tell, and a member's
    ``BrokenPipeError`` traceback under the lead's exit was noise; outside test 120)."""
    try:
        conn.send(message)
        return True
    except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
        return False


def member_main(member: Member, port: int, model: str, dtype: str, timeout_s: float, conn) -> None:
    """Entry point of a member process: load, join, then follow the lead's commands until ``stop``.
    It ignores SIGINT (``runtime/sigint.py``): a Ctrl-C at the terminal reaches the whole process
    group, and the lead, interrupted, stops its members itself."""
    ignore_sigint()
    import torch
    import torch.distributed as dist

    from ..pipelines import load_pipeline
    from ..pipelines.parallel import diffuse_parallel

    torch.set_num_threads(member.threads)
    try:
        pipe = load_pipeline(model, device=member.device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - reported to the lead, which gives up
        _tell(conn, ("error", f"rank {member.rank}: cannot load {model}: {type(exc).__name__}: {exc}"))
        return
    if not _tell(conn, ("loaded", member.rank)):
        return
    try:
        group = _join(member, port, timeout_s)
        while _command(group, "") == _DIFFUSE:
            try:
                diffuse_parallel(pipe, group)
            except ValueError:
                continue  # raised alike on the lead, which reports it; the group stays usable
        _tell(conn, ("stopped", member.rank))
    except Exception as exc:  # noqa: BLE001 - the lead's own collective fails too; it reports
        _tell(conn, ("error", f"rank {member.rank}: {type(exc).__name__}: {exc}"))
        # said (or the lead is gone: killed); out now, without the teardown of the failed collective, which
        # printed torch's warning of an unwaited collective call under the lead's last words
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


class LocalGroup:
    """The lead's side: ``with LocalGroup("tiny-sd3", "cpu", "float32", 2) as g: g.diffuse(pipe, call, emb)``."""

    def __init__(self, model: str, device: str, dtype: str, degree: int, *, timeout_s: float = 300.0,
                 cores: int | None = None) -> None:
        if degree < 2:
            raise ValueError(f"a local group has at least 2 members (got degree {degree})")
        self.model, self.device, self.dtype, self.degree = model, device, dtype, degree
        self.timeout_s = timeout_s
        self.cores = cores
        self.members: tuple[Member, ...] = ()
        self.group = None
        self.broken = False
        self.interrupted = False  # a diffuse was interrupted (Ctrl-C, SIGTERM): the members are stopped at once
        self._procs: list = []
        self._conns: list = []
        self._threads: int | None = None

    def __enter__(self) -> "LocalGroup":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        import multiprocessing as mp

        import torch
        import torch.distributed as dist

        cores = self.cores or len(os.sched_getaffinity(0))
        self.members = plan_members(self.device, self.degree, cores)
        if dist.is_initialized():
            raise RuntimeError("this process is already in a torch.distributed group")
        store = store_server(self.timeout_s, self.degree)
        ctx = mp.get_context("spawn")
        for member in self.members[1:]:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=member_main, name=f"trident-member-{member.rank}", daemon=True,
                               args=(member, store.port, self.model, self.dtype, self.timeout_s, child))
            with sigint_blocked():  # born deaf to Ctrl-C: member_main ignores it before it unblocks it
                proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
        self._await_loaded()
        self._threads = torch.get_num_threads()
        torch.set_num_threads(self.members[0].threads)
        self.group = _join(self.members[0], store.port, self.timeout_s, store=store)

    def _await_loaded(self) -> None:
        from multiprocessing.connection import wait

        deadline = time.monotonic() + self.timeout_s
        waiting = dict(zip(self._conns, self._procs))
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MemberFailed(f"{len(waiting)} member(s) did not load {self.model} within {self.timeout_s:g} s")
            ready = wait([*waiting, *(p.sentinel for p in waiting.values())], timeout=left)
            for conn, proc in list(waiting.items()):
                if conn in ready and conn.poll():
                    try:
                        kind, what = conn.recv()
                    except (EOFError, OSError):  # it died: its end of the pipe closed
                        raise MemberFailed(f"{proc.name} {_ended(proc)} before loading {self.model}") from None
                    if kind == "error":
                        raise MemberFailed(what)
                    del waiting[conn]
                elif proc.sentinel in ready and not conn.poll():
                    raise MemberFailed(f"{proc.name} {_ended(proc)} before loading {self.model}")

    def diffuse(self, pipe, call, embeddings, latents=None):
        """One sequence-parallel diffuse of ``pipe`` (the lead's pipeline) over the group; the latents."""
        from ..pipelines.parallel import diffuse_parallel

        if self.group is None or self.broken:
            raise RuntimeError("the group is not running")
        try:
            _command(self.group, _DIFFUSE)
            return diffuse_parallel(pipe, self.group, call, embeddings, latents)
        except ValueError:
            raise
        except BaseException as exc:
            self.broken = True
            if not isinstance(exc, Exception):  # an interrupt (Ctrl-C, SIGTERM): no member error to wait for,
                self.interrupted = True  # and the members, in a collective the lead left, are stopped at once
                raise  # (outside test 126: 3 s more than at degree 1)
            errors = self._member_errors(wait_s=2.0)
            if errors:
                raise MemberFailed("; ".join(errors)) from exc
            raise

    def _member_errors(self, wait_s: float) -> list[str]:
        from multiprocessing.connection import wait

        wait(self._conns, timeout=wait_s)
        errors = []
        for conn, proc in zip(self._conns, self._procs):
            while conn.poll():
                try:
                    kind, what = conn.recv()
                except (EOFError, OSError):  # it died (killed): its end of the pipe closed
                    errors.append(f"{proc.name} {_ended(proc)}")
                    break
                if kind == "error":
                    errors.append(what)
        return errors

    def close(self) -> None:
        """Stop the members (asked when the group works, else stopped) and leave the group."""
        import torch
        import torch.distributed as dist

        asked = False  # the members were told to stop (they end by themselves): else they are stopped
        if self.group is not None and not self.broken:
            try:
                _command(self.group, _STOP)
                asked = True
            except Exception:  # noqa: BLE001 - then the members are stopped below
                self.broken = True
        if dist.is_initialized():
            dist.destroy_process_group()
        self.group = None
        for proc in self._procs:  # (never met, e.g. interrupted while they loaded: they would wait to meet)
            proc.join(timeout=10 if asked else 0 if self.interrupted else 1)
            if proc.is_alive():
                proc.terminate()  # only processes this group started, by their handles
                proc.join(timeout=5)
        for conn in self._conns:
            conn.close()
        self._procs, self._conns = [], []
        if self._threads is not None:
            torch.set_num_threads(self._threads)
            self._threads = None
