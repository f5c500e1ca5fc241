"""What the ``trident`` commands share: logging, one-line errors, tables, option help and defaults.

The command modules (``models``, ``sim``, ``serve``, ``bench``, ``runs``, ``trace``) import from
here and never from each other (``[tool.importlinter]`` checks it). Errors are one line,
``error: …``, exit status 2.

One module of about 460 lines with one job, what the commands share: its parts (errors, tables, the
checks of output files and databases, the shared options) are each small, and splitting them would
only spread the commands' imports.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated, Any

import typer

from ..core.defaults import DEFAULT_DB, DEFAULT_MIX, DEFAULT_NOISE_SIGMA, DEFAULT_POLICIES, MAX_SCALE, MAX_SEED
from ..core.errors import one_line
from ..core.metrics import finite

__all__ = ["HELP_MARKUP", "check_out", "refuse_mix_options_with_trace", "BiasOpt", "NoiseDbOpt", "NoiseFromOpt", "NoiseOpt", "fitted_noise", "given", "parse_bias", "ArrivalOpt", "ClusterOpt", "DurationOpt", "MixOpt", "ModelOpt", "PoliciesOpt", "ProfileOpt", "RateOpt",
           "SeedOpt", "SloScaleOpt", "ARRIVAL_HELP", "CLUSTER_HELP", "DB_HELP", "DEFAULT_DB", "DEFAULT_POLICIES_TEXT", "EXIT_INTERRUPTED", "MIX_HELP", "POLICIES_HELP",
           "ceiling_lines", "check_db", "db_message", "delta", "drop_if_unused", "fail", "finite", "fmt", "printable", "json_safe", "load_workload", "message", "note_running", "one_line",
           "policy_specs", "quiet_libraries", "setup_logging", "store_errors", "table", "value"]

EXIT_INTERRUPTED = 130
# Help as plain click text, for every Typer of the app: wrapped to the terminal (80 columns too) with
# defaults written out in full and flags shown as flags. Typer's rich panels cut long defaults with
# "…" and list a flag as `--json <bool>`.
HELP_MARKUP = None
DB_HELP = "DuckDB results file."
POLICIES_HELP = "Comma list of policy specs, options as name:key=value (pipeline-static:degree=2)."
DEFAULT_POLICIES_TEXT = ",".join(DEFAULT_POLICIES)
MIX_HELP = (f"Named mix (flux-uniform, sd3-mixed, video-wan, image-video, tiny), NAME:models=A+B, or YAML "
            f"(default {DEFAULT_MIX}).")
CLUSTER_HELP = "NODESxGPUSxKIND (2x8xH200), GPUSxKIND (2xcpu: two CPU workers), or a YAML file."
ARRIVAL_HELP = "poisson | gamma:cv=K | constant | bursts:size=N"

# The workload options every simulating command takes (``name: Opt = DEFAULT_...`` in a signature).
ProfileOpt = Annotated[str, typer.Option(help="Shipped profile name or CSV path (not given with --cluster not given "
                                               "either: the shipped pair that prices the mix, cpu on 2xcpu for tiny).")]
ClusterOpt = Annotated[str, typer.Option(help=CLUSTER_HELP)]
MixOpt = Annotated[str | None, typer.Option(help=MIX_HELP)]
ModelOpt = Annotated[str | None, typer.Option(help="Model the paper-format trace is for.")]
ArrivalOpt = Annotated[str, typer.Option(help=ARRIVAL_HELP)]
RateOpt = Annotated[float, typer.Option(help="Requests per second (mixes), > 0.")]
DurationOpt = Annotated[float, typer.Option(min=1.0, help="Seconds of arrivals.")]
SloScaleOpt = Annotated[float, typer.Option(min=0.1, max=MAX_SCALE,
                                             help="Deadline = arrival + scale x reference latency.")]
SeedOpt = Annotated[int, typer.Option(min=0, max=MAX_SEED, help="Same seed, same requests (0..2^31-1).")]
PoliciesOpt = Annotated[str, typer.Option(help=POLICIES_HELP)]
NoiseOpt = Annotated[float, typer.Option("--noise", help="Stage times stray from the cost model's predictions: each "
                                                          "dispatch takes prediction x a lognormal factor of mean 1 "
                                                          "and this log-spread, within [0, 2] (0: exactly as predicted).")]
BiasOpt = Annotated[str | None, typer.Option("--bias", help="STAGE=F[,STAGE=F]: the mean factor of a stage's actual "
                                                            "time over its prediction (decode=1.5).")]
NoiseFromOpt = Annotated[str | None, typer.Option(
    "--noise-from", metavar="RUN", help="Fit --noise and --bias to a stored live run on real devices: its completed "
                                        "dispatches' compute times against the predictions of the profile the simulation "
                                        "prices with (the run's own where that one does not price them).")]
NoiseDbOpt = Annotated[str | None, typer.Option(
    "--noise-db", help=f"--noise-from: the DuckDB results file (default: --db if given, else {DEFAULT_DB}).")]


def setup_logging(verbose: bool) -> None:
    """Warnings (``-v``: everything) on stderr, each with its local time: a server's log read days later
    says when a store stayed locked or a journal could not be written (outside test: no time at all)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def fail(text: str, code: int = 2) -> None:
    """Print ``error: TEXT`` on one line (a multi-problem message joined by :func:`one_line`) and exit."""
    typer.secho(f"error: {one_line(text)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def quiet_libraries() -> None:
    """transformers warns about optional image backends we never use; keep the CLI's output clean."""
    import os

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def message(exc: BaseException) -> str:
    """The text of an exception (a KeyError's ``str`` would quote it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


# ------------------------------------------------------------------------------ tables
_CONTROLS = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7f, 0xa0))}


def printable(text: str) -> str:
    """``text`` with control characters written as ``\\xNN``: a stored value (a file's path, a SQL
    result) never moves the cursor, retitles the terminal or breaks a table's lines (outside test:
    a mix path holding ``ESC ] 0 ; ... BEL``, echoed raw by ``runs list``)."""
    return text.translate(_CONTROLS)


def fmt(v: Any, key: str) -> str:
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return "-"
        if key.endswith("goodput_rps"):  # rounded down: a goodput rounded up read as a rate that falls short
            return f"{math.floor(v * 1000.0) / 1000.0:.3f}"  # (outside test 116: 4.7153 printed 4.72)
        if key == "rate_rps" and 0 < abs(v) < 0.1:  # three significant digits (outside test 135: 0.00635 read 0.01)
            return f"{v:.3g}"
        return f"{v:.3f}" if key == "attainment" else f"{v:.2f}"
    return printable(str(v))


def table(rows: list[dict], columns, *, none_as_dash: bool = False) -> str:
    """Aligned text columns; ``none_as_dash``: None cells (SQL NULL) print as ``-`` and an empty
    table as ``(none)``."""
    if none_as_dash:
        if not rows:
            return "  (none)"
        rows = [{c: (math.nan if r.get(c) is None else r.get(c)) for c in columns} for r in rows]
    cells = [[fmt(r.get(c), c) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    for row in cells:
        lines.append("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def json_safe(row: dict) -> dict:
    return {k: finite(v) if isinstance(v, float) else v for k, v in row.items()}


def value(v: Any, key: str = "") -> str:
    return "-" if v is None else fmt(v, key)


def delta(a: Any, b: Any, key: str) -> str:
    if a is None or b is None or isinstance(a, str):
        return "-"
    d = b - a
    if isinstance(d, float) and (math.isnan(d) or math.isinf(d)):
        return "-"
    text = value(d, key)
    return text if text.startswith("-") else f"+{text}"


# ------------------------------------------------------------------------------ store errors
def store_errors():
    """Exceptions of a store read that become ``error: …`` lines."""
    import duckdb

    from ..store import NotADatabaseError, SchemaVersionError, UnknownRunError

    return (FileNotFoundError, IsADirectoryError, NotADatabaseError, UnknownRunError, SchemaVersionError, duckdb.Error)


def write_errors():
    """Exceptions of a run's store that fail it part way (a disk that filled, a lock held past the wait):
    :func:`store_failed` says them."""
    import duckdb

    from ..store import StoreError

    return (duckdb.Error, StoreError)


def store_failed(exc: BaseException, db: str, run_id: str, stored: list[str], total: int) -> None:
    """``error: …`` (exit status 2) for a run ``run_id`` that could not be stored in ``db``, naming the
    runs stored before it (outside test 100: a disk that filled between two runs gave a DuckDB traceback,
    and no word of which runs were in)."""
    many = "run" if len(stored) == 1 else "runs"
    fail(f"could not store run {run_id} in {db}: {one_line(db_message(exc, db))}; {len(stored)} {many} of {total} "
         f"stored" + (": " + ", ".join(stored) if stored else ""))


def check_db(db: str) -> None:
    """``--db`` checked before any run is spent on it: opened for writing once (created if new) and
    closed; a path that cannot take a run (a folder, another kind of file, a read-only place, a lock
    held past the wait) is one line, ``error: …``, exit status 2."""
    import duckdb

    from ..core.defaults import DEFAULT_DB_WAIT_S
    from ..store import NotADatabaseError, ResultsStore, SchemaVersionError
    from ..store.errors import damaged

    try:
        ResultsStore(db, lock_wait_s=DEFAULT_DB_WAIT_S).check()
    except NotADatabaseError as exc:  # a JSON, CSV or text file: never written over
        fail(f"--db {db}: cannot store runs there: {exc.reason}")
    except (duckdb.Error, OSError, SchemaVersionError) as exc:  # (a newer schema: outside test, a traceback)
        said = damaged(exc)
        if said is not None:  # (outside test 132: DuckDB's "Corrupt database file ..." from a bench)
            fail(f"--db {db}: {said}")
        fail(f"--db {db}: cannot store runs there: {message(exc)}")


def check_out(path: str, flag: str = "--out", dash: bool = False) -> None:
    """An output file checked before the work that fills it: its folder made (as the other commands
    do), then opened for appending once (an empty file it created is removed again); a folder, a
    read-only place or a path that cannot be made is one line, ``error: …``, exit status 2; so is a
    pipe or a device (``dash``: the command writes standard output for ``-``, and says so)."""
    import os
    from pathlib import Path

    if path == "-" and not dash:  # (outside test 99: `profile --out -` wrote a file named "-")
        fail(f"{flag} -: this command writes a file, not standard output; give a file's path")
    out = Path(path)
    try:
        if out.is_dir() or path.endswith(("/", os.sep)):  # (outside test 131: `od/` made a file named od)
            fail(f"{flag} {path}: is a folder, not a file" if out.is_dir() else
                 f"{flag} {path}: ends in '/', a folder's name; give a file's path")
        if out.exists() and not out.is_file():  # a pipe or a device: opened, it waited for a reader for ever
            fail(f"{flag} {path}: not a regular file (give a file's path{', or - for standard output' if dash else ''})")
        existed = out.exists()
        if existed and _is_duckdb(out):  # (outside test 131: a trace written over a results database, every run lost)
            fail(f"{flag} {path}: is a DuckDB database (a results store?): not written over; give another file")
        if out.suffix.lower() == ".duckdb":  # (outside test 132: over one whose header was damaged, or a new one
            fail(f"{flag} {path}: a .duckdb name is a results database's; this writes text: give another name")
    except OSError as exc:  # a name too long for the file system, say
        fail(f"{flag} {path}: cannot be written ({exc.strerror or exc})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a"):
            pass
    except (FileExistsError, NotADirectoryError):  # (a file where a folder of the path should be: "File exists")
        fail(f"{flag} {path}: cannot be written (a file stands where the path needs a folder)")
    except OSError as exc:
        fail(f"{flag} {path}: cannot be written ({exc.strerror or exc})")
    if not existed:
        os.unlink(out)


def _is_duckdb(path) -> bool:
    """Whether ``path`` (an existing file) is a DuckDB database: its header says so."""
    from ..store import NotADatabaseError
    from ..store.connection import check_header

    try:
        check_header(path)
    except NotADatabaseError:
        return False
    return True


def check_folder(path: str, flag: str, what: str) -> None:
    """An output folder checked before the work that fills it: made if missing (as output files' folders
    are); a file there, a place it cannot be made or a folder this user cannot write is one line,
    ``error: …``, exit status 2 (``bench --keep FILE`` failed its first run with "[Errno 20] Not a
    directory" after its server had started)."""
    import os
    from pathlib import Path

    folder = Path(path)
    try:
        if folder.exists() and not folder.is_dir():
            fail(f"{flag} {path}: is a file: give a folder (made if missing) for {what}")
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{flag} {path}: cannot be made ({exc.strerror or exc})")
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"{flag} {path}: cannot be written (no permission)")


