"""The ``trident`` app: every command, registered from its module.

Commands live in ``models`` (models, generate, profile, cost), ``sim`` (simulate, sweep, policies),
``serve``, ``bench``, ``runs``, ``sql`` and ``trace``; they share only ``common``. Heavy
modules (torch, diffusers) are imported inside the commands that need them, so ``trident --help``
and the simulator commands stay fast.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from . import bench, models, runs, serve, sim, sql, trace
from .common import HELP_MARKUP, fail

__all__ = ["app"]

# Options whose value may be empty text (a prompt); any other option given "" is refused: an empty
# --profile, --cluster or --bias read as not given (the default, without a word), an empty --db stored nothing.
_MAY_BE_EMPTY = ("--prompt", "--negative-prompt")


def _option_values(args: list[str]):
    """``(name, value)`` of each ``--name value`` or ``--name=value`` in ``args`` (up to ``--``),
    but the options that may be empty text; ``value`` is None for an option at the end."""
    for i, arg in enumerate(args):
        if arg == "--":
            return
        if not arg.startswith("--") or arg.split("=", 1)[0] in _MAY_BE_EMPTY:
            continue
        name, eq, value = arg.partition("=")
        yield name, (value if eq else args[i + 1] if i + 1 < len(args) else None)


def _empty_option(args: list[str]) -> str | None:
    """The first option in ``args`` given an empty (or blank) value, ``--name ""`` or ``--name=``."""
    return next((name for name, value in _option_values(args) if value is not None and not value.strip()), None)


def _not_finite_option(args: list[str]) -> tuple[str, str] | None:
    """The first option in ``args`` given NaN or an infinity (``--rate nan``, ``--duration=inf``), and
    the value: Click's range check said "Input should be greater than or equal to 1" of a NaN."""
    return next(((name, value.strip()) for name, value in _option_values(args)
                 if value is not None and value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity")), None)


# Click's UsageError (the base of BadParameter, NoSuchOption, ...), from the Click that Typer uses:
# Typer >= 0.2x carries its own copy, an older one uses the click package
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _text_not_option(arg: str) -> bool:
    """Whether ``arg`` starts like an option but cannot be one: its name (before any ``=``) holds
    whitespace, as SQL that opens with a comment does (``-- runs of today\\nSELECT ...``)."""
    return arg.startswith("-") and any(c.isspace() for c in arg.partition("=")[0])


def _sql_text_last(args: list[str]) -> list[str]:
    """``trident sql``'s one argument, SQL, put after ``--`` where it starts with ``-`` and holds
    whitespace: Click read ``"-- a comment\\nSELECT 1"`` as an option ("No such option")."""
    if not args or args[0] != "sql" or "--" in args:
        return args
    texts = [a for a in args[1:] if _text_not_option(a)]
    if len(texts) != 1:
        return args
    return [a for a in args if a is not texts[0]] + ["--", texts[0]]


class _Commands(TyperGroup):
    def parse_args(self, ctx, args):
        args = _sql_text_last(args)
        name = _empty_option(args)
        if name is not None:
            fail(f"{name}: an empty value; give one, or leave the option out for its default")
        odd = _not_finite_option(args)
        if odd is not None:
            fail(f"{odd[0]}: {odd[1]} is not a finite number; give a number")
        return super().parse_args(ctx, args)

    def invoke(self, ctx):
        """A command's option out of its range or unknown is one ``error:`` line, as every other
        refusal (it was Click's usage block: four lines, the error last)."""
        try:
            return super().invoke(ctx)
        except _USAGE_ERROR as exc:
            where = exc.ctx.command_path if exc.ctx is not None else " ".join(  # (a value missing: no context)
                filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            fail(f"{exc.format_message()} (see `{where} --help`)")


app = typer.Typer(
    cls=_Commands,
    name="trident",
    help="TridentServe: stage-level serving for diffusion pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_MARKUP,
)

for command in (models.models, models.generate, models.profile, models.cost, sim.simulate, sim.sweep, sim.policies,
                serve.serve):
    app.command()(command)
app.add_typer(trace.trace_app, name="trace")
app.add_typer(runs.runs_app, name="runs")
app.command("sql")(sql.sql)
app.command("bench")(bench.bench)  # (after trace and runs: the order `trident --help` lists them in)
