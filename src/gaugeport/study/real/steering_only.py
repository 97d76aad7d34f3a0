"""Rows 0, 5a and 5b of the real study alone: the base's behaviour gaps, the steering sweep and gate on the
base, and (only for a direction that passes) its transport to gentle run-1 through the estimated gauge.

    python -m gaugeport.study.real.steering_only --out reports/real-steering

Needs only the base and the gentle regime's first trajectory stage (cached like the full study's), so it
runs in minutes where the full study needs its aggressive fine-tunes too. Writes ``steering.json`` and
``steering.md`` atomically into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from gaugeport.core.fileio import atomic_path
from gaugeport.study import steer
from gaugeport.study.cache import StageCache
from gaugeport.study.config import preset
from gaugeport.study.real import checks
from gaugeport.study.real.report import _refusal, _refusal_why, _steering, _steering_why
from gaugeport.study.real.stages import build_real


def measure(out: Path, seed: int = 0, stand_in: bool = False, cache_root: Path | None = None,
            force: bool = False, layers: tuple[int, ...] | None = None) -> dict[str, Any]:
    """``layers``: sweep only these (default: the preset's ``steering_layers``)."""
    from dataclasses import replace

    cfg = preset("real-micro" if stand_in else "real", seed)
    if layers:
        cfg = replace(cfg, real=replace(cfg.real, steering_layers=tuple(layers)))
    rc = cfg.real
    assert rc is not None
    t0 = time.perf_counter()
    cache = StageCache(True, cache_root)
    gentle = f"trajectory-{rc.gentle.name}"
    art = build_real(rc, seed, cache, progress=False, only={gentle})
    with atomic_path(Path(out), force=force) as tmp:
        tmp.mkdir()
        ctx = checks.RealContext(cfg, rc, art, Path(tempfile.mkdtemp(dir=tmp)), False)
        r: dict[str, Any] = {"base_behaviour": checks.base_behaviour(ctx)}
        gauge = checks.transfer_gauge(ctx)
        r.update(checks.steering(ctx, gauge))
        r.update(intervals=dict(ctx.intervals), config=cfg.to_dict(), model=art.src.model_name,
                 seconds=time.perf_counter() - t0, cache_hits=cache.hits, cache_misses=cache.misses)
        import shutil

        shutil.rmtree(ctx.work, ignore_errors=True)
        (tmp / "steering.json").write_text(json.dumps(r, indent=2, sort_keys=True) + "\n")
        (tmp / "steering.md").write_text(markdown(r))
    cache.close()
    return r


def markdown(r: dict[str, Any]) -> str:
    iv = r["intervals"]

    def gap(k: str) -> str:
        x = iv[f"base.{k}"]
        return f"{x['value']:.2f} [{x['lo']:.2f}, {x['hi']:.2f}]"

    lines = [f"# Steering and refusal directions on {r['model']}, checked on the base before transport", "",
             f"Model's own next-token log-odds gaps (95% bootstrap over prompt pairs): sentiment {gap('polarity_gap')} "
             f"nats, refusal {gap('refusal_gap')} nats. Sentiment pairs: {r.get('steering_pairs', '')}.", "",
             "| row | this run | explained |", "|---|---|---|",
             f"| 5a. sentiment steering preserved | {_steering(r)} | {_steering_why(r, None)} |",
             f"| 5b. refusal direction | {_refusal(r)} | {_refusal_why(r, None)} |", ""]
    lines += steer.sweep_markdown(r.get("steering_sweep"), "Sentiment (positive minus negative)")
    lines += steer.sweep_markdown(r.get("refusal_sweep"), "Refusal (harmful minus harmless requests)")
    lines += [f"Wall time {r['seconds']:.0f} s; stages reused: {', '.join(r['cache_hits']) or 'none'}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stand-in", action="store_true", help="the tiny stand-in models (seconds; tests)")
    p.add_argument("--force", action="store_true", help="replace --out")
    p.add_argument("--layers", type=int, nargs="+", help="sweep only these layers (a quick look; default: all of "
                   "the preset's)")
    a = p.parse_args(argv)
    measure(a.out, a.seed, a.stand_in, force=a.force, layers=tuple(a.layers or ()))


if __name__ == "__main__":
    main()