def db_message(exc: BaseException, db: str, flag: str = "--db") -> str:
    """A store read's error as its line; ``flag``: the option that named ``db`` ("": none did), which
    a file that is not a DuckDB database is named with."""
    from ..store import NotADatabaseError
    from ..store.errors import DAMAGED_ADVICE, DamagedDatabaseError, damage

    if isinstance(exc, NotADatabaseError):
        return f"{flag} {db}: {exc.reason}".lstrip()
    what = damage(exc)
    if what is not None:  # (outside test 131: DuckDB's "Corrupt database file: computed checksum ...", no file named)
        duck = "" if isinstance(exc, DamagedDatabaseError) else f"; DuckDB: {one_line(message(exc))[:160]}"
        return f"{flag} {db}: the database file is damaged ({what}{duck}): {DAMAGED_ADVICE}".lstrip()
    text = message(exc)
    if isinstance(exc, FileNotFoundError) and "no results database" in text:
        text += " (runs are written there by `trident bench --db` or `trident simulate --db`)"
    return text


# ------------------------------------------------------------------------------ specs
def parse_bias(text: str | None) -> tuple[tuple[str, float], ...]:
    """``--bias decode=1.5,encode=2`` as (stage, factor) pairs (checked further by the run spec)."""
    pairs = []
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        stage, eq, factor = item.partition("=")
        try:
            pairs.append((stage.strip(), float(factor)))
        except ValueError:
            fail(f"--bias {item!r}: expected STAGE=FACTOR (decode=1.5)")
        if not eq:
            fail(f"--bias {item!r}: expected STAGE=FACTOR (decode=1.5)")
        if [s for s, _ in pairs].count(pairs[-1][0]) > 1:
            fail(f"--bias: stage {pairs[-1][0]!r} given twice")
    return tuple(pairs)


