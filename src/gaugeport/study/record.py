"""What every ``gaugeport reproduce`` run shares: the marker its ``results.json`` carries and a stage timer."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from gaugeport.core.errors import CheckpointError

MARKER = "gaugeport reproduce"  # results.json carries it, so a later run may replace its own report
T = TypeVar("T")


class Timer:
    """Wall seconds per stage (a stage run twice adds up)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def run(self, stage: str, fn: Callable[[], T]) -> T:
        with self(stage):
            return fn()


def is_previous_report(out: Path) -> bool:
    """True when ``out`` is an earlier report of this command; an unrelated existing path is an error."""
    if not out.exists():
        return False
    try:
        return json.loads((out / "results.json").read_text()).get("generator") == MARKER
    except (OSError, json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"output {out} exists and is not a previous `gaugeport reproduce` report",
                              hint="pass --force to replace it, or choose another --out") from None
