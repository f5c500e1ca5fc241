"""Workers: one per device slot, all behind one interface (``await worker.run(task) -> StageResult``).

* :class:`EmulatedWorker` holds no weights and takes the time the engine tells it (the cost
  model's duration, scaled): the API, queues, dispatch and bookkeeping around it are all real.
* :class:`CpuWorker` is a real process (``spawn``; one torch thread) holding the requested tiny
  pipelines and running encode / diffuse / decode for real. Tensors travel through shared memory:
  ``torch.multiprocessing`` registers reductions with the pickler that ``Connection.send`` uses,
  so a CPU tensor crosses a pipe as a handle to a shared-memory segment, not as bytes. The engine
  keeps each request's embeddings and latents between stages (handles only) and passes them to
  the next worker.

A diffuse piece runs one denoising step per call of the resumable ``diffuse`` and checks a shared
flag between steps, which is how a ``Preempt`` (or the cancellation of every request in the batch)
stops it at the next step boundary. A worker process that dies (even by SIGKILL) is seen through
its process sentinel: the engine is told (``on_lost``), the process is restarted, and the engine is
told again when the new one is ready (``on_restored``).

An allocation failure in a worker (``MemoryError``, ``torch.OutOfMemoryError`` — which is
``torch.cuda.OutOfMemoryError`` — or torch's CPU allocator refusing) comes back as a value,
``StageResult(oom=True)``, which the engine reports to the policy as ``StageFailed(oom=True)``; the
request is retried at a safer configuration (a decode retried after an OOM runs tiled) and the OOM
is counted on the request. ``StageTask.fault`` is the test seam behind ``trident serve --inject-oom``.

The engine process imports torch only when CPU workers are used (to receive shared tensors).

This module is the map and the import path; the parts live in :mod:`.tasks` (task, result, model card,
OOM as a value), :mod:`.pool` (the worker interface and the pool), :mod:`.emulated`,
:mod:`.process_worker` (the parent side of a worker process), :mod:`.worker_process` (what runs
inside it) and :mod:`.residency` (weights on a GPU).
"""

from __future__ import annotations

from .emulated import EmulatedWorker
from .pool import Worker, WorkerPool
from .process_worker import CpuWorker
from .residency import Residency, residency_moves
from .tasks import ModelCard, StageResult, StageTask, failure, is_oom
from .worker_process import load_pipelines
from .worker_process import run_task as _execute  # noqa: F401  (its old private name: tests, ray_workers)

__all__ = [
    "CpuWorker", "EmulatedWorker", "ModelCard", "Residency", "StageResult", "StageTask", "Worker", "WorkerPool",
    "failure", "is_oom", "load_pipelines", "residency_moves",
]  # fmt: skip