def fitted_noise(run_id: str | None, db: str | None, noise: float, bias: str | None, *, err: bool = False,
                 profile: str | None = None):
    """``--noise`` and ``--bias``, or (``--noise-from RUN``) the noise fitted to that stored live run,
    printed (to stderr when ``err``: the command prints JSON). Returns (sigma, bias text or pairs).

    Fitted against ``profile``, the one the simulation prices with, where it prices the run's
    dispatches: the biases then scale that profile to the run (outside test 120: fitted against the
    run's own profile and multiplied onto a profile folded from the run, its times were counted twice,
    attainment 0.50 against the run's 0.78); else against the run's own profile, and said."""
    if run_id is None:
        return noise, bias
    if noise != DEFAULT_NOISE_SIGMA or bias:
        fail("give --noise/--bias or --noise-from, not both")
    from ..bench.fold import fit_run_noise
    from ..bench.runs import resolve_run

    db = db or DEFAULT_DB
    note = ""
    try:
        run_id = resolve_run(db, run_id)  # a unique prefix too, as the runs commands take (outside test)
        if profile is not None:
            from ..profiles import load_profile

            load_profile(profile)  # (one that cannot be read is the error, not a reason to fit against another)
        try:
            fit = fit_run_noise(db, run_id, profile)
        except (ValueError, LookupError):
            if profile is None:
                raise
            fit = fit_run_noise(db, run_id)
            note = f" (profile {profile} does not price the run's dispatches)"
    except (ValueError, LookupError, *store_errors()) as exc:
        fail(db_message(exc, db, flag=""))
    typer.echo(f"stage-time noise fitted to run {run_id} ({fit.total} dispatches) against profile "
               f"{fit.against}{note}: {fit.describe()}", err=err)
    return round(fit.sigma, 4), tuple((s, round(b, 4)) for s, b in fit.bias)


