"""``trident runs …``: stored runs in a results database (opened read-only; ``recover`` writes).

Library calls: ``tridentcore.bench.runs`` and ``tridentcore.store.journal`` over the results store;
these commands only format.
"""

from __future__ import annotations

import typer

from ..core.defaults import DEFAULT_DB_WAIT_S
from .common import DB_HELP, DEFAULT_DB, HELP_MARKUP, db_message, delta, fail, one_line, store_errors, table, value

__all__ = ["runs_app"]

runs_app = typer.Typer(help="Stored runs in a results database.\n\nOpened read-only; `recover` writes.",
                       no_args_is_help=True, rich_markup_mode=HELP_MARKUP)


def _dash_table(rows: list[dict], columns) -> str:
    return table(rows, columns, none_as_dash=True)


_LIST_COLUMNS = ("run_id", "created_at", "backend", "policy", "mix", "cluster", "rate_rps", "seed", "status",
                 "requests", "attainment", "p95_s")


@runs_app.command("list")
def runs_list(db: str = typer.Option(DEFAULT_DB, help=DB_HELP)) -> None:
    """Every stored run, oldest first, with its headline numbers."""
    from ..bench.runs import list_stored_runs

    try:
        rows = list_stored_runs(db)
    except store_errors() as exc:
        fail(one_line(db_message(exc, db)))
    if not rows:
        typer.echo(f"no runs in {db}")
        return
    for r in rows:
        r["created_at"] = str(r["created_at"])[:19]
    typer.echo(_dash_table(rows, _LIST_COLUMNS))


_SUMMARY_KEYS = ("requests", "done", "met", "attainment", "mean_s", "p50_s", "p95_s", "p99_s", "rejected", "failed",
                 "cancelled", "ooms", "preemptions", "dispatches", "gpu_s", "gpu_s_per_met")


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
        fail(one_line(db_message(exc, db)))
    m = report.meta
    typer.echo(f"run {report.run_id}")
    typer.echo(f"  {m['backend']} {m['policy']}  mix {m['mix']} at {m['rate_rps']:g} req/s for {m['duration_s']:g} s, "
               f"cluster {m['cluster']}, profile {m['profile']}, slo scale {m['slo_scale']:g}, seed {m['seed']}")
    typer.echo(f"  status {m['status']}, created {str(m['created_at'])[:19]} UTC, wall {m['wall_s']:.2f} s, "
               f"git {m['git_sha'][:12] or '-'}")
    typer.echo("summary")
    width = max(map(len, _SUMMARY_KEYS))
    for key in _SUMMARY_KEYS:
        typer.echo(f"  {key:<{width}}  {value(report.summary[key], key)}")
    typer.echo("attainment by request class (worst first)")
    typer.echo(_dash_table(report.classes, ("request_class", "requests", "met", "attainment", "p50_s", "p95_s",
                                       "rejected", "failed")))
    typer.echo("stage breakdown")
    typer.echo(_dash_table(report.stages, ("stage", "spans", "dispatches", "mean_s", "p95_s", "mean_queue_s",
                                      "p95_queue_s", "mean_batch", "mean_degree", "gpu_s", "load_s",
                                      "preempted", "oom")))


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
    typer.echo(f"A  {a['run_id']}  {a['backend']} {a['policy']}  {a['mix']} at {a['rate_rps']:g} req/s, seed {a['seed']}")
    typer.echo(f"B  {b['run_id']}  {b['backend']} {b['policy']}  {b['mix']} at {b['rate_rps']:g} req/s, seed {b['seed']}")
    rows = [{"metric": k, "A": value(a[k], k), "B": value(b[k], k), "B - A": delta(a[k], b[k], k)} for k in _DIFF_KEYS]
    typer.echo(_dash_table(rows, ("metric", "A", "B", "B - A")))
    typer.echo("attainment by request class")
    rows = [{"request_class": c["request_class"], "requests_A": value(c["requests_a"]), "requests_B": value(c["requests_b"]),
             "A": value(c["attainment_a"], "attainment"), "B": value(c["attainment_b"], "attainment"),
             "B - A": delta(c["attainment_a"], c["attainment_b"], "attainment")} for c in diff.classes]
    typer.echo(_dash_table(rows, ("request_class", "requests_A", "requests_B", "A", "B", "B - A")))


@runs_app.command("export")
def runs_export(
    run: str = typer.Argument(..., help="Run id (or a prefix that names one run)."),
    parquet: str = typer.Option(..., "--parquet", help="Directory for one Parquet file per table."),
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
) -> None:
    """Write one run's rows to Parquet files, one per table.

    DIR/<table>.parquet: runs, requests, stage_spans, placements, gpu_samples.
    """
    from ..bench.runs import resolve_run
    from ..store import export_run

    try:
        run_id = resolve_run(db, run)
        written = export_run(db, run_id, parquet)
    except (*store_errors(), OSError) as exc:
        fail(one_line(db_message(exc, db)))
    typer.echo(f"exported run {run_id} to {parquet}: " + ", ".join(p.name for p in written.values()))


@runs_app.command("recover")
def runs_recover(
    db: str = typer.Option(DEFAULT_DB, help=DB_HELP),
    wait: float = typer.Option(DEFAULT_DB_WAIT_S, min=0.0, help="Seconds to wait for another process's lock on the database."),
) -> None:
    """Store the runs that servers left in journals.

    Ingests the journals servers left next to the database (FILE.journal/): a crashed server's run is
    stored as `crashed`, one whose final write failed as it ended. Journals of running servers are left
    alone. Exit status 1 if a journal could not be ingested (it stays)."""
    from ..store.journal import pending_journals, recover

    if not pending_journals(db):
        typer.echo(f"no journals to recover for {db}")
        return
    try:
        done = recover(db, wait_s=wait)
    except (*store_errors(), OSError) as exc:
        fail(one_line(db_message(exc, db)))
    failed = 0
    for r in done:
        if r.outcome == "ingested":
            typer.echo(f"recovered run {r.run_id}: {r.rows} rows ({r.requests} requests), status {r.status}")
        elif r.outcome == "live":
            typer.echo(f"left run {r.run_id}: its server is running ({r.message})")
        elif r.outcome == "empty":
            typer.echo(f"removed the journal of run {r.run_id}: {r.message}")
        else:
            failed += 1
            typer.echo(f"could not recover run {r.run_id} from {r.path}: {r.message}", err=True)
    if failed:
        raise typer.Exit(1)
