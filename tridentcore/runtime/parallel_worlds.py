"""A diffuse dispatched on k > 1 local worker processes (``cpu:N``, ``cuda:...``) runs sequence-parallel
(Ulysses, :mod:`tridentcore.pipelines.parallel`) over exactly those k processes.

**One short-lived world per member set, not one world with every group made up front.** A process
group's ``new_group`` is collective over the whole default world, so a world of all N workers would
have to create, at start-up, a group for every device set a policy may pick (every subset of size
2, 4, 8 of a node: 99 groups on 8 devices), and rebuild all of it, on every worker, whenever one
worker dies. Instead the members of a dispatch meet in a torch.distributed world of their own:
gloo (NCCL on CUDA) through ``PrefixStore(key, TCPStore)`` on 127.0.0.1, the store served by the
engine's process on a free port (:class:`WorldKeys`). A world is named by a key the engine hands
out; the members keep it after the dispatch, and the next dispatch on the same member set reuses
it when every member still holds that key, so a replica that runs request after request on one set
(``pipeline-static:degree=k``) meets once. Any set of devices can meet, so the policies need no
aligned blocks, and simulated and live clusters choose device sets alike. A world that broke (a
member died, a collective timed out) is simply abandoned: its keys are forgotten here and the
members tear it down on their side (:class:`Worlds`), and the next dispatch meets afresh.

The same holds for Ray actors (``ray_workers``): they meet inside the actors, at the server node's
address when the cluster has several nodes. The store's listening socket is bound to that one
address (127.0.0.1 locally) and so are gloo's sockets: c10d's defaults would listen on every
interface, or on whatever the host name resolves to.

The price, measured on the reference machine (2 cores, gloo, 127.0.0.1, a test run beside it): a
fresh meeting of two started members takes about 20 ms, paid once per member set while no member
leaves it (``WorldKeys.meetings`` counts them).

Every collective has a timeout (``DEFAULT_PARALLEL_TIMEOUT_S``), and a member whose peer died
mid-step fails at once (gloo sees the closed socket). But one still meeting when its peer died
waits on the store, and c10d's store client retries past that timeout: so when a member of a
running parallel dispatch is lost, a member that has not failed within ``ABANDON_GRACE_S`` is
stopped (:meth:`~tridentcore.runtime.pool.Worker.abort`) and restarts like any lost worker. A peer
that stops answering without dying (frozen) makes the others' collective time out: once a member
has failed, one that has not ended within ``FAILED_GRACE_S`` is stopped the same way. Nothing
hangs; the cost is one more restart.

Each member gets the same :class:`~tridentcore.runtime.tasks.StageTask` (its inputs are
shared-memory handles, so the encode output reaches every member without a copy) with its own
:class:`WorldSpec`; the lead (the dispatch's first device, rank 0) returns the latents, the others
an acknowledgement. The lead decides at every step boundary whether to stop (a preemption or a
cancellation reaches only its flag) and broadcasts the decision, so every member stops at the same
step (``worker_process``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta

from .pool import Worker
from .tasks import StageResult, StageTask

__all__ = ["DEFAULT_PARALLEL_TIMEOUT_S", "LOOPBACK", "MemberSet", "WorldKeys", "WorldSpec", "Worlds", "meet", "store_client", "store_server"]

logger = logging.getLogger(__name__)

DEFAULT_PARALLEL_TIMEOUT_S = 60.0  # a member waits this long for a peer (meeting or collective)
ABANDON_GRACE_S = 0.5  # after a member died, how long the others may take to fail before they are stopped (well
# under a restart, so the retry never meets a member that is about to be stopped)
FAILED_GRACE_S = 5.0  # after a member failed (its collective timed out: a peer frozen), how long the others may
# take to end: a live one fails at once when the failed one leaves the world; one that does not answers nothing
LOOPBACK = "127.0.0.1"  # where worlds meet unless their members are on several nodes (Ray)


def meet(backend: str, store, rank: int, world_size: int, timeout_s: float, host: str = LOOPBACK):
    """Join this process's default torch.distributed world through ``store`` (a TCPStore, or a prefix of
    one) as ``rank`` of ``world_size``; its group. Used by the serving workers (:class:`Worlds`) and by
    ``trident generate --degree K``'s members (``local_group``). gloo's sockets are bound to ``host``
    (127.0.0.1 unless the members are on several nodes): left to itself, gloo binds to whatever the
    machine's host name resolves to, often an address every machine on the network can reach."""
    import torch.distributed as dist

    options = None
    if backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
        options._devices = [dist.ProcessGroupGloo.create_device(hostname=host)]
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s), pg_options=options)
    return dist.group.WORLD


