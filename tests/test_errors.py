"""One root for the project's errors: every error raised on purpose is a ``TridentError`` and
keeps the builtin base callers already catch."""

from __future__ import annotations

import pytest

from tridentcore.bench.live import LiveBenchError
from tridentcore.bench.runs import RunConfigError
from tridentcore.bench.spec import RunSpecError
from tridentcore.core.cluster import ClusterError
from tridentcore.core.costmodel import CostModelError
from tridentcore.core.driver import PolicyBug
from tridentcore.core.errors import SpecError, TridentError, WorkloadError
from tridentcore.core.lifecycle import TransitionError
from tridentcore.core.policy import PolicyError
from tridentcore.core.workload import WorkloadError as WorkloadErrorReexported
from tridentcore.formats.traces import TraceError
from tridentcore.profiles.format import ProfileError
from tridentcore.store import DuplicateRunError, RowsError, SchemaVersionError, StoreError, UnknownRunError

ERRORS = [
    (SpecError, ValueError),
    (WorkloadError, ValueError),
    (ClusterError, ValueError),
    (CostModelError, LookupError),
    (TransitionError, RuntimeError),
    (ProfileError, ValueError),
    (RunConfigError, ValueError),
    (DuplicateRunError, ValueError),
    (UnknownRunError, KeyError),
    (SchemaVersionError, RuntimeError),
    (RowsError, ValueError),
    (RunSpecError, ValueError),
    (TraceError, ValueError),
    (PolicyBug, RuntimeError),
    (PolicyError, ValueError),
    (LiveBenchError, RuntimeError),
]


@pytest.mark.parametrize(("error", "builtin"), ERRORS, ids=lambda e: getattr(e, "__name__", str(e)))
def test_project_errors_share_one_root_and_keep_their_builtin_base(error, builtin):
    assert issubclass(error, TridentError) and issubclass(error, builtin)


def test_store_errors_have_their_own_base():
    assert all(issubclass(e, StoreError) for e in (DuplicateRunError, UnknownRunError, RowsError, SchemaVersionError))


def test_the_workload_module_re_exports_the_same_class():
    assert WorkloadErrorReexported is WorkloadError


def test_server_and_runtime_errors_too():
    pytest.importorskip("fastapi")
    from tridentcore.runtime.build import SetupError
    from tridentcore.server.errors import ApiError
    from tridentcore.bench.launch import LaunchError

    assert issubclass(SetupError, TridentError) and issubclass(SetupError, ValueError)
    assert issubclass(LaunchError, TridentError) and issubclass(LaunchError, RuntimeError)
    assert issubclass(ApiError, TridentError)
