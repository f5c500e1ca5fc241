"""The ``trident`` command: a thin wrapper over library calls.

Heavy modules (torch, diffusers) are imported inside the commands that need them, so
``trident --help`` and the simulator commands stay fast.
"""

from __future__ import annotations

import logging

import typer

app = typer.Typer(
    name="trident",
    help="TridentServe: stage-level serving for diffusion pipelines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


if __name__ == "__main__":  # pragma: no cover
    app()
