"""``trident runs …``: stored runs in a results database (opened read-only; ``recover`` and
``delete`` write). ``trident sql`` is :mod:`.sql`.

Library calls: ``tridentcore.bench.runs``, ``tridentcore.store`` and ``tridentcore.store.journal``;
these commands only format. About 500 lines, one job (the ``runs`` commands and how a stored run is said).
"""

from __future__ import annotations

import json

import typer

from ..core.defaults import DEFAULT_DB_WAIT_S
from .common import (DB_HELP, DEFAULT_DB, HELP_MARKUP, db_message, delta, fail, note_running, one_line, printable,
                     store_errors, table, value)

__all__ = ["runs_app"]

runs_app = typer.Typer(help="Stored runs in a results database.\n\nOpened read-only; `recover` and `delete` write.",
                       no_args_is_help=True, rich_markup_mode=HELP_MARKUP)


def _dash_table(rows: list[dict], columns) -> str:
    return table(rows, columns, none_as_dash=True)


_LIST_COLUMNS = ("run_id", "created_at", "backend", "policy", "mix", "cluster", "rate_rps", "seed", "status",
                 "requests", "attainment", "p95_s")


@runs_app.command("list")
def runs_list(
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
    limit: int | None = typer.Option(None, min=1, help="Only the newest N runs (still oldest first)."),
) -> None:
    """Every stored run, oldest first, with its headline numbers."""
    from ..bench.runs import client_only_runs, count_and_running_runs, list_stored_runs

    try:
        rows = list_stored_runs(db, limit)
        total, running = ((len(rows), [r["run_id"] for r in rows if r.get("status") == "running"])
                          if limit is None or len(rows) < limit else count_and_running_runs(db))
        client = client_only_runs(db)
    except store_errors() as exc:
        fail(one_line(db_message(exc, db)))
    if not rows:
        typer.echo(f"no runs in {db}")
    else:
        for r in rows:
            r["created_at"] = str(r["created_at"])[:19]
        typer.echo(_dash_table(rows, _LIST_COLUMNS))
        if total > len(rows):  # (on stderr: the table on stdout stays rows alone)
            typer.echo(f"the newest {len(rows)} of {total} runs (--limit)", err=True)
        _servers_gone(db, running)  # (every run stored as running, shown or not)
    _journals_without_row(db)
    if client:  # (a database of Locust's rows alone read as empty)
        shown = ", ".join(f"{printable(run_id)} ({n} requests)" for run_id, n in client[:10])
        more = f", and {len(client) - 10} more" if len(client) > 10 else ""
        typer.echo(f"client rows only (a standalone Locust run's --db, no server records): {shown}{more}; "
                   "`trident sql \"SELECT * FROM client_requests WHERE run_id = '...'\"` shows them")