def given(ctx: typer.Context, name: str, value):
    """``value`` if the option ``name`` was given on the command line (or by its environment), else None."""
    return None if getattr(ctx.get_parameter_source(name), "name", "DEFAULT") == "DEFAULT" else value


def refuse_mix_options_with_trace(ctx: typer.Context, trace: str | None) -> None:
    """A trace sets the times and the requests: --rate, --duration and --arrival given with it would be
    ignored, so they are refused (one line, exit 2); so is --model without a trace."""
    if trace is None:
        if "model" in ctx.params and given(ctx, "model", True):  # (outside test 102: ignored without a word)
            fail("--model names the model of a paper-format trace's requests (with --trace); a mix names its own "
                 "models: drop it")
        return
    named = [f"--{n}" for n in ("rate", "duration", "arrival") if n in ctx.params and given(ctx, n, True)]
    if named:
        fail(f"{', '.join(named)} do{'es' if len(named) == 1 else ''} not apply to --trace (the trace's own times "
             "and requests are replayed); drop " + ("it" if len(named) == 1 else "them"))


def workload_pricing(profile, cluster, mix, trace, model) -> tuple[str, str]:
    """The profile and cluster that :func:`load_workload` prices a workload with (``bench.scenario.pricing_for``
    where either is None; no mix and no trace: the default mix)."""
    from ..bench.scenario import pricing_for

    if mix is not None and trace is not None:
        fail("give --mix or --trace, not both")
    if mix is None and trace is None:
        mix = DEFAULT_MIX
    if profile is None or cluster is None:
        profile, cluster = pricing_for(mix if trace is None else None, profile, cluster, trace=trace, model=model)
    return profile, cluster


