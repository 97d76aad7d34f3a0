from __future__ import annotations

import typer

app = typer.Typer(
    name="gaugeport",
    help="Signed-permutation gauges for transformer checkpoints: inspect, apply, verify, align, "
    "transport artifacts, and reproduce the paper's evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
