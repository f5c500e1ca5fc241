"""Insert a Locust run's client rows (JSON lines) into a results store's ``client_requests``.

    python -m tridentcore.bench.client_rows --db results/trident.duckdb --run-id RUN ROWS.jsonl
    python -m tridentcore.bench.client_rows --check --db results/trident.duckdb [--run-id RUN]

The Locust file (``workloads/mixed.py --db``) runs this as a short child process, so the store's
duckdb never enters the gevent-patched Locust process. Prints one line; exit status 2 on error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def insert_client_rows(db: str, run_id: str, rows_file: str) -> int:
    """Write the rows of ``rows_file`` under ``run_id`` (one transaction); returns how many."""
    from ..core.defaults import DEFAULT_DB_WAIT_S
    from ..store import ResultsStore

    text = Path(rows_file).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return ResultsStore(db, lock_wait_s=DEFAULT_DB_WAIT_S).write_client_requests(run_id, rows)


def check_target(db: str, run_id: str | None) -> None:
    """Raise if rows could not be stored in ``db`` (not a results database, locked past the wait) or
    ``run_id`` already has client rows there: what the Locust file asks before its load."""
    from ..core.defaults import DEFAULT_DB_WAIT_S
    from ..store import ResultsStore, open_readonly

    if not Path(db).exists():  # made when the rows are stored, not now: a run that never starts leaves nothing
        return
    ResultsStore(db, lock_wait_s=DEFAULT_DB_WAIT_S).check()
    if run_id:
        con = open_readonly(db)
        try:
            has = con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = 'client_requests'").fetchall()
            if has and con.execute("SELECT 1 FROM client_requests WHERE run_id = ? LIMIT 1", [run_id]).fetchall():
                raise ValueError(f"run {run_id!r} already has client rows there (give another --run-id)")
        finally:
            con.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tridentcore.bench.client_rows", description=__doc__.split("\n")[0])
    parser.add_argument("--db", required=True, help="DuckDB results file")
    parser.add_argument("--run-id", help="Run id of the rows (required to store them)")
    parser.add_argument("--check", action="store_true", help="Only check that rows of --run-id could be stored")
    parser.add_argument("rows", nargs="?", help="JSON-lines file of client rows")
    args = parser.parse_args(argv)
    if args.check:
        try:
            check_target(args.db, args.run_id)
        except Exception as exc:  # noqa: BLE001 - one line for the Locust file
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if not args.run_id or not args.rows:
        parser.error("storing rows needs --run-id and a rows file")
    try:
        n = insert_client_rows(args.db, args.run_id, args.rows)
    except Exception as exc:  # noqa: BLE001 - one line for the Locust file's report
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} client_requests rows of run {args.run_id} to {args.db}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
