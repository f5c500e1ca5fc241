"""API jobs over engine requests: what ``POST`` creates and ``GET /v1/requests/...`` reads.

A generation of ``n`` images is ``n`` engine requests (seeds ``seed .. seed+n-1``) under one job
id, ``gen-`` and 16 random URL-safe characters (96 bits from :mod:`secrets`: an id cannot be
guessed from another). :class:`Jobs` owns the job table (bounded: ended jobs beyond ``max_jobs`` are
forgotten oldest first) and turns engine state into response bodies; it raises
:class:`~tridentcore.server.errors.ApiError` for every expected failure and knows nothing of
HTTP (the routers do). No FastAPI import here.
"""

from __future__ import annotations

import asyncio
import base64
import random
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..core.defaults import MAX_SEED
from ..core.errors import brief
from ..core.types import Shape, parse_size, size_label
from ..runtime.engine import REFUSED_WITH, Accepted, Submission
from ..runtime.models import ModelEntry, check_request
from .errors import ApiError, invalid

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from ..runtime.build import Runtime
    from ..runtime.stored import RunRecords
    from .schemas import GenerationRequest, ImageGenerationRequest

__all__ = ["ENDED", "JOB_ID_PREFIX", "Job", "Jobs", "new_job_id"]

ENDED = ("done", "failed", "rejected", "cancelled")
_RUNNING = ("encoding", "diffusing", "decoding", "encoded", "diffused")
JOB_ID_PREFIX = "gen-"


def new_job_id() -> str:
    """``gen-`` and 16 URL-safe characters (96 random bits): unguessable, unlike a counter."""
    return JOB_ID_PREFIX + secrets.token_urlsafe(12)


@dataclass
class Job:
    id: str
    kind: str  # image | video
    model: str
    request_ids: tuple[int, ...]
    response_format: str
    created_unix_s: float
    meta: dict = field(default_factory=dict)
    final: dict[int, dict] = field(default_factory=dict)  # items the engine has forgotten, as they ended
    polled: bool = False  # submitted without waiting (POST /v1/requests): its client polls for how it ends
    told: bool = False  # an answer to its client has shown it ended (its status, its result, a cancel)
    ended_unix_s: float | None = None  # when its latest item ended (the job has ended once they all have)


