"""Who may use the workbench, and which results databases it may open.

* **Binding and the password.** On a loopback address (``.streamlit/config.toml`` binds
  ``127.0.0.1``; ``python -m workbench`` too) the workbench is this machine's user's and asks
  nothing. Bound anywhere else (``--server.address 0.0.0.0``, or no address at all, which Streamlit
  takes as every interface), it asks for the password in ``TRIDENT_WORKBENCH_PASSWORD``; without
  that variable it shows nothing but how to set it. :func:`gate` is the check, called first by
  ``app.py`` and by every page.
* **Databases.** The Runs and SQL pages, and Compare's live mode, open only the results
  databases under the results directory (``results/`` of the repository, or ``--results-dir``) and
  the ones named on the command line: ``streamlit run app.py -- --db PATH [--db PATH ...]``. A page
  offers these as a list, never a free path, so it cannot be asked whether any other file exists.

The pure parts (:func:`is_loopback`, :func:`password_matches`, :func:`parse_options`,
:func:`database_choices`) take values and return values; :func:`gate` and :func:`options` are the
entry points' helpers (they read Streamlit's configuration, the environment and ``sys.argv``).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tridentcore.core.defaults import DEFAULT_DB

__all__ = [
    "PASSWORD_ENV",
    "Options",
    "database_choices",
    "database_label",
    "database_picker",
    "default_index",
    "gate",
    "is_loopback",
    "options",
    "parse_options",
    "password_matches",
]

PASSWORD_ENV = "TRIDENT_WORKBENCH_PASSWORD"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS_DIR = REPO_ROOT / Path(DEFAULT_DB).parent
MAX_LISTED = 500  # databases listed from the results directory (the newest first past this)
WRONG_PASSWORD_DELAY_S = 1.0
_AUTH_KEY = "_workbench_auth"  # session state: a fingerprint of the password this session gave


# ----------------------------------------------------------------------------------- binding
def is_loopback(address: str | None) -> bool:
    """Whether Streamlit bound to ``address`` listens on this machine only. ``None`` or ``""`` is
    Streamlit's default: every interface."""
    if not address:
        return False
    host = address.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def password_matches(given: str, expected: str) -> bool:
    """Constant-time comparison; an empty expected password matches nothing."""
    return bool(expected) and hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _fingerprint(password: str) -> str:
    return hashlib.sha256(b"trident-workbench\0" + password.encode("utf-8")).hexdigest()


def gate() -> None:
    """Stop the page unless this session may see the workbench (see the module's doc).

    Reads ``server.address`` from Streamlit's configuration and the password from the environment;
    a session that gave the right password keeps it in its session state.
    """
    import streamlit as st
    from streamlit import config

    address = config.get_option("server.address")
    if is_loopback(address):
        return
    where = f"`{address}`" if address else "every network interface"
    expected = os.environ.get(PASSWORD_ENV, "")
    if not expected:
        st.error(f"This workbench listens on {where}, beyond this machine, and no password is set, so it shows "
                 "nothing.\n\n"
                 f"Set one in the environment and restart it: `{PASSWORD_ENV}=... streamlit run app.py` "
                 "(or `make run HOST=...` with the variable exported). Or bind this machine only: "
                 "`server.address = \"127.0.0.1\"` in `.streamlit/config.toml` (the repository's default).")
        st.stop()
    if st.session_state.get(_AUTH_KEY) == _fingerprint(expected):
        return
    st.title("TridentServe workbench")
    with st.form("workbench_login"):
        given = st.text_input("Password", type="password", key="workbench_password")
        sent = st.form_submit_button("Open")
    if sent:
        if password_matches(given, expected):
            st.session_state[_AUTH_KEY] = _fingerprint(expected)
            st.rerun()
        time.sleep(WRONG_PASSWORD_DELAY_S)  # slows guessing, one session at a time
        st.error("Wrong password.")
    st.caption(f"This workbench listens on {where}; it asks for the password set in `{PASSWORD_ENV}`.")
    st.stop()


# ----------------------------------------------------------------------------------- databases
@dataclass(frozen=True, slots=True)
class Options:
    """The workbench's own command-line options (after ``--`` of ``streamlit run app.py``)."""

    results_dir: Path = DEFAULT_RESULTS_DIR
    databases: tuple[Path, ...] = ()  # named with --db
    problems: tuple[str, ...] = ()  # what could not be parsed (shown, not fatal)

    @property
    def default_db(self) -> Path:
        """The default database (``results/trident.duckdb``): where runs go unless another is picked."""
        return (self.results_dir / Path(DEFAULT_DB).name).resolve()


