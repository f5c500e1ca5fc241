"""``python -m workbench``: start the workbench (``streamlit run app.py``), headless, on 127.0.0.1.

What ``make run`` calls. Before Streamlit serves, it computes the home page's default comparison
(:func:`workbench.data.warm_up`, about a second), so the first visitor sees it painted at once
instead of waiting for the imports and the four simulations, and stores it in the default results
database (``results/trident.duckdb``, once per database: :func:`workbench.data.store_default_comparison`),
so the Runs and SQL pages have runs to show from the first start. Everything else is Streamlit's own
``run``: flags after ``--`` go to it (``python -m workbench -- --theme.base dark``). ``--db PATH``
names a results database the Runs and SQL pages may open besides those under ``results/``; off
loopback the workbench asks for the password in ``TRIDENT_WORKBENCH_PASSWORD``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("workbench")


def _warm() -> None:
    try:
        from workbench import data

        from workbench import child

        child.prestart()  # the simulations' forkserver: its imports paid now, not by the first visitor
        log.info("computing the default comparison…")
        took = data.warm_up()
        log.info("default comparison ready (%.1f s)", took)
    except Exception:  # the page computes it itself then; a warm-up failure must not stop the server
        log.exception("warm-up failed")


def _store_default(db: Path) -> None:
    try:
        from workbench import data

        stored = data.store_default_comparison(db)
        if stored:
            log.info("stored the default comparison in %s (%d runs)", db, len(stored))
    except Exception as exc:  # the Runs and SQL pages say there is nothing yet; the server starts anyway
        log.warning("the default comparison was not stored in %s: %s", db, exc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; any other asks for the "
                             "password in TRIDENT_WORKBENCH_PASSWORD)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--db", action="append", default=[], metavar="PATH",
                        help="a results database the pages may open besides those under results/ (repeatable)")
    parser.add_argument("--results-dir", metavar="DIR", help="where the pages look for results databases "
                                                             "(default: results/ of the repository)")
    parser.add_argument("--no-warm-up", action="store_true", help="do not compute the default comparison ahead")
    parser.add_argument("--no-store-default", action="store_true",
                        help="do not store the default comparison in the default database (RESULTS-DIR/trident.duckdb)")
    parser.add_argument("streamlit_args", nargs="*", help="more `streamlit run` flags, after --")
    args = parser.parse_args(argv)
    from workbench.access import not_a_file

    for path in args.db:  # (outside test 118: a named pipe or /dev/null was listed in every picker)
        why = not_a_file(Path(path).expanduser())
        if why:
            parser.error(f"--db {path}: {why}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the Live page polls every few seconds

    app = ROOT / "app.py"
    if not app.is_file():
        sys.exit(f"no app.py at {ROOT}: run this from a clone of the repository")
    if not args.no_warm_up:  # before serving, not beside it: no page waits on a half-done import
        _warm()
    from workbench.access import parse_options

    opts = parse_options(["--results-dir", args.results_dir] if args.results_dir else [])
    if not args.no_store_default:  # before serving: the Runs page's first visit finds it
        _store_default(opts.default_db)
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"TridentServe workbench: http://{host}:{args.port}  (Ctrl-C stops)", flush=True)
    from workbench.access import PASSWORD_ENV, is_loopback

    if not is_loopback(args.address):
        note = "asks for it" if os.environ.get(PASSWORD_ENV) else "shows nothing until it is set"
        print(f"{args.address} is reachable beyond this machine: the workbench needs the password in {PASSWORD_ENV} "
              f"({note})", flush=True)
    script_args = [a for p in args.db for a in ("--db", str(Path(p).expanduser().resolve()))]
    if args.results_dir:
        script_args += ["--results-dir", str(Path(args.results_dir).expanduser().resolve())]
    os.chdir(ROOT)  # .streamlit/config.toml and the relative paths of the pages
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(app), "--server.headless", "true", "--server.address", args.address,
                "--server.port", str(args.port), *args.streamlit_args, *(["--", *script_args] if script_args else [])]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main()
