"""Request traces: our JSON-lines format and the TridentServe paper's released traces.

Our format, one JSON object per line (docs/design.md, "Workloads")::

    {"t": 0.52, "model": "sd3-medium", "height": 1024, "width": 1024, "frames": 1, "steps": 28,
     "prompt": "a cat"}

``t`` (seconds from the start of the run), ``height``, ``width`` and ``steps`` are required;
``model`` is required unless the reader is given ``default_model``; ``frames`` defaults to 1,
``prompt`` to "" (a request replays an empty prompt as one of the
workload's stock prompts, ``core.requests.PROMPTS``: the HTTP API needs one); ``seed``, ``negative_prompt`` and ``guidance`` are optional. Other keys are
errors (a typo should not pass silently).

The paper's traces are one Python-like call per line::

    Request(request_id=12, timestamp=3.5, height=1024, width=1024, num_frames=1,
            prompt='a cat, "quoted"', negative_prompt='', num_inference_steps=28)

They are parsed without ``eval``: ``ast.parse`` of the call, ``ast.literal_eval`` of each keyword
value, so prompts may hold commas and either kind of (escaped) quote. They do not name a model:
a line without ``model=`` needs the reader's ``default_model`` (``--model`` on the command line). Keywords other than
timestamp, height, width, num_frames (default 1), num_inference_steps, prompt, negative_prompt,
seed and model are ignored, except one that reads as a misspelling of one of those (``num_frame``):
that is an error, its value would be lost.

The format is detected per file from its first line that is not blank and not a ``#`` comment;
errors name the file and the line (an entry keeps its line number, ``TraceEntry.line``, for the
errors found later, such as a model the cost profile lacks). Imports only the standard library,
``tridentcore.core`` and :mod:`.bounded`.

Bounds (``core/defaults.py``), checked before any request is built: a file of at most
``MAX_TRACE_BYTES``, at most ``MAX_REQUESTS`` request lines, each a JSON object nested at most
``MAX_NESTING`` deep; ``t`` finite in ``[0, MAX_WORKLOAD_S]``; height and width at most
``MAX_SIDE_PX``, frames ``MAX_FRAMES``, steps ``MAX_STEPS``; prompts ``MAX_PROMPT_CHARS``
characters, model names ``MAX_NAME_CHARS``; seeds in ``0..MAX_SEED``; guidance at most
``MAX_GUIDANCE`` (the HTTP API's bounds, where it has them, are the same names); a prompt that
UTF-8 cannot hold (a lone surrogate) is refused. A trace that is not a regular file (a pipe) is read
once and kept (:func:`read_trace_text`); a trace is written whole or not at all (:func:`write_trace`).

One module of about 500 lines with one job, a trace between its file and its requests: both
formats, their bounds and the errors that name a file's lines are read and written in one place.
"""

from __future__ import annotations

import ast
import difflib
import errno
import io
import json
import os
import random
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tridentcore.core.defaults import (MAX_GUIDANCE, MAX_NAME_CHARS, MAX_PROMPT_CHARS, MAX_REQUESTS, MAX_SEED,
                                       MAX_TRACE_BYTES, MAX_WORKLOAD_S)
from tridentcore.core.errors import TridentError, brief, is_finite, is_name, listed
from tridentcore.core.mix import shape_problems
from tridentcore.core.types import Shape
from tridentcore.core.workload import PROMPTS, RequestSpec, SloFn

from .bounded import InputRefused, load_json, read_bounded

__all__ = [
    "TraceEntry",
    "TraceError",
    "entries_from_requests",
    "format_trace",
    "parse_trace",
    "read_trace",
    "read_trace_text",
    "requests_from_trace",
    "trace_format",
    "trace_span",
    "write_trace",
]

_MAX_LISTED = 50
_JSON_KEYS = ("t", "model", "height", "width", "frames", "steps", "prompt", "seed", "negative_prompt", "guidance")
_PAPER_FIELDS = {
    "timestamp": "t",
    "height": "height",
    "width": "width",
    "num_frames": "frames",
    "num_inference_steps": "steps",
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "seed": "seed",
    "model": "model",
}
_PAPER_IGNORED = ("request_id",)  # the paper's keywords the reader ignores (the order of lines is the trace's)
_PAPER_NAMES = {ours: theirs for theirs, ours in _PAPER_FIELDS.items()}  # a paper line's problems in its own words


