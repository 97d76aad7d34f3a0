"""The ``gaugeport`` command line. Each verb group lives in its own module and registers on ``app``."""

from __future__ import annotations

import sys

from gaugeport.cli import core, estimate, provenance, study, transport  # noqa: F401  (register verbs)
from gaugeport.cli._app import app
from gaugeport.core.errors import GaugeportError

EXIT_BAD_INPUT = 2


def main() -> None:
    """Entry point: bad input prints what is wrong and what to do, and exits non-zero."""
    try:
        app()
    except GaugeportError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("interrupted; no partial output was left behind", file=sys.stderr)
        sys.exit(130)