_SUMMARY_KEYS = ("requests", "done", "met", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "rejected", "failed",
                 "cancelled", "unfinished", "ooms", "preemptions", "dispatches", "gpu_s", "gpu_s_per_met")


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(..., help="Run id (or a prefix that names one run)."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
) -> None:
    """One run: what it was and how it went.

    Its configuration, summary, attainment per request class, and time per stage.
    """
    from ..bench.runs import show_run

    try:
        report = show_run(db, run)
    except store_errors() as exc:
        from ..store.journal import pending_journal

        pending = pending_journal(db, run)
        fail(one_line(db_message(exc, db)) + (f"; its journal {pending} is not stored yet (its server runs, or "
                                              f"`trident runs recover --db {db}` stores it)" if pending else ""))
    m = report.meta
    typer.echo(f"run {printable(report.run_id)}")
    typer.echo(printable(f"  {m['backend']} {m['policy']}  mix {m['mix']} at {m['rate_rps']:g} req/s for "
                         f"{m['duration_s']:g} s, cluster {m['cluster']}, profile {m['profile']}, slo scale "
                         f"{m['slo_scale']:g}, seed {m['seed']}"))
    typer.echo(f"  status {m['status']}, created {str(m['created_at'])[:19]} UTC, wall {m['wall_s']:.2f} s, "
               f"git {m['git_sha'][:12] or '-'}")
    if m["status"] == "running":
        _servers_gone(db, [report.run_id])
    clocks = _clocks(m)
    if clocks:
        typer.echo(printable(clocks))
    cluster_file, stage_times = _cluster_file(m), _stage_times(m)
    if cluster_file:
        typer.echo(printable(f"  cluster from {cluster_file}"))
    if stage_times:
        typer.echo(f"  stage times drawn with {stage_times}")
    refused = _refused(m)
    if refused:
        # (outside test 119: after a kill -9 the stored counts were short of the 429s clients had, without a word)
        least = (" as its journal last counted them, up to 0.5 s before its server ended: at least"
                 if _recovered(m) else " as last stored: at least" if m["status"] == "running" else "")
        typer.echo(f"  refused before admission (not in its rows{least}): {refused}")
    workers = _workers(m)
    if workers:
        typer.echo(f"  {workers}")
    typer.echo("summary")
    width = max(map(len, _SUMMARY_KEYS))
    for key in _SUMMARY_KEYS:
        if key in report.summary:  # (``unfinished``: not in the view of a database no writer has opened since)
            typer.echo(f"  {key:<{width}}  {value(report.summary[key], key)}")
    typer.echo("attainment by request class (worst first)")
    typer.echo(_dash_table(report.classes, ("request_class", "requests", "met", "attainment", "p50_s", "p95_s",
                                       "rejected", "failed")))
    typer.echo("stage breakdown")
    typer.echo(_dash_table(report.stages, ("stage", "spans", "dispatches", "mean_s", "p95_s", "mean_queue_s",
                                      "p95_queue_s", "mean_batch", "mean_degree", "gpu_s", "load_s",
                                      "preempted", "oom")))


