"""The reproduction study behind ``gaugeport reproduce`` (the paper's claims at 2-core CPU scale; docs/).

``config`` (presets, cache keys), ``cache`` (trained stages under ``$XDG_CACHE_HOME/gaugeport``),
``models`` + ``stages`` (training), ``sae``, ``probes``, the measurements (``estimation_checks``,
``transport_checks``, ``audit_check``), ``report`` and ``run`` (the whole job)::

    from gaugeport.study import preset, run_study
    results = run_study(preset("quick"), "reports/latest")
"""

from __future__ import annotations

from gaugeport.study.config import StudyConfig, preset
from gaugeport.study.run import run_study

__all__ = ["StudyConfig", "preset", "run_study"]