def store_server(timeout_s: float, world_size: int | None = None, host: str = LOOPBACK):
    """A TCPStore served by this process on ``host`` (127.0.0.1 unless members are on other nodes), on a
    free port (its ``port``). The listening socket is bound here and handed over: c10d's own server
    would listen on every interface of the machine."""
    import socket

    import torch.distributed as dist

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timedelta(seconds=timeout_s),
                         wait_for_workers=False, master_listen_fd=sock.detach())


def store_client(port: int, timeout_s: float, world_size: int | None = None, host: str = LOOPBACK):
    """A client of the TCPStore served on ``host``:``port``."""
    import torch.distributed as dist

    return dist.TCPStore(host, port, world_size, is_master=False, timeout=timedelta(seconds=timeout_s))


@dataclass(frozen=True, slots=True)
class WorldSpec:
    """Which world a member of a parallel dispatch joins, and as which rank."""

    key: str  # unique per world: members holding the same key are in one world
    members: tuple[int, ...]  # device slots, the lead first (rank = index)
    rank: int
    port: int  # the engine's TCPStore, on ``host``
    timeout_s: float = DEFAULT_PARALLEL_TIMEOUT_S
    host: str = LOOPBACK  # the store's address, and the one each member's gloo sockets bind to


class WorldKeys:
    """The engine's side: the store the members meet through, and which world each slot holds."""

    def __init__(self, timeout_s: float = DEFAULT_PARALLEL_TIMEOUT_S, host: str = LOOPBACK) -> None:
        self.timeout_s = timeout_s
        self.host = host  # the store's address (set before start: a Ray cluster's may be another node's)
        self.store = None
        self.meetings = 0  # fresh worlds handed out (reuses not counted)
        self.parallel_runs = 0  # dispatches that ran sequence-parallel (the rest ran on their lead alone)
        self._held: dict[int, str] = {}  # slot -> key of the world it holds
        self._members: dict[str, tuple[int, ...]] = {}
        self._ids = itertools.count()

    def start(self) -> None:
        if self.store is None:
            self.store = store_server(self.timeout_s, host=self.host)

    @property
    def port(self) -> int:
        if self.store is None:
            raise RuntimeError("WorldKeys.start() first")
        return self.store.port

    def specs(self, members: Sequence[int]) -> list[WorldSpec]:
        """One spec per member of a dispatch on ``members`` (lead first): the world they all hold, or a new one."""
        members = tuple(members)
        key = self._held.get(members[0])
        if key is None or self._members.get(key) != members or any(self._held.get(s) != key for s in members):
            key = f"w{next(self._ids)}"
            self.meetings += 1
            self._members[key] = members
            for s in members:
                self._drop(s)
                self._held[s] = key
        return [WorldSpec(key, members, r, self.port, self.timeout_s, self.host) for r in range(len(members))]

    def forget(self, slots: Sequence[int]) -> None:
        """The worlds of ``slots`` are broken (a member lost, a dispatch failed): nobody reuses them."""
        for s in slots:
            key = self._held.get(s)
            for m in self._members.pop(key, ()) if key is not None else ():
                if self._held.get(m) == key:
                    del self._held[m]
            self._held.pop(s, None)

    def _drop(self, slot: int) -> None:
        key = self._held.pop(slot, None)
        if key is not None and not any(k == key for k in self._held.values()):
            self._members.pop(key, None)


