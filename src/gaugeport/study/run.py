"""``gaugeport reproduce``: one entry point for every preset.

The toy presets run :func:`.toy_run.run_toy`, the real ones :func:`.real.run.run_real` (which runs the
quick toy preset for its middle column); neither imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gaugeport.study.config import StudyConfig
from gaugeport.study.record import MARKER, is_previous_report

__all__ = ["MARKER", "run_study"]


def run_study(cfg: StudyConfig, out: str | Path, *, use_cache: bool = True, progress: bool = True,
              force: bool = False, cache_root: Path | None = None,
              quick_results: dict[str, Any] | Path | None = None) -> dict[str, Any]:
    """Run the whole study and write ``report.md``, ``results.json``, plots and the audit into ``out``.

    ``out`` appears atomically. An existing ``out`` is replaced only when it is an earlier report of
    this command (or with ``force``). ``quick_results`` gives the real presets the toy run to compare
    with, or the path of its ``results.json`` (read when needed; default: run the quick preset, cached).
    """
    out = Path(out)
    replace = force or is_previous_report(out)
    if cfg.real is not None:
        from gaugeport.study.real.run import run_real

        return run_real(cfg, out, use_cache=use_cache, progress=progress, replace=replace, cache_root=cache_root,
                        quick_results=quick_results)
    from gaugeport.study.toy_run import run_toy

    return run_toy(cfg, out, use_cache=use_cache, progress=progress, replace=replace, cache_root=cache_root)
