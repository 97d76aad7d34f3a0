"""``gaugeport reproduce --preset real``: stages, the 8 measurements, and the three-column report."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gaugeport.core.fileio import atomic_path
from gaugeport.study.cache import StageCache
from gaugeport.study.config import StudyConfig, preset
from gaugeport.study.models import quiet_transformers
from gaugeport.study.real import checks as rc_checks
from gaugeport.study.real import report as real_report
from gaugeport.study.real.stages import build_real
from gaugeport.study.record import MARKER, Timer
from gaugeport.study.text import CORPUS


def run_real(cfg: StudyConfig, out: Path, *, use_cache: bool = True, progress: bool = True, replace: bool = False,
             cache_root: Path | None = None, quick_results: dict[str, Any] | Path | None = None) -> dict[str, Any]:
    """Build (or reuse) the real preset's stages, measure, write report.md / results.json / plots.

    ``quick_results``: the toy run for the report's middle column; default: the ``quick`` preset is run
    (its stages cached like ours) into ``out/quick-toy``. The stand-in (``real-micro``) skips it.
    """
    assert cfg.real is not None
    rc = cfg.real
    quiet_transformers()
    timer, t0 = Timer(), time.perf_counter()
    cache = StageCache(use_cache, cache_root)
    try:
        with atomic_path(out, force=replace, kind="directory") as tmp:
            tmp.mkdir()
            art = build_real(rc, cfg.seed, cache, progress, timer)
            ctx = rc_checks.RealContext(cfg, rc, art, Path(tempfile.mkdtemp(dir=tmp)), progress)
            results = _measure(ctx, timer, tmp)
            shutil.rmtree(ctx.work, ignore_errors=True)
            if isinstance(quick_results, Path):  # not there (yet): run the quick preset instead
                quick_results = _read_quick(quick_results) if quick_results.exists() else None
            if quick_results is None and not rc.stand_in:
                from gaugeport.study.toy_run import run_toy

                with timer("quick-toy-run"):
                    quick_results = run_toy(preset("quick", cfg.seed), tmp / "quick-toy", use_cache=use_cache,
                                            progress=progress, cache_root=cache_root)
            src = art.src
            results.update(
                config=cfg.to_dict(), generator=MARKER,
                model={"name": src.model_name, "control": src.control_name, "d_model": ctx.base.config.hidden_size,
                       "n_layers": ctx.base.config.num_hidden_layers, "device": rc.device,
                       "provenance": src.provenance},
                corpus=dict(CORPUS) if not rc.stand_in else {**CORPUS, "note": "stand-in: byte tokenizer"},
                cache={"enabled": use_cache, "root": str(cache.root), "hits": cache.hits, "misses": cache.misses,
                       "build_seconds": cache.built_seconds},
                training_loss={f"{name}/{run}": loss for name, reg in results["trajectory_regimes"].items()
                               for run, loss in zip(("run-1", "run-2"), reg["final_train_loss"], strict=True)},
                quick={"included": quick_results is not None})
            with timer("report"):
                real_report.plots(results, tmp)
                timer.seconds["total"] = time.perf_counter() - t0
                results["timings"] = dict(timer.seconds)
                (tmp / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
                if quick_results is not None:
                    (tmp / "quick-results.json").write_text(json.dumps(quick_results, indent=2, sort_keys=True) + "\n")
                (tmp / "report.md").write_text(real_report.markdown(results, quick_results))
    finally:
        cache.close()
    return results


def _read_quick(path: Path) -> dict[str, Any]:
    """A toy run's ``results.json`` (``--compare``), checked to be one."""
    from gaugeport.core.errors import DataError

    try:
        r = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"--compare {path}: cannot read a results.json ({exc})",
                        hint="give the results.json of `gaugeport reproduce --quick`") from None
    if not isinstance(r, dict) or r.get("generator") != MARKER or r.get("config", {}).get("real") is not None:
        raise DataError(f"--compare {path} is not the results.json of a toy `gaugeport reproduce` run",
                        hint="give the results.json of `gaugeport reproduce --quick`")
    return r


def _measure(ctx: rc_checks.RealContext, timer: Timer, out: Path) -> dict[str, Any]:
    r: dict[str, Any] = {}
    gauge: list[Any] = []
    stages: list[tuple[str, Callable[[], None]]] = [
        ("0-base-behaviour", lambda: r.update(base_behaviour=rc_checks.base_behaviour(ctx))),
        ("1-function", lambda: r.update(function_max_logit_diff=rc_checks.function_preservation(ctx))),
        ("2-matching", lambda: r.update(zip(("matching", "matching_ceiling"), rc_checks.matching(ctx), strict=True))),
        ("3-trajectory", lambda: r.update(rc_checks.trajectory(ctx))),
        ("estimate-transfer-gauge", lambda: gauge.append(rc_checks.transfer_gauge(ctx))),
        ("4-sae", lambda: r.update(sae_nmse=rc_checks.sae_transfer(ctx, gauge[0]))),
        ("5-steering", lambda: r.update(rc_checks.steering(ctx, gauge[0]))),
        ("6-merge", lambda: r.update(merge_loss=rc_checks.merge(ctx))),
        ("7-adamw", lambda: r.update(zip(("adamw_divergence", "adamw_divergence_curve"), rc_checks.adamw(ctx),
                                         strict=True))),
        ("8-audit", lambda: r.update(audit=rc_checks.audit(ctx, out))),
    ]
    bar = tqdm(stages, desc="study (real)", unit="measurement", disable=not ctx.progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        timer.run(name, fn)
    from gaugeport.core.gauge import load_gauge

    truth = load_gauge(ctx.art.gentle / "run-1-truth.safetensors")
    r["transfer_gauge"] = {"fingerprint": gauge[0].fingerprint(), "accuracy": gauge[0].accuracy(truth)["full"]}
    r["intervals"] = dict(ctx.intervals)
    return r
