"""The ``trident`` app: every command, registered from its module.

Commands live in ``models`` (models, generate, profile, cost), ``sim`` (simulate, sweep),
``serve``, ``bench``, ``runs`` (runs, sql) and ``trace``; they share only ``common``. Heavy
modules (torch, diffusers) are imported inside the commands that need them, so ``trident --help``
and the simulator commands stay fast.
"""

from __future__ import annotations

import typer

from . import bench, models, runs, serve, sim, trace
from .common import HELP_MARKUP

__all__ = ["app"]

app = typer.Typer(
    name="trident",
    help="TridentServe: stage-level serving for diffusion pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=HELP_MARKUP,
)

for command in (models.models, models.generate, models.profile, models.cost, sim.simulate, sim.sweep, serve.serve):
    app.command()(command)
app.add_typer(trace.trace_app, name="trace")
app.add_typer(runs.runs_app, name="runs")
app.command("sql")(runs.sql)
app.command("bench")(bench.bench)  # (after trace and runs: the order `trident --help` lists them in)
