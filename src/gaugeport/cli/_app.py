from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(
    name="gaugeport",
    help="Signed-permutation gauges for transformer checkpoints: inspect, apply, verify, align, "
    "transport artifacts, and reproduce the paper's evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Parameters (by Python name) that name files or directories a verb WRITES; every other parameter
# that names an existing path is an input. Before a verb runs, each output is checked against every
# input and every other output (symlinks resolved), with or without --force: see cli/__init__.py.
# A verb that adds an output option must list its parameter name here.
OUTPUT_PARAMS: dict[str, str] = {"out": "--out", "save_gauge_to": "--save-gauge", "report": "--report"}
FILE_OUTPUTS = ("--save-gauge", "--report")  # outputs that are always a file (--out may be either)


def _print_version(value: bool) -> None:
    if value:
        from gaugeport import __version__

        typer.echo(f"gaugeport {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                help="print the version and exit")] = False) -> None:
    pass
