"""The toy presets (``micro``, ``quick``, ``full``): train (or reuse) the models, measure, write the report."""

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
from gaugeport.study import audit_check, estimation_checks, independent_merge, report, transport_checks
from gaugeport.study.cache import StageCache
from gaugeport.study.config import StudyConfig
from gaugeport.study.context import Context
from gaugeport.study.models import quiet_transformers
from gaugeport.study.record import MARKER, Timer
from gaugeport.study.stages import build_all


def run_toy(cfg: StudyConfig, out: Path, *, use_cache: bool = True, progress: bool = True, replace: bool = False,
            cache_root: Path | None = None) -> dict[str, Any]:
    """One toy preset into ``out`` (atomically; ``replace``: an earlier report there may be replaced)."""
    quiet_transformers()
    timer, t0 = Timer(), time.perf_counter()
    cache = StageCache(use_cache, cache_root)
    try:
        with atomic_path(out, force=replace, kind="directory") as tmp:
            tmp.mkdir()
            with timer("training"):
                art = build_all(cfg, cache, progress)
            ctx = Context(cfg, art, Path(tempfile.mkdtemp(dir=tmp)), progress)
            results = _measure(ctx, timer, tmp)
            timer.seconds.update({f"train-{k}": v for k, v in cache.seconds.items()})
            timer.seconds["total"] = time.perf_counter() - t0
            results.update(config=cfg.to_dict(), timings=timer.seconds, generator=MARKER,
                           cache={"enabled": use_cache, "root": str(cache.root), "hits": cache.hits,
                                  "misses": cache.misses},
                           training_loss={k: v[-1] for k, v in art.losses.items()})
            report.plots(results, tmp)
            (tmp / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
            (tmp / "report.md").write_text(report.markdown(results))
            shutil.rmtree(ctx.work, ignore_errors=True)
    finally:
        cache.close()
    return results


def _measure(ctx: Context, timer: Timer, out: Path) -> dict[str, Any]:
    r: dict[str, Any] = {}
    base, target = ctx.model(ctx.art.base), ctx.model(ctx.transfer_target())
    gauge: list[Any] = []
    stages: list[tuple[str, Callable[[], None]]] = [
        ("0-base-behaviour", lambda: r.update(base_behaviour=transport_checks.base_behaviour(ctx))),
        ("1-function", lambda: r.update(function_max_logit_diff=estimation_checks.function_preservation(ctx))),
        ("2-matching", lambda: r.update(zip(("matching", "matching_ceiling"), estimation_checks.matching(ctx),
                                            strict=True))),
        ("3-trajectory", lambda: r.update(zip(("trajectory", "trajectory_curve"), estimation_checks.trajectory(ctx),
                                              strict=True))),
        ("estimate-transfer-gauge", lambda: gauge.append(transport_checks.estimated_gauge(ctx, base, target))),
        ("4-sae", lambda: r.update(sae_nmse=transport_checks.sae_transfer(ctx, gauge[0]))),
        ("5-steering", lambda: r.update(transport_checks.steering(ctx, gauge[0]))),
        ("6-merge", lambda: r.update(merge_loss=transport_checks.merge(ctx, _merge_gauge(ctx)))),
        ("7-adamw", lambda: r.update(zip(("adamw_divergence", "adamw_divergence_curve"), transport_checks.adamw(ctx),
                                         strict=True))),
        ("8-audit", lambda: r.update(audit=audit_check.audit(ctx, out))),
        ("9-independent-merge", lambda: r.update(independent_merge=independent_merge.measure(ctx))),
    ]
    bar = tqdm(stages, desc="study", unit="measurement", disable=not ctx.progress)
    for name, fn in bar:
        bar.set_postfix_str(name)
        timer.run(name, fn)
    r["transfer_gauge"] = {"fingerprint": gauge[0].fingerprint(),
                           "accuracy": gauge[0].accuracy(ctx.art.runs[0].truth(ctx.cfg.transfer_step))["full"]}
    r["intervals"] = dict(ctx.intervals)
    return r


def _merge_gauge(ctx: Context):  # noqa: ANN202 (SignedPermutation; imported lazily)
    """Run-1 -> run-2 at ``merge_step`` by composing the chain through the base."""
    from gaugeport.estimate.trajectory import align_chain

    s = ctx.cfg.merge_step
    steps = [t for t in ctx.cfg.checkpoint_steps if t <= s]
    run1, run2 = ctx.art.runs
    models = [ctx.model(run1.checkpoint(t)) for t in reversed(steps)] + [ctx.model(ctx.art.base)] + \
        [ctx.model(run2.checkpoint(t)) for t in steps]
    return align_chain(models, ctx.batches(), progress=False).gauge
