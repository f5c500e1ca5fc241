"""``python -m workbench``: start the workbench (``streamlit run app.py``), headless, on 127.0.0.1.

What ``make run`` calls. Before Streamlit serves, it computes the home page's default comparison
(:func:`workbench.data.warm_up`, about a second), so the first visitor sees it painted at once
instead of waiting for the imports and the four simulations. Everything else is Streamlit's own
``run``: flags after ``--`` go to it (``python -m workbench -- --theme.base dark``).
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

        log.info("computing the default comparison…")
        took = data.warm_up()
        log.info("default comparison ready (%.1f s)", took)
    except Exception:  # the page computes it itself then; a warm-up failure must not stop the server
        log.exception("warm-up failed")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8501, help="port (default 8501)")
    parser.add_argument("--no-warm-up", action="store_true", help="do not compute the default comparison ahead")
    parser.add_argument("streamlit_args", nargs="*", help="more `streamlit run` flags, after --")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the Live page polls every few seconds

    app = ROOT / "app.py"
    if not app.is_file():
        sys.exit(f"no app.py at {ROOT}: run this from a clone of the repository")
    if not args.no_warm_up:  # before serving, not beside it: no page waits on a half-done import
        _warm()
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"TridentServe workbench: http://{host}:{args.port}  (Ctrl-C stops)", flush=True)
    os.chdir(ROOT)  # .streamlit/config.toml and the relative paths of the pages
    from streamlit.web import cli as stcli

    sys.argv = ["streamlit", "run", str(app), "--server.headless", "true", "--server.address", args.address,
                "--server.port", str(args.port), *args.streamlit_args]
    sys.exit(stcli.main())


if __name__ == "__main__":
    main()