def parse_options(argv: Sequence[str]) -> Options:
    """``--db PATH`` (repeatable) and ``--results-dir DIR``; other arguments are left alone (under
    a test runner ``sys.argv`` is the runner's)."""
    parser = argparse.ArgumentParser(prog="streamlit run app.py --", add_help=False, allow_abbrev=False,
                                     exit_on_error=False)
    parser.add_argument("--db", action="append", default=[])
    parser.add_argument("--results-dir", default=None)
    try:
        args, _ = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        return Options(problems=(f"command line: {exc}",))
    results_dir = Path(args.results_dir).expanduser().resolve() if args.results_dir else DEFAULT_RESULTS_DIR
    named = tuple(dict.fromkeys(Path(p).expanduser().resolve() for p in args.db if p.strip()))
    why = {p: not_a_file(p) for p in named}
    return Options(results_dir=results_dir, databases=tuple(p for p in named if not why[p]),
                   problems=tuple(f"--db {p}: {why[p]}" for p in named if why[p]))


def not_a_file(path: Path) -> str | None:
    """Why ``path`` (existing) can be no results database: a named pipe, socket or device (outside test
    118: listed in every picker, then "no results database at /dev/null (write one with ...)")."""
    from tridentcore.store.connection import special_file

    kind = special_file(path)
    return f"not a results database file ({kind})" if kind else None


def options() -> Options:
    """This process's options, from ``sys.argv`` (what ``streamlit run app.py -- ...`` passes)."""
    return parse_options(sys.argv[1:])


def database_choices(opts: Options, *, include_default: bool = False) -> list[Path]:
    """The databases a page may open: ``*.duckdb`` files under the results directory (recursively,
    sorted), then the ones named on the command line (present or not: the user named them). With
    ``include_default``, the default database (``results/trident.duckdb``) too, even before it exists
    (a page that writes runs creates it)."""
    found: list[Path] = []
    root = opts.results_dir
    if root.is_dir():
        try:
            files = [p for p in root.rglob("*.duckdb") if p.is_file()
                     and not any(part.startswith(".") for part in p.relative_to(root).parts)]
        except OSError:
            files = []
        if len(files) > MAX_LISTED:
            files = sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:MAX_LISTED]
        found = sorted(p.resolve() for p in files)
    out = list(dict.fromkeys([*found, *opts.databases]))
    if include_default and opts.default_db not in out:
        out.insert(0, opts.default_db)
    return out


def database_label(path: Path) -> str:
    """How a page names a database: relative to the repository when inside it."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def default_index(choices: Sequence[Path], current: str | None, opts: Options) -> int:
    """Where a page's database picker starts: the database the session used last if it is listed,
    else the default database if listed, else the first."""
    if current:
        try:
            cur = Path(current).expanduser().resolve()
        except (OSError, RuntimeError):
            cur = None
        if cur in choices:
            return list(choices).index(cur)
    return list(choices).index(opts.default_db) if opts.default_db in choices else 0


def database_picker(label: str, key: str, *, include_default: bool = False, help: str | None = None) -> Path | None:
    """A page's choice of results database among :func:`database_choices` (a selectbox, never a
    free path); None, with a note on the page, when there is none to choose. The choice is shared
    by the pages through ``st.session_state["db_path"]``."""
    import streamlit as st

    opts = options()
    for problem in opts.problems:
        st.warning(problem)
    choices = database_choices(opts, include_default=include_default)
    if not choices:
        st.info(f"No results database under `{database_label(opts.results_dir)}/` yet. Write one there "
                f"(`trident simulate --db {database_label(opts.default_db)}`, or Compare's live mode), or name "
                "one when starting the workbench: `streamlit run app.py -- --db PATH` "
                "(`python -m workbench --db PATH`).")
        return None
    if key in st.session_state and st.session_state[key] not in choices:
        del st.session_state[key]  # a database that is no longer listed
    index = default_index(choices, st.session_state.get("db_path"), opts)
    chosen = st.selectbox(label, choices, index=index, format_func=database_label, key=key,
                          help=help or f"The databases under `{database_label(opts.results_dir)}/` and those named "
                                       "with `--db` when the workbench was started.")
    if chosen not in choices:
        return None
    st.session_state["db_path"] = str(chosen)
    return chosen
