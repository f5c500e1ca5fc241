"""Stage-profile files: load (validated), save, and the shipped profiles.

Format (``docs/profiles.md``): a CSV with the columns of
:data:`~tridentcore.core.types.PROFILE_COLUMNS`, one row per measured point. ``encode`` rows leave
``height``/``width``/``frames`` empty. Loading validates every row and reports every problem at
once in one :class:`ProfileError` naming the file, the line (1-based, the header is line 1) and
the column of each problem.

Shipped profiles live in ``tridentcore/profiles/data/`` (see its README) and are found by name:
every ``*.csv`` there except the reference data in :data:`REFERENCE_FILES`.

About 490 lines, one job (the file format: every column's parsing and bounds, the reference files'
readers, the writer); split, the parsing rules and the bounds they check would live apart.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tridentcore.core.defaults import (MAX_FRAMES, MAX_GPUS_PER_NODE, MAX_PROFILE_BATCH, MAX_PROFILE_BYTES, MAX_SIDE_PX,
                                       MAX_WORKLOAD_S)
from tridentcore.core.errors import TridentError
from tridentcore.core.scaling import ScalingPoint
from tridentcore.core.types import PROFILE_COLUMNS, ProfileRow, StageKind

if TYPE_CHECKING:
    from tridentcore.core.costmodel import CostModel

__all__ = [
    "Profile",
    "ProfileError",
    "REFERENCE_FILES",
    "load_profile",
    "load_published_scaling",
    "measured_dtype",
    "parse_profile",
    "save_profile",
    "shipped_profiles",
    "ulysses_heads",
    "unet_models",
]

log = logging.getLogger(__name__)

_DATA_PACKAGE = "tridentcore.profiles"
_DATA_DIR = "data"
# CSVs in data/ that are reference material, not stage profiles.
REFERENCE_FILES: tuple[str, ...] = ("published_scaling.csv", "denoisers.csv")
PUBLISHED_SCALING_COLUMNS: tuple[str, ...] = (
    "gpu", "model", "height", "width", "frames", "steps", "degree", "total_s", "note", "source",
)  # fmt: skip


SHOWN_PROBLEMS = 20  # problems of a profile said in its error's message (all kept in ``problems``)


class ProfileError(TridentError, ValueError):
    """A profile that cannot be used; ``problems`` lists every problem found."""

    def __init__(self, origin: str, problems: Iterable[str]) -> None:
        self.origin = origin
        self.problems = tuple(problems)
        count = len(self.problems)
        if count == 1:
            message = f"{origin}: {self.problems[0]}"
        else:  # the first few, then how many more (2,000 bad rows made one line of 100,000 characters)
            message = f"{origin}: {count} problems:\n" + "\n".join(f"  {p}" for p in self.shown())
        super().__init__(message)

    def shown(self, most: int = SHOWN_PROBLEMS) -> list[str]:
        """The first ``most`` problems, then "... and N more" when there are more."""
        more = len(self.problems) - most
        return list(self.problems[:most]) + ([f"... and {more} more"] if more > 0 else [])


@dataclass(frozen=True, slots=True)
class Profile:
    """A validated stage profile."""

    name: str
    origin: str  # where it came from: a path, or "shipped profile NAME (...)"
    rows: tuple[ProfileRow, ...]

    def cost_model(self, **kw: Any) -> "CostModel":
        """A :class:`~tridentcore.core.costmodel.CostModel` over these rows (``kw`` passed on); its
        degree-1 models are this profile's UNets (:func:`unet_models`) unless ``degree_one`` is given, and
        its head-bound models those of :func:`ulysses_heads` unless ``heads`` is given."""
        from tridentcore.core.costmodel import CostModel

        kw.setdefault("degree_one", unet_models(self.models()))
        kw.setdefault("heads", ulysses_heads(self.models()))
        return CostModel(self.rows, **kw)

    def gpus(self) -> tuple[str, ...]:
        return tuple(sorted({r.gpu for r in self.rows}))

    def models(self) -> tuple[str, ...]:
        return tuple(sorted({r.model for r in self.rows}))


_DTYPE_SAID = re.compile(r"\bdtype (\w+)")


def measured_dtype(row: ProfileRow) -> str | None:
    """The dtype a row says it was measured in (``trident profile`` writes ``measured (dtype
    bfloat16)`` into ``source``); None where it says none (older and shipped rows)."""
    said = _DTYPE_SAID.search(row.source)
    return said[1] if said else None


# ---------------------------------------------------------------------- shipped data
def _data_dir():  # -> importlib.resources.abc.Traversable
    return resources.files(_DATA_PACKAGE).joinpath(_DATA_DIR)


def shipped_profiles() -> tuple[str, ...]:
    """Names of the profiles shipped in ``tridentcore/profiles/data/`` (``h200``, ``cpu``, ...)."""
    names = [
        entry.name[: -len(".csv")]
        for entry in _data_dir().iterdir()
        if entry.name.endswith(".csv") and entry.name not in REFERENCE_FILES and entry.is_file()
    ]
    return tuple(sorted(names))


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """Load a shipped profile by name (``h200``) or a profile CSV by path, validated."""
    text_name = os.fspath(name_or_path)
    shipped = shipped_profiles()
    if not isinstance(name_or_path, os.PathLike) and text_name in shipped:
        resource = _data_dir().joinpath(f"{text_name}.csv")
        origin = f"shipped profile {text_name} (tridentcore/profiles/data/{text_name}.csv)"
        return parse_profile(resource.read_text(encoding="utf-8"), name=text_name, origin=origin)
    path = Path(text_name)
    if path.is_file():
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_PROFILE_BYTES + 1)
            if len(data) > MAX_PROFILE_BYTES:  # (ours are a few KiB; parsing grows with the rows)
                raise ProfileError(str(path), [f"larger than the limit of {MAX_PROFILE_BYTES} bytes"])
            text = data.decode("utf-8")
        except OSError as exc:
            raise ProfileError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
        except UnicodeDecodeError as exc:  # (said as trace and YAML files say it, not as Python's codec)
            raise ProfileError(str(path), [f"not UTF-8 text (byte {exc.start})"]) from None
        return parse_profile(text, name=path.stem, origin=str(path))
    listed = ", ".join(shipped) if shipped else "(none)"
    if path.exists():  # a folder or a device (/dev/zero): it said "no such file"
        raise ProfileError(text_name, ["not a regular file (give a profile CSV)"])
    if isinstance(name_or_path, os.PathLike) or os.sep in text_name or "/" in text_name or text_name.endswith(".csv"):
        raise ProfileError(text_name, [f"no such file (shipped profiles: {listed})"])
    raise ProfileError(text_name, [f"unknown profile {text_name!r}; shipped profiles: {listed}; or give a path to a CSV file"])


def _denoisers() -> list[dict[str, str]]:
    """The rows of ``data/denoisers.csv`` (model, denoiser, ulysses_heads, note)."""
    text = _data_dir().joinpath("denoisers.csv").read_text(encoding="utf-8")
    return [{k: (v or "").strip() for k, v in row.items()} for row in csv.DictReader(io.StringIO(text))]


def unet_models(models: Iterable[str]) -> frozenset[str]:
    """Which of ``models`` have a UNet denoiser, whose diffuse runs at degree 1 only (no token sequence
    to split): the ``unet`` rows of ``data/denoisers.csv`` (every built-in and profile model is
    listed there; a model it does not name, a pipeline directory say, counts as a transformer, and
    a worker that cannot split it runs it on the dispatch's lead alone)."""
    unets = {row["model"] for row in _denoisers() if row["denoiser"] == "unet"}
    return frozenset(m for m in models if m in unets)


def ulysses_heads(models: Iterable[str]) -> dict[str, int]:
    """The attention heads a sequence-parallel degree of each of ``models`` must divide, where the
    serving kernel bounds it (``pipelines/parallel.py`` splits heads, Ulysses alone): the
    ``ulysses_heads`` column of ``data/denoisers.csv``. A model left empty there (a UNet; the real
    models, which GPUs split with ring x Ulysses past their heads) or not named is not bound."""
    wanted = set(models)
    heads: dict[str, int] = {}
    for row in _denoisers():
        text = row.get("ulysses_heads", "")
        if row["model"] in wanted and text:
            value = int(text)
            if value < 1:
                raise ValueError(f"denoisers.csv: {row['model']}: ulysses_heads must be >= 1 (got {value})")
            heads[row["model"]] = value
    return heads


# ---------------------------------------------------------------------- parsing
def _parse_int(text: str, column: str, problems: list[str], where: str) -> int | None:
    if not re.fullmatch(r"-?[0-9]+", text):  # (Python's int() also took `5_12` and `+2`)
        problems.append(f"{where}, column {column}: not an integer ({text!r})")
        return None
    value = int(text)
    if value < 1:
        problems.append(f"{where}, column {column}: must be >= 1 (got {value})")
        return None
    high, why = _INT_BOUNDS[column]
    if value > high:  # (a side of 10^20 px made a 4096x4096 diffuse look measured, priced at 0.14 s)
        problems.append(f"{where}, column {column}: {value} is above {high} ({why})")
        return None
    return value


_SIDE = (MAX_SIDE_PX, "the largest side any request may ask")
_INT_BOUNDS = {"height": _SIDE, "width": _SIDE, "frames": (MAX_FRAMES, "the most frames any request may ask"),
               "batch": (MAX_PROFILE_BATCH, "the largest batch a profile may price"),
               "degree": (MAX_GPUS_PER_NODE, "the GPUs of one node at most")}


def _parse_float(text: str, column: str, problems: list[str], where: str, *, positive: bool) -> float | None:
    try:
        value = float(text)
    except ValueError:
        problems.append(f"{where}, column {column}: not a number ({text!r})")
        return None
    if not math.isfinite(value):
        problems.append(f"{where}, column {column}: not a finite number ({text!r})")
        return None
    if positive and value <= 0:
        what = "negative" if value < 0 else "zero"
        problems.append(f"{where}, column {column}: {what} value ({text}); must be > 0")
        return None
    if value < 0:
        problems.append(f"{where}, column {column}: negative value ({text}); must be >= 0")
        return None
    low, high = _BOUNDS[column]
    if positive and value < low or value > high:
        # (a latency of 1e10 ms made trident's simulation run for minutes; 1e-320 priced a stage at 0.0 ms)
        problems.append(f"{where}, column {column}: {text} is outside [{low:g}, {high:g}]")
        return None
    return value


# the range of each number column: a stage call of 1 us to a day; memory up to 100,000 GiB
_BOUNDS = {"latency_ms": (1e-3, MAX_WORKLOAD_S * 1000.0), "peak_gib": (0.0, 1e5), "act_gib": (0.0, 1e5),
           "weights_gib": (0.0, 1e5)}


# a peak is rounded in the file as its parts are: a thousandth of a GiB of slack
_MEMORY_SLACK_GIB = 1e-3


def _check_memory(floats: dict[str, float], problems: list[str], where: str) -> None:
    """A call's peak holds its stage's weights and its activations (docs/profiles.md): a peak
    below either is a row whose columns are swapped or mistyped."""
    peak = floats["peak_gib"]
    for column in ("weights_gib", "act_gib"):
        if peak + _MEMORY_SLACK_GIB < floats[column]:
            problems.append(f"{where}, column peak_gib: {peak:g} is below {column} ({floats[column]:g}); "
                            f"the peak includes the weights and the activations")


def parse_profile(text: str, *, name: str = "profile", origin: str = "<string>") -> Profile:
    """Parse and validate profile CSV text; raise one :class:`ProfileError` listing every problem."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_PROFILE_BYTES:  # (as load_profile's: text from elsewhere, an upload, is held to it too)
        raise ProfileError(origin, [f"larger than the limit of {MAX_PROFILE_BYTES} bytes ({size} bytes)"])
    problems: list[str] = []
    # a byte order mark some editors write first (it read as part of the first column's name)
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise ProfileError(origin, [f"empty file (expected the header: {','.join(PROFILE_COLUMNS)})"]) from None
    header = [h.strip() for h in header]
    missing = [c for c in PROFILE_COLUMNS if c not in header]
    unknown = [c for c in header if c not in PROFILE_COLUMNS]
    duplicated = sorted({c for c in header if header.count(c) > 1})
    for column in missing:
        problems.append(f"line 1, column {column}: missing from the header")
    for column in unknown:
        problems.append(f"line 1, column {column!r}: unknown column (expected: {','.join(PROFILE_COLUMNS)})")
    for column in duplicated:
        problems.append(f"line 1, column {column}: appears more than once in the header")
    index = {c: header.index(c) for c in PROFILE_COLUMNS if c in header}

    rows: list[ProfileRow] = []
    seen: dict[tuple, int] = {}
    data_lines = 0
    for fields in reader:
        line = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        data_lines += 1
        where = f"line {line}"
        if len(fields) != len(header):
            problems.append(f"{where}: expected {len(header)} fields, got {len(fields)}")
            continue
        cell = {c: fields[i].strip() for c, i in index.items()}
        before = len(problems)

        for column in ("gpu", "model"):
            if column in cell and not cell[column]:
                problems.append(f"{where}, column {column}: empty")
        stage: StageKind | None = None
        if "stage" in cell:
            try:
                stage = StageKind.parse(cell["stage"])
            except ValueError:
                valid = ", ".join(s.value for s in StageKind)
                problems.append(f"{where}, column stage: unknown stage {cell['stage']!r} (valid: {valid})")

        dims: dict[str, int | None] = {}
        for column in ("height", "width", "frames"):
            if column not in cell:
                continue
            raw = cell[column]
            if stage is StageKind.ENCODE:
                if raw:
                    problems.append(f"{where}, column {column}: encode rows have no shape; leave it empty (got {raw!r})")
                dims[column] = None
            elif stage is not None:
                if not raw:
                    problems.append(f"{where}, column {column}: {stage.value} rows need a shape (the cell is empty)")
                    dims[column] = None
                else:
                    dims[column] = _parse_int(raw, column, problems, where)

        ints = {c: _parse_int(cell[c], c, problems, where) for c in ("batch", "degree") if c in cell}
        floats = {
            c: _parse_float(cell[c], c, problems, where, positive=(c == "latency_ms"))
            for c in ("latency_ms", "peak_gib", "act_gib", "weights_gib")
            if c in cell
        }
        if "source" in cell and not cell["source"]:
            problems.append(f"{where}, column source: empty (write 'measured' or why the row was derived)")

        if len(problems) == before and not missing:
            _check_memory(floats, problems, where)  # type: ignore[arg-type]
        if len(problems) > before or missing or stage is None:
            continue
        row = ProfileRow(
            gpu=cell["gpu"],
            model=cell["model"],
            stage=stage,
            height=dims["height"],
            width=dims["width"],
            frames=dims["frames"],
            batch=ints["batch"],  # type: ignore[arg-type]
            degree=ints["degree"],  # type: ignore[arg-type]
            latency_ms=floats["latency_ms"],  # type: ignore[arg-type]
            peak_gib=floats["peak_gib"],  # type: ignore[arg-type]
            act_gib=floats["act_gib"],  # type: ignore[arg-type]
            weights_gib=floats["weights_gib"],  # type: ignore[arg-type]
            source=cell["source"],
        )
        key = (row.gpu, row.model, row.stage, row.height, row.width, row.frames, row.batch, row.degree)
        if key in seen:
            problems.append(
                f"{where}: duplicate of line {seen[key]} (same gpu, model, stage, height, width, frames, batch, degree)"
            )
            continue
        seen[key] = line
        rows.append(row)

    if data_lines == 0 and not missing:
        problems.append("no data rows")
    if problems:
        raise ProfileError(origin, problems)
    log.debug("loaded profile %s from %s: %d rows", name, origin, len(rows))
    return Profile(name=name, origin=origin, rows=tuple(rows))


# ---------------------------------------------------------------------- writing
def _format_number(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def format_profile(rows: Iterable[ProfileRow]) -> str:
    """The CSV text of ``rows`` in the exact profile format (header included)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PROFILE_COLUMNS)
    for row in rows:
        encode = StageKind.parse(row.stage) is StageKind.ENCODE
        writer.writerow(
            [
                row.gpu,
                row.model,
                StageKind.parse(row.stage).value,
                "" if encode or row.height is None else row.height,
                "" if encode or row.width is None else row.width,
                "" if encode or row.frames is None else row.frames,
                row.batch,
                row.degree,
                _format_number(row.latency_ms),
                _format_number(row.peak_gib),
                _format_number(row.act_gib),
                _format_number(row.weights_gib),
                row.source,
            ]
        )
    return out.getvalue()


