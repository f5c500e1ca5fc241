"""The policy interface and the registry of policies.

A policy is a small class: ``start`` returns the initial placement (applied before the run, as a
deployment would be), ``on_event`` turns one event into actions. Policies keep their own queues
(the order of waiting work is their decision) but never mutate cluster state: they only see a
:class:`~tridentcore.core.state.ClusterView` and answer with actions. A request they hold ends
without an action of theirs only while it waits (``RequestEnded``: cancelled by its client, or failed
by the driver; drop it then, a long-lived driver may forget its record next) or by a cancel while a
stage of it runs (that stage's end says so).

Specs are ``name`` or ``name:key=value,key=value`` (``pipeline-static:degree=2``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from .errors import TridentError, brief, listed
from .events import Action, Event
from .state import ClusterView
from .types import Shape


class PolicyError(TridentError, ValueError):
    """A bad policy spec or option."""


class Policy:
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    # option name -> (type, default, help)
    options: ClassVar[dict[str, tuple[Callable[[str], Any], Any, str]]] = {}
    tick_s: float | None = None  # wake-up period for timer-driven planners (None: events only)

    def __init__(self, **opts: Any) -> None:
        unknown = sorted(set(opts) - set(self.options))
        if unknown:
            valid = ", ".join(self.options) or "none"
            raise PolicyError(f"{self.name}: unknown option(s) {listed(unknown)}; valid options: {valid}")
        self.opts: dict[str, Any] = {}
        for key, (conv, default, _help) in self.options.items():
            if key not in opts:
                self.opts[key] = default
                continue
            raw = opts[key]  # given as text (a spec) or as a value (code): checked alike
            try:
                self.opts[key] = conv(raw)
            except (TypeError, ValueError, OverflowError):
                raise PolicyError(f"{self.name}: option {key}={brief(raw)} is not a valid {conv.__name__}") from None
        self.spec = self.name + "".join(
            (":" if i == 0 else ",") + f"{k}={v}" for i, (k, v) in enumerate(sorted(opts.items()))
        )

    def start(self, view: ClusterView, models: Sequence[str], now: float,
              expected: Mapping[tuple[str, Shape], float] | None = None) -> list[Action]:
        """Initial placement for the models the workload will ask for.

        ``expected`` is the declared mix, ``{(model, shape): share}``, when the driver knows it.
        """
        return []

    def on_event(self, view: ClusterView, event: Event, now: float) -> list[Action]:
        raise NotImplementedError

    def cost_moved(self, view: ClusterView) -> bool:
        """True once after the cost model's calibration moved (answers a policy cached are stale)."""
        version = getattr(view.cost, "version", 0)
        if version == getattr(self, "_cost_version", 0):
            return False
        self._cost_version = version
        return True


POLICIES: dict[str, type[Policy]] = {}


def register(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    name, _, rest = spec.strip().partition(":")
    opts: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise PolicyError(f"bad policy option {brief(item)} in {brief(spec)}; expected key=value")
        if key.strip() in opts:
            raise PolicyError(f"option {key.strip()[:80]} given twice in {brief(spec)}")
        opts[key.strip()] = value.strip()
    return name.strip(), opts


def registered_policies() -> dict[str, type[Policy]]:
    """Every policy by name (the built-in ones registered on first use)."""
    from . import policies  # noqa: F401  (registers the built-in policies)

    return POLICIES


def policy_class(name: str) -> type[Policy]:
    """The policy called ``name``; an unknown name lists the valid ones."""
    cls = registered_policies().get(name)
    if cls is None:
        raise PolicyError(f"unknown policy {brief(name)}; valid policies: {', '.join(sorted(POLICIES))}")
    return cls


def make_policy(spec: str) -> Policy:
    """Build a policy from its spec; an unknown name lists the valid ones."""
    name, opts = parse_spec(spec)
    cls = policy_class(name)
    policy = cls(**opts)
    policy.spec = spec.strip()
    return policy


def with_late(spec: str, late: str) -> str:
    """``spec`` with its late-request mode set to ``late`` (``serve`` or ``reject``).

    A policy without a ``late`` option never turns a request away for being late, so ``serve`` leaves
    its spec as it is and ``reject`` is an error; a spec that already sets another mode is an error."""
    from .defaults import LATE_MODES

    given_late = late
    late = str(late).strip().lower()  # any case, as the policy option takes it
    if late not in LATE_MODES:
        raise PolicyError(f"late mode {brief(given_late)}: expected one of {', '.join(LATE_MODES)}")
    name, opts = parse_spec(spec)
    cls = policy_class(name)
    if "late" not in cls.options:
        if late == "serve":
            return spec
        raise PolicyError(f"{name} has no reject mode: it never turns a request away for being late")
    if "late" in opts or "drop" in opts:
        given = opts.get("late", "").strip().lower() or (
            "reject" if opts.get("drop", "").strip().lower() in ("1", "true", "yes", "on") else "serve")
        if given != late:
            raise PolicyError(f"{brief(spec)} sets late={given[:80]}, but late={late} was asked for")
        return spec
    return spec.strip() + (":" if ":" not in spec else ",") + f"late={late}"


def bare_spec(spec: str) -> str:
    """``trident:`` (no options after the colon) is ``trident``: stored and grouped under one name."""
    return spec[:-1].rstrip() if spec.endswith(":") and spec.count(":") == 1 else spec


def unique_specs(specs: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """``specs`` (bare, :func:`bare_spec`) with each policy once however it is written (``trident``,
    ``trident:late=serve``: the same name and options), its first spelling kept; and the groups of
    spellings given more than once. A spec that does not make a policy is kept as written (its error
    is for its caller to say)."""
    kept: list[str] = []
    groups: dict[object, list[str]] = {}
    for spec in map(bare_spec, specs):
        try:
            policy = make_policy(spec)
            key: object = (policy.name, tuple(sorted(policy.opts.items(), key=str)))
        except PolicyError:
            key = spec
        if key not in groups:
            kept.append(spec)
        groups.setdefault(key, []).append(spec)
    return kept, [group for group in groups.values() if len(group) > 1]


def split_specs(text: str) -> list[str]:
    """Split ``a,b:x=1,y=2,c`` into policy specs (an item with ``=`` belongs to the previous spec)."""
    specs: list[str] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in item and ":" not in item and specs:
            specs[-1] += "," + item
        else:
            specs.append(item)
    return specs
