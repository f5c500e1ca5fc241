"""``core/frozen.quick_init``: the quicker ``__init__`` builds the same instances as the one dataclasses
generates, they stay frozen, and a class it cannot serve is refused."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle

import pytest

from tridentcore.core.events import Dispatch, RequestArrived, StageFinished
from tridentcore.core.frozen import quick_init
from tridentcore.core.records import GpuSample, RequestRow, SpanRow
from tridentcore.core.reports import Completed
from tridentcore.core.types import StageKind


@dataclasses.dataclass(frozen=True, slots=True)
class Plain:
    a: int
    b: tuple[int, ...]
    c: float = 1.5
    d: str | None = None


@quick_init
@dataclasses.dataclass(frozen=True, slots=True)
class Quick:  # Plain with the quicker __init__
    a: int
    b: tuple[int, ...]
    c: float = 1.5
    d: str | None = None


def test_the_same_instances_as_the_generated_init():
    for args, kwargs in [((1, (2, 3)), {}), ((1, (2,), 2.5), {"d": "x"}), ((), {"a": 0, "b": (), "d": "y"})]:
        quick, plain = Quick(*args, **kwargs), Plain(*args, **kwargs)
        assert dataclasses.astuple(quick) == dataclasses.astuple(plain)
        assert repr(quick).removeprefix("Quick") == repr(plain).removeprefix("Plain")
        assert quick == Quick(*args, **kwargs) and hash(quick) == hash(Quick(*args, **kwargs))
        assert pickle.loads(pickle.dumps(quick)) == quick and copy.deepcopy(quick) == quick
        assert dataclasses.replace(quick, a=9).a == 9 and dataclasses.replace(quick, a=9).b == quick.b
    assert list(inspect.signature(Quick).parameters) == list(inspect.signature(Plain).parameters)
    with pytest.raises(TypeError):
        Quick(1)  # a field without default is still required
    with pytest.raises(TypeError):
        Quick(1, (2,), e=3)  # and no unknown field is taken


def test_still_frozen():
    q = Quick(1, (2,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.a = 2
    d = Dispatch(StageKind.DIFFUSE, (1, 2), (0, 1), 0, 28)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.gpus = (3,)


def test_the_classes_built_per_dispatch_use_it_and_keep_their_fields():
    for cls in (Dispatch, RequestArrived, StageFinished, Completed, SpanRow, GpuSample, RequestRow):
        assert cls.__init__.__qualname__ == f"{cls.__qualname__}.__init__"
        names = [f.name for f in dataclasses.fields(cls)]
        assert list(inspect.signature(cls).parameters) == names
    d = Dispatch(StageKind.DIFFUSE, (1, 2), (0, 1), 0, 28)
    assert (d.stage, d.request_ids, d.gpus, d.start_step, d.end_step) == (StageKind.DIFFUSE, (1, 2), (0, 1), 0, 28)
    assert d == Dispatch(StageKind.DIFFUSE, (1, 2), (0, 1), 0, 28) != Dispatch(StageKind.DIFFUSE, (1, 2), (0, 1), 0, 27)


def test_a_class_it_cannot_serve_is_refused():
    @dataclasses.dataclass(frozen=True, slots=True)
    class Posts:
        a: int

        def __post_init__(self):
            pass

    @dataclasses.dataclass(frozen=True, slots=True)
    class Factory:
        a: list = dataclasses.field(default_factory=list)

    @dataclasses.dataclass(slots=True)
    class Thawed:
        a: int

    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class KwOnly:
        a: int = dataclasses.field(kw_only=True)

    for cls, why in [(Posts, "__post_init__"), (Factory, "default_factory"), (Thawed, "frozen, slotted"),
                     (NoSlots, "frozen, slotted"), (KwOnly, "keyword-only")]:
        with pytest.raises(TypeError, match=why):
            quick_init(cls)