class TraceError(TridentError, ValueError):
    """A trace that cannot be used; ``problems`` lists every problem found (``line N: ...``)."""

    def __init__(self, origin: str, problems: Iterable[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        shown = self.problems[:_MAX_LISTED]
        more = len(self.problems) - len(shown)
        if len(self.problems) == 1:
            message = f"{origin}: {self.problems[0]}"
        else:
            message = f"{origin}: {len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in shown)
            if more:
                message += f"\n  ... and {more} more"
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class TraceEntry:
    """One request of a trace: when it arrives (``t``, seconds) and what it asks for."""

    t: float
    model: str
    height: int
    width: int
    frames: int
    steps: int
    prompt: str = ""
    seed: int | None = None
    negative_prompt: str = ""
    guidance: float | None = None
    line: int = field(default=0, compare=False, repr=False)  # the file's line it was read from (0: none)

    def __post_init__(self) -> None:
        problems = [f"{key}: {msg}" for key, msg in _entry_problems(self._fields())]
        if problems:
            raise TraceError("trace entry", problems)

    def _fields(self) -> dict[str, Any]:
        return {
            "t": self.t, "model": self.model, "height": self.height, "width": self.width, "frames": self.frames,
            "steps": self.steps, "prompt": self.prompt, "seed": self.seed, "negative_prompt": self.negative_prompt,
            "guidance": self.guidance,
        }  # fmt: skip

    @property
    def shape(self) -> Shape:
        return Shape(self.height, self.width, self.frames, self.steps)

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines object (optional keys only when set)."""
        out: dict[str, Any] = {
            "t": self.t, "model": self.model, "height": self.height, "width": self.width,
            "frames": self.frames, "steps": self.steps, "prompt": self.prompt,
        }  # fmt: skip
        if self.seed is not None:
            out["seed"] = self.seed
        if self.negative_prompt:
            out["negative_prompt"] = self.negative_prompt
        if self.guidance is not None:
            out["guidance"] = self.guidance
        return out


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _entry_problems(fields: Mapping[str, Any]) -> list[tuple[str, str]]:
    problems = []
    t = fields["t"]
    if not (is_finite(t) and 0 <= t <= MAX_WORKLOAD_S):
        problems.append(("t", f"must be a finite number of seconds in [0, {MAX_WORKLOAD_S:g}] (got {brief(t)})"))
    model = fields["model"]
    if not is_name(model, MAX_NAME_CHARS):
        problems.append(("model", f"must be a model name of 1..{MAX_NAME_CHARS} characters, none of them control "
                                  f"characters (got {brief(model)})"))
    problems.extend(shape_problems(fields))
    for key in ("prompt", "negative_prompt"):
        value = fields[key]
        if not isinstance(value, str):
            problems.append((key, f"must be a string (got {brief(value)})"))
        elif len(value) > MAX_PROMPT_CHARS:
            problems.append((key, f"{len(value)} characters; at most {MAX_PROMPT_CHARS}"))
    for key in ("model", "prompt", "negative_prompt"):
        value = fields[key]
        if isinstance(value, str) and (bad := _lone_surrogate(value)) is not None:
            # JSON's "\ud800" escape (or the paper's '\ud800') reads as a string no UTF-8 can hold:
            # the HTTP API refuses it, a trace written back cannot hold it
            problems.append((key, f"holds a lone surrogate (\\u{ord(value[bad]):04x} at character {bad}), "
                                  "which is not Unicode text"))
    seed = fields["seed"]
    if seed is not None and not (_is_int(seed) and 0 <= seed <= MAX_SEED):
        problems.append(("seed", f"must be an integer in 0..{MAX_SEED} (got {brief(seed)})"))
    guidance = fields["guidance"]
    if guidance is not None and not (is_finite(guidance) and 0 <= guidance <= MAX_GUIDANCE):
        problems.append(("guidance", f"must be a finite number in [0, {MAX_GUIDANCE:g}] (got {brief(guidance)})"))
    return problems


def _lone_surrogate(text: str) -> int | None:
    """The index of the first code point of ``text`` that UTF-8 cannot encode (U+D800..U+DFFF), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _integral(value: Any) -> Any:
    """1024.0 -> 1024 (JSON writers that emit floats); anything else unchanged."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return value


def _entry_from_fields(raw: Mapping[str, Any], default_model: str | None, line: int = 0,
                       names: Mapping[str, str] | None = None) -> TraceEntry | list[str]:
    """A TraceEntry (read from ``line``), or the problems (``field: message``) with ``raw`` (already
    renamed to our keys; ``names``: our keys as the line names them, a paper line's keywords)."""
    problems = []
    name = (lambda k: names.get(k, k)) if names else (lambda k: k)
    missing = [
        name(k) for k in ("t", "model", "height", "width", "steps")
        if k not in raw and not (k == "model" and default_model)
    ]
    if missing:
        hint = " (or give a default model: --model to trident, --trace-model to the Locust file)" if "model" in missing else ""
        problems.append(f"missing {', '.join(missing)}{hint}")
    fields = {
        "t": raw.get("t", 0.0),
        "model": raw.get("model", default_model or "?"),
        "height": _integral(raw.get("height", 1)),
        "width": _integral(raw.get("width", 1)),
        "frames": _integral(raw.get("frames", 1)),
        "steps": _integral(raw.get("steps", 1)),
        "prompt": raw.get("prompt", ""),
        "seed": _integral(raw.get("seed")),
        "negative_prompt": raw.get("negative_prompt", "") if raw.get("negative_prompt") is not None else "",
        "guidance": raw.get("guidance"),
    }
    problems.extend(f"{name(key)}: {msg}" for key, msg in _entry_problems(fields))
    if problems:
        return problems
    if _is_int(fields["t"]) or fields["t"] == 0:
        fields["t"] = float(fields["t"]) + 0.0  # (-0.0 + 0.0 is 0.0: written back as 0.0)
    if _is_int(fields["guidance"]):
        fields["guidance"] = float(fields["guidance"])
    return TraceEntry(**fields, line=line)


def _parse_json_line(text: str) -> dict[str, Any] | str:
    try:
        obj = load_json(text)
    except InputRefused as exc:
        return str(exc).replace(" at line 1 column ", " at column ")
    if not isinstance(obj, dict):
        return f"expected a JSON object (got {type(obj).__name__})"
    return obj


def _parse_paper_line(text: str) -> dict[str, Any] | str:
    """Keywords of one ``Request(...)`` line renamed to our keys, or a problem."""
    text = text.strip()
    if text.endswith(","):
        text = text[:-1].rstrip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        if "max_str_digits" in str(exc.msg):  # (Python's advice on its own limit is no help here)
            return "cannot parse the Request(...) call: an integer of more than 4300 digits"
        return f"cannot parse the Request(...) call: {exc.msg} (column {exc.offset})"
    except (ValueError, RecursionError, MemoryError) as exc:
        why = ("nested too deeply" if isinstance(exc, (RecursionError, MemoryError))
               else "an integer of more than 4300 digits" if "max_str_digits" in str(exc) else str(exc) or "ValueError")
        return f"cannot parse the Request(...) call: {why}"
    call = tree.body
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Request"):
        return "expected a call Request(key=value, ...)"
    if call.args:
        return "Request(...) takes keyword arguments only"
    out: dict[str, Any] = {}
    problems = []
    seen: set[str] = set()
    for keyword in call.keywords:
        if keyword.arg is None:
            problems.append("Request(**...) is not allowed")
            continue
        if keyword.arg in seen:  # (Python itself refuses a call with a keyword given twice)
            problems.append(f"{keyword.arg[:40]}: given twice")
            continue
        seen.add(keyword.arg)
        ours = _PAPER_FIELDS.get(keyword.arg)
        if ours is None:
            # a keyword the reader takes, misspelt: ignored, it lost its value unsaid (outside test 131:
            # num_frame=81 imported a video as one frame); the others (request_id, ...) are ignored
            close = difflib.get_close_matches(keyword.arg, _PAPER_FIELDS, n=1, cutoff=0.8)
            if close and keyword.arg not in _PAPER_IGNORED:
                problems.append(f"{keyword.arg[:40]}: not a keyword this reader takes: did you mean {close[0]}?")
            continue
        try:
            out[ours] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            # the text as written (ast.unparse of a deep expression recursed past Python's limit)
            quoted = (ast.get_source_segment(text, keyword.value) or "")[:60]
            problems.append(f"{keyword.arg[:40]}: not a literal value ({quoted})")
    if problems:
        return "; ".join(problems)
    return out


def _detect(line: str) -> str | None:
    head = line.lstrip()
    if head.startswith("{"):
        return "jsonl"
    if head.startswith("Request("):
        return "paper"
    return None


def parse_trace(text: str, *, origin: str = "<trace>", default_model: str | None = None) -> list[TraceEntry]:
    """Parse a trace held in a string (either format; see the module docstring), in file order."""
    entries: list[TraceEntry] = []
    problems: list[str] = []
    fmt: str | None = None
    fmt_line = 0
    unnamed: list[int] = []  # paper lines without model= (and no default_model)
    unnamed_at = 0
    text = text.removeprefix("\ufeff")  # a byte order mark some editors write first

    def lines():  # one at a time: a file of millions of blank lines is not a list of millions of strings
        return io.StringIO(text, newline=None)

    count = sum(1 for line in lines() if line.strip() and not line.lstrip().startswith("#"))
    if count > MAX_REQUESTS:
        raise TraceError(origin, [f"{count} request lines; a trace has at most {MAX_REQUESTS}"])
    for number, line in enumerate(lines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        kind = _detect(stripped)
        if fmt is None:
            if kind is None:
                raise TraceError(
                    origin,
                    [f"line {number}: unknown trace format: expected JSON lines ({{\"t\": ...}}) "
                     f"or the paper's Request(request_id=..., timestamp=..., ...) lines"],
                )  # fmt: skip
            fmt, fmt_line = kind, number
        if kind != fmt:
            expected = "a JSON object" if fmt == "jsonl" else "a Request(...) line"
            problems.append(f"line {number}: expected {expected} (format detected from line {fmt_line})")
            continue
        raw = _parse_json_line(stripped) if fmt == "jsonl" else _parse_paper_line(stripped)
        if isinstance(raw, str):
            problems.append(f"line {number}: {raw}")
            continue
        if fmt == "paper" and default_model is None and "model" not in raw:
            # (a line that names its model, model='...', needs no default: it was refused all the same)
            if not unnamed:
                problems.append("")  # said once, where the first such line is, with their count (below)
                unnamed_at = len(problems) - 1
            unnamed.append(number)
            continue
        unknown = sorted(k for k in raw if k not in _JSON_KEYS)  # (paper lines are renamed already)
        if unknown:
            problems.append(f"line {number}: unknown key(s) {listed(unknown)}; valid keys: {', '.join(_JSON_KEYS)}")
        result = _entry_from_fields(raw, default_model, number, _PAPER_NAMES if fmt == "paper" else None)
        if isinstance(result, list):
            problems.extend(f"line {number}: {p}" for p in result)
        elif unknown:
            continue
        else:
            entries.append(result)
    if unnamed:
        more = f" (and {len(unnamed) - 1} more line{'s' if len(unnamed) > 2 else ''})" if len(unnamed) > 1 else ""
        problems[unnamed_at] = (f"line {unnamed[0]}: this Request(...) line names no model{more}: the paper's traces do "
                                "not; give one (--model to trident, --trace-model to the Locust file; default_model= "
                                "in Python)")
    if problems:
        raise TraceError(origin, problems)
    return entries


_READ_ONCE: dict[str, str] = {}  # the text of traces that are not regular files, by path (read_trace_text)


def read_trace_text(path: str | os.PathLike[str]) -> str:
    """The text of a trace file, within ``MAX_TRACE_BYTES``. A pipe, a FIFO or a process substitution
    (``<(gunzip -c t.jsonl.gz)``) can be read only once: its text is kept for the rest of this
    process, so every later reader (a bench reads its trace more than once) gets the same."""
    origin = os.fspath(path)
    try:
        regular = stat.S_ISREG(os.stat(origin).st_mode)
    except OSError:
        regular = True  # (read_bounded says why it cannot be read)
    if not regular and origin in _READ_ONCE:
        return _READ_ONCE[origin]
    try:
        text = read_bounded(origin, MAX_TRACE_BYTES)
    except InputRefused as exc:
        raise TraceError(origin, [str(exc)]) from None
    if not regular:
        _READ_ONCE[origin] = text
    return text


def trace_format(text: str) -> str:
    """Which format a trace's text is in, as said to a user: ``JSON lines``, ``paper Request(...)
    lines`` or ``empty``."""
    for line in io.StringIO(text.removeprefix("\ufeff"), newline=None):
        head = line.strip()
        if head and not head.startswith("#"):
            return "paper Request(...) lines" if _detect(head) == "paper" else "JSON lines"
    return "empty"


def read_trace(path: str | os.PathLike[str], default_model: str | None = None) -> list[TraceEntry]:
    """Read a trace file (format detected per file); errors name the file and line."""
    origin = os.fspath(path)
    text = read_trace_text(origin)
    entries = parse_trace(text, origin=origin, default_model=default_model)
    if not entries:
        raise TraceError(origin, ["no request lines (only blank lines and # comments)" if text.strip() else "empty file"])
    return entries


def format_trace(entries: Iterable[TraceEntry]) -> str:
    """JSON lines, one entry per line (non-ASCII prompts kept as written)."""
    return "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in entries)


def write_trace(entries: Iterable[TraceEntry], path: str | os.PathLike[str]) -> Path:
    """Write ``entries`` as JSON lines; returns the path written. The file is replaced whole, once
    written: a failure leaves a file already there as it was. Through a symlink, its target is
    written; anything else that is not a regular file (a device, a pipe) is refused."""
    out = Path(path)
    if out.exists() and not out.is_file():  # (replaced, /dev/null became a file: as root, the machine's)
        raise OSError(errno.EINVAL, "not a regular file", str(out))
    out = Path(os.path.realpath(out))  # a symlink's target is written, the link kept
    text = format_trace(entries)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def trace_span(times: Sequence[float]) -> tuple[float, float]:
    """The seconds from a trace's first arrival to its last (``times``: its arrival times), and its
    mean rate over them (requests after the first per second; 0 with fewer than two requests or one
    instant), as ``trident trace stats`` says them."""
    times = list(times)
    span = max(times, default=0.0) - min(times, default=0.0)
    return span, (len(times) - 1) / span if len(times) >= 2 and span > 0 else 0.0


def entries_from_requests(requests: Iterable[RequestSpec]) -> list[TraceEntry]:
    """Turn generated requests into trace entries (e.g. to replay them with Locust)."""
    return [
        TraceEntry(
            t=float(r.arrival_s),
            model=r.model,
            height=r.shape.height,
            width=r.shape.width,
            frames=r.shape.frames,
            steps=r.shape.steps,
            prompt=r.prompt,
            seed=r.seed,
            negative_prompt=r.negative_prompt,
            guidance=r.guidance,
        )
        for r in requests
    ]


def requests_from_trace(
    entries: Sequence[TraceEntry], slo_fn: SloFn, seed: int, *, start_at_zero: bool = False
) -> list[RequestSpec]:
    """Requests in arrival order (stable sort by ``t``), ids 0, 1, ...; ``arrival_s`` = ``t``
    (minus the first ``t`` when ``start_at_zero``). Entries without a seed get one from
    ``random.Random(seed)``; one draw per entry either way, so a seed in one entry does not
    change the others'. An empty prompt becomes the stock prompt that draw picks (the API refuses an
    empty one; the simulator never reads it). ``slo_s`` = ``slo_fn(model, shape)``."""
    rng = random.Random(seed)
    ordered = sorted(entries, key=lambda e: e.t)
    offset = ordered[0].t if (start_at_zero and ordered) else 0.0
    requests = []
    for index, entry in enumerate(ordered):
        drawn = rng.getrandbits(31)
        shape = entry.shape
        requests.append(
            RequestSpec(
                id=index,
                model=entry.model,
                prompt=entry.prompt or PROMPTS[drawn % len(PROMPTS)],
                shape=shape,
                seed=entry.seed if entry.seed is not None else drawn,
                guidance=entry.guidance,
                slo_s=float(slo_fn(entry.model, shape)),
                arrival_s=entry.t - offset,
                negative_prompt=entry.negative_prompt,
            )
        )
    return requests