def save_profile(rows: Iterable[ProfileRow], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` as a profile CSV at ``path`` (columns in :data:`PROFILE_COLUMNS` order)."""
    target = Path(path)
    target.write_text(format_profile(rows), encoding="utf-8")
    return target


# ---------------------------------------------------------------------- published scaling data
def _scaling_variant(note: str) -> str:
    """The software setup of a published row, without its parallelism words.

    ``"Ulysses-2 torch.compile"`` and ``"torch.compile"`` are the same setup at degree 2 and 1;
    ``"PyTorch eager"`` and ``"Ulysses-2 eager"`` likewise.
    """
    words = [w for w in note.split() if not (w.startswith("Ulysses") or w in ("SP", "PyTorch"))]
    return " ".join(words)


def parse_published_scaling(text: str, *, origin: str = "<string>") -> tuple[ScalingPoint, ...]:
    """Published multi-GPU timings as ratios ``total_s(degree) / total_s(1)`` of the same setup.

    Rows are grouped by (gpu, model, shape, steps, setup), where the setup is the ``note`` without
    its parallelism words; each group needs exactly one degree-1 row. Degree-1 rows themselves are
    returned too (ratio 1.0) so callers can choose to skip them.
    """
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in PUBLISHED_SCALING_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ProfileError(origin, [f"line 1, column {c}: missing from the header" for c in missing])
    problems: list[str] = []
    groups: dict[tuple, list[tuple[int, dict[str, str]]]] = {}
    for record in reader:
        line = reader.line_num
        try:
            key = (
                record["gpu"],
                record["model"],
                int(record["height"]),
                int(record["width"]),
                int(record["frames"]),
                int(record["steps"]),
                _scaling_variant(record["note"]),
            )
            int(record["degree"])
            float(record["total_s"])
        except (TypeError, ValueError) as exc:
            problems.append(f"line {line}: {exc}")
            continue
        groups.setdefault(key, []).append((line, record))
    points: list[ScalingPoint] = []
    for key, members in groups.items():
        base = [rec for _, rec in members if int(rec["degree"]) == 1]
        if len(base) != 1:
            lines = ", ".join(str(line) for line, _ in members)
            problems.append(f"lines {lines}: need exactly one degree-1 row for {key}, found {len(base)}")
            continue
        base_s = float(base[0]["total_s"])
        gpu, model, height, width, frames, _, _ = key
        for _, rec in members:
            points.append(
                ScalingPoint(
                    gpu=gpu,
                    model=model,
                    height=height,
                    width=width,
                    frames=frames,
                    degree=int(rec["degree"]),
                    ratio=float(rec["total_s"]) / base_s,
                    note=rec["note"],
                )
            )
    if problems:
        raise ProfileError(origin, problems)
    return tuple(points)


def load_published_scaling(path: str | os.PathLike[str] | None = None) -> tuple[ScalingPoint, ...]:
    """The shipped ``published_scaling.csv`` (or ``path``) as :class:`ScalingPoint` ratios."""
    if path is None:
        text = _data_dir().joinpath("published_scaling.csv").read_text(encoding="utf-8")
        return parse_published_scaling(text, origin="tridentcore/profiles/data/published_scaling.csv")
    return parse_published_scaling(Path(path).read_text(encoding="utf-8"), origin=os.fspath(path))