def load_workload(profile, cluster, mix, trace, model, arrival, duration, slo_scale, seed, noise=DEFAULT_NOISE_SIGMA,
                  bias=None):
    """The simulator's loaded inputs of a workload given on the command line (``--mix`` xor ``--trace``;
    ``bias``: ``--bias`` text or (stage, factor) pairs). A ``profile`` or ``cluster`` of None is the one
    that prices the mix (``bench.scenario.pricing_for``: ``h200`` on ``2x8xH200`` for the GPU mixes,
    ``cpu`` on ``2xcpu`` for ``tiny``)."""
    from ..bench.scenario import load_scenario
    from ..bench.spec import RunSpec

    if mix is None and trace is None:
        mix = DEFAULT_MIX
    profile, cluster = workload_pricing(profile, cluster, mix, trace, model)
    spec = RunSpec(profile=profile, cluster=cluster, mix=mix if trace is None else None, trace=trace,
                   trace_model=model, arrival=arrival, duration_s=duration, slo_scale=slo_scale, seed=seed,
                   noise_sigma=noise, noise_bias=parse_bias(bias) if bias is None or isinstance(bias, str) else bias)
    problems = [p for p in spec.problems() if p.startswith(("--noise", "--bias", "--duration"))]
    if problems:
        fail("; ".join(problems))
    return load_scenario(spec)