class Jobs:
    """The server's jobs over one runtime's engine."""

    def __init__(self, runtime: Runtime, max_jobs: int, records: RunRecords | None = None) -> None:
        self.runtime = runtime
        self.engine = runtime.engine
        self.max_jobs = max_jobs
        self.records = records  # with --db: a request is answered once the run's journal holds it as it stands
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._owner: dict[int, Job] = {}  # request id -> its job, until the engine forgets the request
        self._arriving: dict[int, dict] | None = None  # during engine.submit: requests forgotten in it, as they ended

    def attach(self) -> None:
        """Keep an ended request's last state when the engine forgets it (call once, at app creation)."""
        self.engine.forget_listeners.append(self._on_forget)
        self.engine.end_listeners.append(self._on_end)

    def _on_end(self, rec) -> None:
        job = self._owner.get(rec.id)
        if job is not None:
            job.ended_unix_s = time.time()

    def _on_forget(self, rid: int) -> None:
        job = self._owner.pop(rid, None)
        if job is not None:
            job.final[rid] = self.engine.describe(rid)
        elif self._arriving is not None:  # rejected on arrival and forgotten at once (--keep-ended below n)
            self._arriving[rid] = self.engine.describe(rid)

    # ------------------------------------------------------------------ creating
    def entry_for(self, model: str | None, kind: str | None) -> ModelEntry:
        models = self.runtime.models
        if model is None:
            for e in models.values():
                if kind is None or e.kind == kind:
                    return e
            raise ApiError("unknown_model", f"no {kind or ''} model is served; served: {', '.join(models)}".replace("  ", " "),
                           "model")
        e = models.get(model)
        if e is None:
            raise ApiError("unknown_model", f"model {brief(model)} is not served; served: {', '.join(models)}",
                           "model")
        if kind is not None and e.kind != kind:
            raise ApiError("invalid", f"model {model!r} makes {e.kind}s; use the {e.kind}s endpoint", "model",
                           [{"field": "model", "message": f"{model} makes {e.kind}s"}])
        return e

    def submit(self, body: GenerationRequest | ImageGenerationRequest, kind: str | None) -> Job:
        """Validate ``body`` against the model and submit its ``n`` requests; the new job."""
        entry = self.entry_for(body.model, kind)
        problems: list[tuple[str, str]] = []
        width, height = entry.default_width, entry.default_height
        if body.size is not None:
            try:
                width, height = parse_size(body.size)
            except ValueError as exc:
                problems.append(("size", str(exc)))
        frames = getattr(body, "frames", None)
        if frames is None:
            frames = entry.default_frames
        steps = body.steps or entry.default_steps
        if not problems:
            cost, gpu_kind = self.runtime.pricing(entry.name)
            problems += [(p.field, p.message) for p in check_request(entry, cost, gpu_kind, width, height, frames,
                                                                       steps, body.prompt)]
        queue = self.runtime.engine_of(entry.name).config.max_queued
        if body.n > queue:  # (never admitted, however empty the queue: a 429 would be retried forever)
            problems.append(("n", f"{body.n} items are more than this server's queue holds ({queue}, --max-queued); "
                                  f"send at most {queue} per request"))
        if body.seed is not None and body.seed + body.n - 1 > MAX_SEED:  # (its items ran past it: outside test)
            problems.append(("seed", f"seed {body.seed} with n {body.n}: the items take seeds seed .. seed+n-1, "
                                     f"at most {MAX_SEED}; give a seed of at most {MAX_SEED - body.n + 1}"))
        if problems:
            raise invalid(problems)
        seed = body.seed if body.seed is not None else random.SystemRandom().randrange(2**31 - body.n)
        shape = Shape(height, width, frames, steps)
        slo_s = None if body.slo_ms is None else body.slo_ms / 1000.0
        job_id = new_job_id()
        while job_id in self.jobs:  # 96 random bits: never, in practice
            job_id = new_job_id()
        items = [Submission(entry.name, body.prompt, shape, seed + i, body.guidance, body.negative_prompt, slo_s,
                            job_id) for i in range(body.n)]
        self._arriving = {}
        try:
            got = self.engine.submit(items)
        finally:
            arriving, self._arriving = self._arriving, None
        if not isinstance(got, Accepted):
            raise ApiError(got.code, got.reason, retry_after_s=got.retry_after_s or None)
        job = Job(job_id, entry.kind, entry.name, got.ids, body.response_format, time.time(),
                  {"size": size_label(width, height), "frames": frames, "steps": steps, "seed": seed}, arriving)
        self.jobs[job_id] = job
        for rid in got.ids:
            if rid not in arriving:
                self._owner[rid] = job
        self._trim()
        return job

    def _trim(self) -> None:
        """Forget the oldest jobs beyond ``max_jobs``, as long as they have ended."""
        while len(self.jobs) > self.max_jobs:
            oldest = next(iter(self.jobs.values()))
            if any(self.item(oldest, r)["state"] not in ENDED for r in oldest.request_ids):
                break
            self.jobs.popitem(last=False)
            for r in oldest.request_ids:
                self._owner.pop(r, None)

    # ------------------------------------------------------------------ reading
    def item(self, job: Job, rid: int) -> dict:
        """One request of a job: live from the engine, or as it ended once the engine forgot it."""
        d = job.final.get(rid)
        return d if d is not None else self.engine.describe(rid)

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            started = getattr(self.engine, "started_unix_s", None)
            since = f" (it began {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(started))} UTC)" if started else ""
            # (outside test: a job id from before a restart read only "no request ..."; its rows are stored)
            raise ApiError("not_found", f"no request {brief(job_id)} on this server{since}; a request of an earlier "
                                        "server with --db is in its store: trident sql \"SELECT * FROM requests WHERE "
                                        "job_id = '...'\"")  # (the id: at most 80 characters of it)
        return job

    def recent(self, limit: int) -> list[Job]:
        """The ``limit`` most recent jobs, newest first."""
        return list(self.jobs.values())[-limit:][::-1]

    def state(self, job: Job) -> str:
        states = [self.item(job, r)["state"] for r in job.request_ids]
        if all(s == "done" for s in states):
            return "done"
        for ending in ("failed", "rejected", "cancelled"):
            if ending in states and all(s in ENDED for s in states):
                return ending
        if any(s in _RUNNING for s in states):
            return "running"
        return "queued"

    def answering(self, job: Job, state: str) -> str:
        """``state``, the job's, about to be answered: an ended one is then known to its client."""
        if state in ENDED:
            job.told = True
        return state

    def polled_untold(self, recent_s: float) -> list[Job]:
        """The jobs submitted without waiting whose clients have not been told how they ended: those
        still in flight as a drain begins, and those that ended in the last ``recent_s`` (outside test
        106: one that ended just before the stop was not waited for, and its client, polling every few
        seconds, found the doors closed on an image made for it). :meth:`picked_up` keeps the server
        answering until their clients have seen the end; one that ended longer ago, its client gone,
        does not hold a stop."""
        now = time.time()
        return [j for j in self.jobs.values() if j.polled and not j.told and (
            self.state(j) not in ENDED or now - (j.ended_unix_s or j.created_unix_s) <= recent_s)]

    async def picked_up(self, jobs: list[Job], timeout_s: float, hurry: Callable[[], bool]) -> tuple[list[Job], float]:
        """Wait until an answer has told each of ``jobs`` that it ended (its status or result read), for
        at most ``timeout_s`` or until ``hurry()``; those not told, and the seconds waited."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (left := [j for j in jobs if not j.told]) and loop.time() < start + timeout_s and not hurry():
            await asyncio.sleep(0.02)
        return left, loop.time() - start

    def status_body(self, job: Job, tells: bool = True) -> dict:
        """``tells``: the answer goes to the job's client (its own status), not to a list of recent
        requests, which a dashboard reads: a drain stopped waiting for the client once a list had shown
        the request ended, and the client's next poll found the doors closed."""
        items = [self.item(job, r) for r in job.request_ids]
        state = self.state(job)
        return {"id": job.id, "object": "generation", "kind": job.kind, "model": job.model,
                "state": self.answering(job, state) if tells else state,
                "created": int(job.created_unix_s), **job.meta, "items": items}

    def result_body(self, job: Job) -> dict:
        """The finished generation; ``ApiError`` while it runs or when it did not end done."""
        state = self.answering(job, self.state(job))
        if state in ("queued", "running"):
            raise ApiError("not_ready", f"request {job.id} is {state}", extra={"state": state})
        if state != "done":
            items = [self.item(job, r) for r in job.request_ids]
            ended = [d for d in items if d["state"] != "done"]
            reasons = sorted({d["reason"] for d in ended})
            # the items refused with another of their generation repeat its reason (outside test 122): its own
            own = [r for r in reasons if not r.startswith(REFUSED_WITH)]
            reasons = own or reasons
            # a rejection (no capacity to meet the deadline, goodput mode) may succeed later: say when,
            # the policy's estimate where it made one (the longest of the job's), else the default
            # the default; none where no wait makes it (it can never fit, or no degree meets its SLO alone)
            retry = None
            extra = {"id": job.id, "state": state, "request_ids": list(job.request_ids)}
            if state == "rejected":
                if all(d.get("retry_useless") for d in ended if d["state"] == "rejected"):
                    extra["retry_useless"] = True
                else:
                    retry = max((d.get("retry_after_s") or 0.0 for d in ended), default=0.0) or \
                        self.runtime.engine.config.retry_after_s
            # the items that did end done are answered with the failure (outside test 130: a generation of 8 cut
            # short by a drain answered 500 with nothing, though 7 of its images were made and stored as done)
            done = [i for i, d in enumerate(items) if d["state"] == "done"]
            where = ""
            if done:  # (each with its index; one whose result is no longer kept is left out of data)
                data, timings, emulated = self._items(job, done, partial=True)
                extra.update(done=done, timings=timings, **({} if emulated else {"data": data}))
                where = f" ({len(done)} of its {len(job.request_ids)} done: " + (
                    "their timings under timings; emulated devices make no pixels)" if emulated else "under data)")
            raise ApiError(state, f"request {job.id} {state}: " + "; ".join(reasons) + where,
                           retry_after_s=retry, extra=extra)
        data, timings, emulated = self._items(job, range(len(job.request_ids)), partial=False)
        runtime = self.runtime
        body = {"id": job.id, "request_ids": list(job.request_ids), "created": int(job.created_unix_s),
                "model": job.model, "kind": job.kind, "state": state, **job.meta, "data": data, "timings": timings,
                "emulated": emulated, "time_scale": runtime.engine_of(job.model).config.time_scale}
        if emulated:
            body["note"] = "emulated devices take the cost model's time but make no pixels: data is empty"
        return body

    def _items(self, job: Job, indices, partial: bool) -> tuple[list[dict], list[dict], bool]:
        """The data (each item's image or video, or its URL; none on emulated devices) and timings of the
        done items ``indices`` of ``job``, and whether its model is emulated. ``partial``: the job did not
        end done, and these are the items that did: each entry says its ``index``, and one whose result
        is no longer kept is left out of the data (the answer is the job's failure, not ``gone``)."""
        emulated = self.runtime.models[job.model].emulated if job.model in self.runtime.models else False
        data, timings = [], []
        for i in indices:
            rid = job.request_ids[i]
            d = self.item(job, rid)
            timings.append({**({"index": i} if partial else {}),
                            "latency_ms": 1000 * ((d["finish_s"] or 0.0) - d["arrival_s"]), "met_slo": d["met_slo"],
                            "deadline_ms": 1000 * (d["deadline_s"] - d["arrival_s"]), "stages": d["stages"]})
            if emulated:
                continue
            blob = self.engine.result(rid)  # (kept apart from the request's record: --keep-ended may forget that first)
            if blob is None:
                if partial:
                    continue
                raise ApiError("gone", f"the result of request {job.id} is no longer kept")
            item = {"url": f"/v1/requests/{job.id}/result/{i}"} if job.response_format == "url" else \
                {"b64_json": base64.b64encode(blob).decode("ascii")}
            data.append({"index": i, **item} if partial else item)
        return data, timings, emulated

    def result_file(self, job: Job, index: int) -> tuple[bytes, str]:
        """One image (PNG) or video (animated WebP) of a generation, once that item is done (the others
        may have ended otherwise: outside test, an item done before its generation was cancelled was
        answered 409 cancelled, its computed image kept from its client), and its media type."""
        if not 0 <= index < len(job.request_ids):
            raise ApiError("not_found", f"request {job.id} has items 0..{len(job.request_ids) - 1}")
        if self.item(job, job.request_ids[index])["state"] != "done":
            self.result_body(job)  # raises: not finished yet, or how it ended
        # the item is done, and so is the job, if its others have ended: this answer tells the client so, a
        # file or not (outside test 102: a drain waited 5 s for a client reading an emulated item's 409)
        self.answering(job, self.state(job))
        if self.runtime.models[job.model].emulated:
            raise ApiError("no_pixels", "emulated devices make no pixels")
        blob = self.engine.result(job.request_ids[index])
        if blob is None:
            raise ApiError("gone", f"the result of request {job.id} is no longer kept")
        job.told = True
        return blob, "image/png" if job.kind == "image" else "image/webp"

    def cancel(self, job: Job, reason: str = "cancelled by the client") -> int:
        """Cancel every item not yet ended; how many were."""
        return sum(self.engine.cancel(r, reason) for r in job.request_ids)

    async def wait(self, job: Job) -> None:
        await asyncio.gather(*(self._wait_for(job, r) for r in job.request_ids))
        await self.written(job)

    async def written(self, *jobs: Job) -> None:
        """Once the run's journal holds the jobs' requests as they stand (with ``--db``; at once
        without): what a client was answered survives a ``kill -9`` of the server."""
        if self.records is not None:
            await self.records.written([r for job in jobs for r in job.request_ids])

    async def _wait_for(self, job: Job, rid: int) -> None:
        if rid in job.final:
            return
        try:
            await self.engine.wait(rid)
        except KeyError:  # forgotten before the wait began: it has ended
            if rid not in job.final:
                raise
