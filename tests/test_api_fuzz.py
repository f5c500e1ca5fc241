"""The whole HTTP API under a schema-driven fuzzer (schemathesis), as ``st run`` runs it: every
operation of the OpenAPI document through the examples, coverage (boundary and negative values),
fuzzing and stateful phases, at a fixed seed and budget. No answer may be a 5xx, and every answer
must be one the document declares (status, content type, body schema, headers); invalid input must
be refused with a 4xx; a 405 must list the path's methods.

The app runs in-process (ASGI, with its lifespan) on emulated devices with zero-cost stages, so a
generation answers at once. Two of schemathesis's checks do not apply to this API, by design:

* ``positive_data_acceptance`` (schema-valid input must succeed): the schema declares the limits of
  every served model together (sizes up to 4096, frames up to 129); one model's own (a multiple of
  16, ``k*4+1`` frames, the sizes its profile can price) are checked after the schema, as a 422
  naming the field, and no JSON Schema can say "a multiple of 16 between 128 and 2048".
* ``use_after_free``: ``DELETE /v1/requests/{id}`` cancels a request; the request stays readable
  (state ``cancelled``) like every ended one.

The policy is ``pipeline-static``: what is under test is the API, not a policy's timing.
"""

from __future__ import annotations

import collections
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")

from schemathesis.engine import events, from_schema  # noqa: E402
from schemathesis.python import asgi  # noqa: E402

from tridentcore.runtime.build import build_runtime  # noqa: E402
from tridentcore.server.app import ServerConfig, create_app  # noqa: E402

SEED = 20240612
KEY = "fuzz-key-0123456789"
MAX_EXAMPLES = 25  # random cases per operation in the fuzzing phase; the other phases add their own
NOT_APPLICABLE = ["positive_data_acceptance", "use_after_free"]


def _run(schema) -> tuple[dict[tuple, list[str]], collections.Counter, int]:
    """Run every phase; the failures (by operation, check and kind: reproductions as curl), the
    answers by status, and how many cases ran."""
    failures: dict[tuple, list[str]] = collections.defaultdict(list)
    statuses: collections.Counter = collections.Counter()
    cases = 0
    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            cases += len(recorder.cases)
            for interaction in recorder.interactions.values():
                if interaction.response is not None:
                    statuses[interaction.response.status_code] += 1
            for checks in recorder.checks.values():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        key = (event.label or event.phase.value, check.name, failure.title)
                        failures[key].append(check.failure_info.code_sample)
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            failures[("engine", type(event).__name__, "")].append(str(getattr(event, "info", event)))
        elif isinstance(event, events.EngineFinished):
            failures.update({("run", "after_run", f.title): [str(f.message)] for f in event.failures})
    return failures, statuses, cases


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
def test_api_answers_as_documented_never_5xx_under_a_schema_driven_fuzzer(keyed):
    """Open: the whole API. Keyed (``--api-key``): the document declares the 401 of every route but
    /healthz, and a client with the key gets the same answers as on an open server."""
    runtime = build_runtime("sd3-medium,wan2.1-1.3b", "emulated:1x4xH200", "pipeline-static", time_scale=0.0)
    app = create_app(runtime, ServerConfig(api_key=KEY) if keyed else ServerConfig())
    t0 = time.monotonic()
    try:
        kwargs = {"headers": {"Authorization": f"Bearer {KEY}"}} if keyed else {}
        schema = schemathesis.openapi.from_asgi("/openapi.json", app, **kwargs)  # starts the app's lifespan
        schema.config.seed = SEED
        schema.config.update(workers=1, request_timeout=20, **kwargs)
        schema.config.generation.update(max_examples=MAX_EXAMPLES if not keyed else 5, deterministic=True,
                                        database="none")
        schema.config.checks.update(excluded_check_names=NOT_APPLICABLE, max_response_time=10.0)
        failures, statuses, cases = _run(schema)
        doc = schema.raw_schema
    finally:
        asgi.shutdown_lifespans()  # drains and stops the runtime
    elapsed_s = time.monotonic() - t0
    report = "\n".join(f"{op} {check}: {title} x{len(samples)}\n    {samples[0][:600]}"
                       for (op, check, title), samples in failures.items())
    assert not failures, f"{cases} cases in {elapsed_s:.0f} s:\n{report}"
    assert not any(s >= 500 for s in statuses)
    if keyed:
        declared = {path: all("401" in op["responses"] for op in ops.values()) for path, ops in doc["paths"].items()}
        assert declared.pop("/healthz") is False and all(declared.values()), declared
        assert cases > 50 and statuses[200] > 5, (cases, statuses)  # (its negative cases drop the key: 401)
        return
    # the budget reached the engine, not only the validation: generations were accepted and answered
    assert cases > 300 and statuses[200] > 20 and statuses[202] > 5 and statuses[422] > 50, (cases, statuses)