def _config(meta: dict) -> dict:
    try:
        config = json.loads(meta.get("config_json") or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _clocks(meta: dict) -> str:
    """A run of several device kinds on different clocks (an emulated part at a time scale beside a real
    device): each part's requests, duration and rate on its own clock ("" otherwise). The line above
    reads the time-scaled part's clock for the whole run; each request is timed on its part's
    (outside test 112: "0.0083 req/s for 12511 s" for 104 requests in 686 s, unexplained)."""
    parts = [p for p in _config(meta).get("parts") or [] if isinstance(p, dict)]
    if len({p.get("time_scale") for p in parts}) < 2:
        return ""
    said = []
    for p in parts:
        scale, n, duration = p.get("time_scale"), p.get("requests"), p.get("duration_s")
        text = f"{p.get('devices')} at time scale {scale:g}" if isinstance(scale, (int, float)) else str(p.get("devices"))
        if isinstance(n, int) and isinstance(duration, (int, float)) and duration > 0:
            text += f": {n} request{'s' * (n != 1)} in {duration:g} s of its clock ({n / duration:g} req/s)"
        said.append(text)
    return ("  parts on clocks of their own (each request is timed on its part's; the rate and duration above "
            "are the time-scaled part's): " + "; ".join(said))


def _stage_times(meta: dict) -> str:
    """A simulated run's stage-time noise and bias (``noise sigma 0.3, bias decode x2``), "" without."""
    config = _config(meta)
    sigma, bias = config.get("noise_sigma") or 0.0, config.get("noise_bias") or []
    parts = [f"noise sigma {sigma:g}"] if isinstance(sigma, (int, float)) and sigma else []
    try:
        parts += [f"bias {stage} x{factor:g}" for stage, factor in bias]
    except (TypeError, ValueError):
        pass
    return ", ".join(parts)


def _cluster_file(meta: dict) -> str:
    """A run's cluster YAML (``FILE, sha256 1234abcd5678``) when it came from one, else "": the label
    (``1x2xH200``) does not show its memory or links (outside test: 30 and 141 GiB GPUs read alike)."""
    source = (_config(meta).get("inputs") or {}).get("cluster")
    if not isinstance(source, dict):
        return ""
    return f"{source.get('path')}, sha256 {str(source.get('sha256'))[:12]}"


def _recovered(meta: dict) -> bool:
    """Whether the run was closed by a recovery of its journal (its server ended before writing its end)."""
    return _config(meta).get("recovered") is True


def _workers(meta: dict) -> str:
    """A server's run: its workers' restarts and the stages taken as hung ("" when none; outside test 119:
    three workers killed and restarted read as a quiet run, the count only in config_json)."""
    config = _config(meta)
    workers = config.get("workers")
    restarts = workers.get("restarts") if isinstance(workers, dict) else None
    hung = config.get("hung")
    said = []
    if isinstance(restarts, int) and restarts > 0:
        said.append(f"workers restarted {restarts} time{'s' if restarts != 1 else ''} (a worker lost: killed, "
                    "crashed or hung)")
    if isinstance(hung, int) and hung > 0:
        said.append(f"{hung} stage{'s' if hung != 1 else ''} taken as hung (stopped, retried elsewhere)")
    return "; ".join(said)


def _refused(meta: dict) -> str:
    """A server's run: the requests it turned away before admission, by code (``12 queue_full``), from
    its stored configuration; "" when none were (or the run is not a server's)."""
    refused = _config(meta).get("refused")
    if not isinstance(refused, dict):
        return ""
    return ", ".join(f"{n} {reason}" for reason, n in sorted(refused.items()) if isinstance(n, int) and n > 0)


_DIFF_KEYS = ("requests", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "ooms", "rejected", "failed",
              "preemptions", "gpu_s_per_met")


@runs_app.command("diff")
def runs_diff(
    run_a: str = typer.Argument(..., help="The first run (id or unique prefix)."),
    run_b: str = typer.Argument(..., help="The second run."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
) -> None:
    """Two runs side by side.

    Summary metrics, then attainment per request class (B - A).
    """
    from ..bench.runs import diff_runs

    try:
        diff = diff_runs(db, run_a, run_b)
    except store_errors() as exc:
        fail(one_line(db_message(exc, db)))
    a, b = diff.a, diff.b
    for name, r in (("A", a), ("B", b)):
        typer.echo(printable(f"{name}  {r['run_id']}  {r['backend']} {r['policy']}  {r['mix']} at {r['rate_rps']:g} "
                             f"req/s, seed {r['seed']}"))
    note_running(db, [r["run_id"] for r in (a, b) if r.get("status") == "running"], "compared")
    differs = [f"{label} {a[k]:g} / {b[k]:g}" if isinstance(a[k], float) and isinstance(b[k], float) else
               f"{label} {a[k]} / {b[k]}"
               for k, label in _WORKLOAD_KEYS if a[k] != b[k] and not (a[k] is None and b[k] is None)]
    for label, said in (("cluster file", _cluster_file), ("stage times", _stage_times)):  # (outside test: unsaid)
        in_a, in_b = said(a), said(b)
        if in_a != in_b:
            differs.append(f"{label} {in_a or '-'} / {in_b or '-'}")
    if differs:
        typer.echo(printable(f"note: A and B did not serve the same workload ({'; '.join(differs)}): B - A "
                             "compares more than the policies"))
    rows = [{"metric": k, "A": value(a[k], k), "B": value(b[k], k), "B - A": delta(a[k], b[k], k)} for k in _DIFF_KEYS]
    typer.echo(_dash_table(rows, ("metric", "A", "B", "B - A")))
    typer.echo("attainment by request class")
    rows = [{"request_class": c["request_class"], "requests_A": value(c["requests_a"]), "requests_B": value(c["requests_b"]),
             "A": value(c["attainment_a"], "attainment"), "B": value(c["attainment_b"], "attainment"),
             "B - A": delta(c["attainment_a"], c["attainment_b"], "attainment")} for c in diff.classes]
    typer.echo(_dash_table(rows, ("request_class", "requests_A", "requests_B", "A", "B", "B - A")))


_WORKLOAD_KEYS = (("mix", "mix"), ("rate_rps", "rate"), ("seed", "seed"), ("cluster", "cluster"),
                  ("slo_scale", "SLO scale"))  # what two runs must share for B - A to compare policies alone


@runs_app.command("export")
def runs_export(
    run: str = typer.Argument(..., help="Run id (or a prefix that names one run)."),
    parquet: str = typer.Option(..., "--parquet", help="Directory for one Parquet file per table."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
) -> None:
    """Write one run's rows to Parquet files, one per table.

    DIR/<table>.parquet: runs, requests, stage_spans, placements, gpu_samples, and a live run's client_requests.
    """
    from ..bench.runs import resolve_run
    from ..store import export_run

    from pathlib import Path

    if Path(parquet).exists() and not Path(parquet).is_dir():
        fail(f"--parquet {parquet} is a file: give a folder (made if missing) for one Parquet file per table")
    before = {p.name for p in Path(parquet).glob("*.parquet")} if Path(parquet).is_dir() else set()
    try:
        run_id = resolve_run(db, run)
    except (*store_errors(), OSError) as exc:
        fail(one_line(db_message(exc, db)))
    made = not Path(parquet).exists()
    try:
        try:
            written = export_run(db, run_id, parquet)
        except BaseException:  # a folder this export made goes with it (outside test 100: a full disk left it empty)
            if made:
                import shutil

                shutil.rmtree(parquet, ignore_errors=True)
            raise
    except IsADirectoryError as exc:
        fail(f"--parquet {parquet}: {exc}")
    except OSError as exc:  # the folder (made if missing) cannot be made or written: the database is fine
        fail(f"--parquet {parquet}: cannot be written ({exc.strerror or one_line(str(exc))})")
    except store_errors() as exc:
        fail(one_line(db_message(exc, db)))
    names = [p.name for p in written.values()]
    replaced = [n for n in names if n in before]
    typer.echo(f"exported run {run_id} to {parquet}: " + ", ".join(names)
               + (f" (replaced: {', '.join(replaced)})" if replaced else ""))
    from ..store import query_readonly

    try:
        running = list(query_readonly(db, "SELECT run_id FROM runs WHERE run_id = ? AND status = 'running'",
                                      [run_id]).run_id)
    except (*store_errors(), OSError):
        running = []  # (the export read the file a moment ago: a lock now leaves the note out)
    note_running(db, running, "exported")
    others = sorted(before - set(names))
    if others:
        typer.echo(f"note: {parquet} also holds {', '.join(others)}, not of this export")


@runs_app.command("delete")
def runs_delete(
    runs: list[str] = typer.Argument(..., metavar="RUN", help="Run ids, whole (no prefixes: a deletion names what "
                                                               "it deletes)."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
    wait: float = typer.Option(DEFAULT_DB_WAIT_S, min=0.0, help="Seconds to wait for another process's lock on the database."),
) -> None:
    """Delete stored runs, every row of each.

    Every table's rows of each run go (requests, spans, placements, GPU samples, client rows). A run still `running` (its server writes it) or with a journal not yet recovered is refused; each
    run is deleted in its own transaction. Exit status 1 if any run was not deleted."""
    from pathlib import Path

    from ..bench.runs import resolve_run
    from ..store import NotADatabaseError, ResultsStore, StoreError, UnknownRunError
    from ..store.journal import pending_journal

    if Path(db).is_dir():
        fail(f"--db {db} is a folder: give the results database file")
    _not_a_file(db)
    if not Path(db).is_file():
        fail(f"no results database at {db}")
    store, failed = ResultsStore(db, lock_wait_s=wait), 0
    for run in dict.fromkeys(runs):
        why = ""
        pending = pending_journal(db, run)
        if pending:
            why = (f"its journal {pending} is not stored yet (its server runs, or `trident runs recover` stores "
                   "it first)")
        else:
            try:
                counts = store.delete_run(run)
            except UnknownRunError as exc:
                why = one_line(str(exc.args[0]) if exc.args else str(exc))  # (a KeyError's str() is quoted)
                try:
                    named = resolve_run(db, run)
                except UnknownRunError as again:  # (outside test 103: 4 runs begin "2026", and it said "not in")
                    text = str(again.args[0]) if again.args else str(again)
                    named = None
                    if " is ambiguous in " in text:
                        why = f"run {run!r} is not a whole run id ({text.partition(': ')[2]}): give the whole id"
                except (*store_errors(), OSError):
                    named = None
                if named is not None and named != run:
                    why = f"run {run!r} is not a whole run id (it begins {named}): give the whole id"
            except NotADatabaseError as exc:  # the file, not the run: one error line, as for a folder
                fail(one_line(db_message(exc, db)))
            except StoreError as exc:  # still running
                why = one_line(str(exc))
            except (*store_errors(), OSError) as exc:  # (a full disk: the run named, as the other reasons name it)
                why = f"run {run!r}: {one_line(db_message(exc, db))}"
        if why:
            failed += 1
            typer.echo(f"not deleted: {why}", err=True)
            continue
        rows = ", ".join(f"{n} {t}" for t, n in counts.items() if n and t not in ("runs", "journal_ingests"))
        typer.echo(f"deleted run {run}" + (f": {rows}" if rows else ""))
    if failed:
        raise typer.Exit(1)


@runs_app.command("recover")
def runs_recover(
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
    wait: float = typer.Option(DEFAULT_DB_WAIT_S, min=0.0, help="Seconds to wait for another process's lock on the database."),
    folder: list[str] = typer.Option([], "--folder", metavar="DIR", show_default=False,
                                     help="A live bench's --keep folder to look in too (repeatable)."),
) -> None:
    """Store the runs that dead servers and killed live benches left.

    Stores the runs that killed `trident bench --backend live` runs on this database left in their
    temporary work folders (trident-live-*), as `interrupted` (or the status they had reached, if
    the kill came after the load), and removes those folders (--folder: a --keep folder, left in
    place; a run whose store failed is stored likewise, with its status). Then
    ingests the journals servers left next to the database (FILE.journal/): a crashed server's run is
    stored as `crashed`, one whose final write failed as it ended. Journals of running servers, and
    folders of benches still running, are left alone. Exit status 1 if a journal or a folder could
    not be stored (it stays), or a stored journal could not be deleted."""
    from pathlib import Path

    from ..bench.orphans import recover_orphans
    from ..store.journal import pending_journals
    from ..store.recovery import recover

    if Path(db).is_dir():
        fail(f"--db {db} is a folder: give the results database file whose journals to recover")
    _not_a_file(db)
    for given in folder:  # (outside test: a mistyped --folder read "no journals to recover", exit 0)
        if not Path(given).is_dir():
            fail(f"--folder {given}: {'not a folder' if Path(given).exists() else 'no such folder'} (a live bench's "
                 "--keep folder)")
    failed = 0
    left = recover_orphans(db, folders=folder, wait_s=wait)
    for r in left:
        typer.echo(r.message, err=r.outcome in ("failed", "unreadable"))
        failed += r.outcome == "failed"
    if not pending_journals(db):
        if not left:
            typer.echo(f"no journals to recover for {db}, and no live bench's folder")
        _running_without_journal(db)
        if failed:
            raise typer.Exit(1)
        return
    try:
        done = recover(db, wait_s=wait)
    except (*store_errors(), OSError) as exc:
        fail(one_line(db_message(exc, db)))
    for r in done:
        if r.outcome == "ingested":
            typer.echo(f"recovered run {r.run_id}: {r.rows} rows ({r.requests} requests), status {r.status}"
                       + (f"; {r.message}" if r.message else ""), err=r.stays)
            failed += r.stays
        elif r.outcome == "live":
            typer.echo(f"left run {r.run_id}: its server is running ({r.message})")
        elif r.outcome in ("busy", "gone"):
            typer.echo(f"left run {r.run_id}: {r.message}")
        elif r.outcome == "empty":
            typer.echo(f"removed the journal of run {r.run_id}: {r.message}")
        else:
            failed += 1
            typer.echo(f"could not recover run {r.run_id} from {r.path}: {r.message}", err=True)
    _running_without_journal(db)
    if failed:
        raise typer.Exit(1)


def _servers_gone(db: str, running: list[str]) -> None:
    """Name the runs stored as ``running`` whose server is gone (their journal is held by no process):
    they read as live, ``wall 0.93 s``, with no word that a recovery closes them (outside test)."""
    from ..store.journal import server_gone

    gone = [r for r in running if server_gone(db, r)]
    if gone:
        shown = ", ".join(printable(r) for r in gone[:10]) + (f" and {len(gone) - 10} more" if len(gone) > 10 else "")
        typer.echo(f"note: stored as running, but its server is gone (its journal is held by no process): {shown}; "
                   f"`trident runs recover --db {db}` stores what the journal holds and closes it (as crashed, "
                   "unless its journal says how it ended)", err=True)


def _not_a_file(db: str) -> None:
    """A named pipe, socket or device as ``--db``: said as every reader says it (outside test 118:
    `runs delete` read "no results database at", `runs recover` "no journals to recover", exit 0)."""
    from ..store import NotADatabaseError
    from ..store.connection import check_header

    try:
        check_header(db)
    except NotADatabaseError as exc:
        fail(f"--db {db}: {exc.reason}")


def _journals_without_row(db: str) -> None:
    """Name the runs with a journal beside ``db`` and no row in it: a server whose start's row could not
    be written (a full disk), or one starting now (outside test 100: after its `kill -9` such a run was
    in no list, and `runs show` said only that it is not in the file)."""
    from ..store import query_readonly
    from ..store.journal import named_run_id, pending_journals, server_gone

    pending = {named_run_id(p) for p in pending_journals(db)}
    if not pending:
        return
    try:
        stored = set(query_readonly(db, "SELECT run_id FROM runs").run_id)
    except (*store_errors(), OSError):
        return  # (the list said why the file cannot be read)
    missing = sorted(pending - stored)
    for state, runs in (("its server is gone: `trident runs recover --db " + db + "` stores it",
                         [r for r in missing if server_gone(db, r)]),
                        ("its server runs (or starts)", [r for r in missing if not server_gone(db, r)])):
        if runs:
            shown = ", ".join(printable(r) for r in runs[:10]) + (f" and {len(runs) - 10} more" if len(runs) > 10
                                                                   else "")
            typer.echo(f"note: a journal but no row in {db} yet: {shown}; {state}", err=True)


def _running_without_journal(db: str) -> None:
    """Name the runs stored as ``running`` that have no journal beside the database: nothing here can
    close them (outside test: a crashed server whose journal was deleted read "no journals to recover"
    and stayed ``running`` for good). Their server may be serving from another host's copy of the
    folder, or their journal was lost; their rows stored so far stand."""
    from pathlib import Path

    from ..store import query_readonly
    from ..store.journal import pending_journal

    if not Path(db).is_file():
        return
    try:
        runs = query_readonly(db, "SELECT run_id FROM runs WHERE status = 'running' ORDER BY created_unix_s")
    except (*store_errors(), OSError):
        return  # (said by the commands that read the file; a recovery has nothing to add)
    lost = [r for r in runs.run_id if not pending_journal(db, r)]
    if lost:
        shown = ", ".join(printable(r) for r in lost[:10]) + (f" and {len(lost) - 10} more" if len(lost) > 10 else "")
        typer.echo(f"note: stored as running with no journal beside {db}: {shown} (its server may still run, or "
                   "its journal was deleted: nothing here can close it; its rows stored so far stand)", err=True)