def ceiling_lines(loaded) -> list[str]:
    """The capacity ceilings of a loaded workload as the commands print them: the efficient one,
    the SLO-aware one, and the SLO-aware pricing's note when a class cannot meet its SLO."""
    from ..bench.scenario import ceilings

    efficient, slo_aware = ceilings(loaded)
    lines = [f"capacity ceiling: {efficient.rps:.3f} req/s (every request alone, at its most GPU-efficient degree)",
             f"SLO-aware ceiling: {slo_aware.rps:.3f} req/s (each class at the cheapest degree and batch that meets "
             "its SLO without queueing)"]
    if slo_aware.rps > efficient.rps:  # (outside test 116: read as a ceiling that a goodput reached was above)
        lines.append("  the SLO-aware ceiling is the higher: it counts batches, which the capacity ceiling does not "
                     "(a bound for requests served one at a time)")
    if slo_aware.note():
        lines.append(f"  {slo_aware.note()}")
    return lines


def runnable_specs(loaded, specs: list[str]) -> list[str]:
    """``specs`` less those that cannot start on ``loaded``'s cluster, each said on stderr (a comparison
    runs the others); none left is an error naming why."""
    from ..bench.scenario import start_refusal

    refused = {spec: why for spec in specs if (why := start_refusal(loaded, spec)) is not None}
    if refused and len(refused) == len(specs):
        fail("; ".join(refused.values()))
    for why in refused.values():
        typer.secho(f"not run: {why}", err=True, fg=typer.colors.YELLOW)
    return [spec for spec in specs if spec not in refused]


def policy_specs(policies: str, *, unique: bool = False) -> list[str]:
    """The policy specs of a comparison, each validated before any runs (raises ValueError/PolicyError;
    none at all is an error); ``unique``: one given twice is one too."""
    from ..core.policy import bare_spec, make_policy, split_specs, unique_specs

    items = [p.strip() for p in policies.split(",")]
    if any(items) and not all(items):  # (outside test 99: dropped without a word)
        fail(f"--policies {policies}: an empty item; give a comma list of policies, e.g. trident,pipeline-dynamic")
    specs = [bare_spec(spec) for spec in split_specs(policies)]
    if not specs:
        fail("no policies given")
    for spec in specs:
        make_policy(spec)
    if unique:  # the same policy however it is written (`trident`, `trident:`, `trident:late=serve`)
        twice = [" = ".join(group) if len(set(group)) > 1 else group[0] for group in unique_specs(specs)[1]]
        if twice:
            fail(f"policy given twice: {', '.join(twice)}")
    return specs


def note_running(db: str, running: list[str], done: str) -> None:
    """Name the runs ``done`` (exported, compared, folded) while stored as ``running``: their rows so far, which
    a live server is still adding to, or whose journal holds the rest until a recovery (outside test 114:
    an export right after a burst held 82 of 100 answered requests, exit 0 and no word)."""
    from ..store.journal import pending_journal, server_gone

    for run_id in running:
        rest = ("its server is gone: `trident runs recover --db " + db + "` stores the rest its journal holds"
                if server_gone(db, run_id) else "its server is still storing it" if pending_journal(db, run_id)
                else "no journal of it is beside the database: what is stored is all there is")
        typer.echo(printable(f"note: run {run_id} is stored as running: {done} as far as it is stored ({rest})"),
                   err=True)


def drop_if_unused(db: str, made: bool, stored: list[str]) -> None:
    """A database this command made and stored no run in is removed (an empty 270 KB file was left)."""
    import contextlib
    import os

    if made and not stored:
        for path in (db, db + ".wal"):
            with contextlib.suppress(OSError):
                os.unlink(path)