class MemberSet(Worker):
    """The members of one parallel dispatch, run as one: every member gets the task with its world;
    the lead's result is the dispatch's (any member failing fails it)."""

    def __init__(self, workers: Sequence[Worker], keys: WorldKeys,
                 resident: Sequence[tuple[tuple[str, str], ...]] | None = None) -> None:
        self.workers = tuple(workers)
        self.keys = keys
        self.resident = tuple(resident) if resident is not None else None  # per member (a GPU keeps its own)
        self.slot = self.workers[0].slot
        self.kind = self.workers[0].kind

    def abort(self) -> None:
        """Stop every member's process (each restarts as a lost worker does)."""
        for w in self.workers:
            w.abort()

    async def run(self, task: StageTask) -> StageResult:
        specs = self.keys.specs([w.slot for w in self.workers])
        tasks = [replace(task, world=s) if self.resident is None else replace(task, world=s, resident=self.resident[i])
                 for i, s in enumerate(specs)]
        runs = [asyncio.ensure_future(w.run(t)) for w, t in zip(self.workers, tasks)]
        pending = set(runs)
        while pending:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            ended = [r.result() for r in runs if r.done()]
            if pending and any(not r.ok for r in ended):
                # a member died: the others fail at once if their collective sees the closed socket, but
                # one still meeting (or waiting on the store) would wait out its timeout. A member failed
                # (a collective past its timeout: a peer that stopped answering, frozen): a live peer fails
                # as soon as it leaves the world, a frozen one never ends. Past a grace period the rest are
                # stopped (and restarted, as a lost worker is), so nothing hangs
                died = any(r.lost for r in ended)
                _, pending = await asyncio.wait(pending, timeout=ABANDON_GRACE_S if died else FAILED_GRACE_S)
                for r, w in zip(runs, self.workers):
                    if r in pending or (pending and not died):  # (after a timeout: every member, afresh)
                        logger.warning("%s: %s; stopping it", w.name, "still in a group whose member died"
                                       if died else "in a group whose collective timed out")
                        w.abort()
                if pending:
                    await asyncio.wait(pending)
        results = [r.result() for r in runs]
        bad = [r for r in results if not r.ok]
        if bad:
            self.keys.forget([w.slot for w in self.workers])
            lost = [r for r in bad if r.lost]
            first = (lost or bad)[0]
            return StageResult(error=first.error or "a member of the group failed", oom=any(r.oom for r in bad),
                               lost=bool(lost))
        lead = results[0]
        if lead.degree > 1:
            self.keys.parallel_runs += 1
        else:
            logger.warning("dispatch %d on devices %s ran on its lead alone: %s at %dx%dx%d cannot split %d ways",
                           task.dispatch_id, ",".join(map(str, specs[0].members)), task.model, task.width,
                           task.height, task.frames, len(specs))
            return replace(lead, alone=True)  # (stored as degree 1: outside test 126)
        return lead


class Worlds:
    """A worker process's side: the world it holds now (one at most), joined and left on demand."""

    def __init__(self, address: str | None = None) -> None:
        self.key: str | None = None
        self.address = address  # this node's address, for worlds whose store is not on loopback (Ray)
        self._stores: dict[tuple[str, int], object] = {}

    def join(self, spec: WorldSpec, device):
        """The group of ``spec``'s world (this process's default world), met afresh unless already held."""
        import torch.distributed as dist

        from ..pipelines.parallel import backend_for

        if self.key == spec.key and dist.is_initialized():
            return dist.group.WORLD
        self.leave()
        base = self._stores.get((spec.host, spec.port))
        if base is None:
            base = self._stores[(spec.host, spec.port)] = store_client(spec.port, spec.timeout_s, host=spec.host)
        bind = LOOPBACK if spec.host == LOOPBACK or self.address is None else self.address
        group = meet(backend_for(device), dist.PrefixStore(spec.key, base), spec.rank, len(spec.members),
                     spec.timeout_s, bind)
        self.key = spec.key
        return group

    def leave(self) -> None:
        import torch.distributed as dist

        self.key = None
        if dist.is_initialized():
            dist.destroy_process_group()
