"""The study's cache: trained models and their checkpoints, keyed by a hash of their config.

Stages live under ``$XDG_CACHE_HOME/gaugeport/study/<stage>-<hash>/`` (default ``~/.cache``) and
appear atomically, so an interrupted run never leaves a half-written stage that a later run would
trust. ``use_cache=False`` (``--no-cache``) builds every stage in a scratch directory instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from gaugeport.core.fileio import atomic_path

BUILD_SECONDS = "build-seconds.txt"  # inside each stage: how long building it took (shown by cached re-runs)


def _read_seconds(path: Path) -> float:
    try:
        return max(0.0, float((path / BUILD_SECONDS).read_text()))
    except (OSError, ValueError):
        return float("nan")


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gaugeport"


class StageCache:
    """Builds each stage once per key; ``hits`` / ``misses`` record what was reused."""

    def __init__(self, use_cache: bool = True, root: Path | None = None) -> None:
        self.use_cache = use_cache
        self._scratch: Path | None = None
        self.root = (root or cache_root()) / "study" if use_cache else self._scratch_dir()
        self.hits: list[str] = []
        self.misses: list[str] = []
        self.seconds: dict[str, float] = {}  # build time of each stage built in this run
        self.built_seconds: dict[str, float] = {}  # build time of each stage, recorded when it was built

    def _scratch_dir(self) -> Path:
        self._scratch = Path(tempfile.mkdtemp(prefix="gaugeport-study-"))
        return self._scratch

    def stage(self, name: str, key: str, build: Callable[[Path], None]) -> Path:
        """The directory of stage ``name`` for ``key``, built by ``build(tmp_dir)`` when missing."""
        path = self.root / f"{name}-{key}"
        if path.is_dir():
            self.hits.append(name)
            self.built_seconds[name] = _read_seconds(path)
            return path
        self.misses.append(name)
        t0 = time.perf_counter()
        with atomic_path(path, exclusive=False) as tmp:  # concurrent builders of one stage: the last copy wins
            tmp.mkdir()
            build(tmp)
            (tmp / BUILD_SECONDS).write_text(f"{time.perf_counter() - t0:.3f}\n")
        self.seconds[name] = self.built_seconds[name] = time.perf_counter() - t0
        return path

    def close(self) -> None:
        """Delete the scratch directory of a ``use_cache=False`` run."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
