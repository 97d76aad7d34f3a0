"""Intervals for the study's figures.

* :func:`bootstrap`: a percentile bootstrap over the units a metric averages (prompts, tokens, rows):
  resample the units with replacement, recompute the statistic, take the central ``level`` quantiles;
* :func:`spread`: several independent draws (hidden gauges, training seeds): the mean and the range
  (min to max) of the draws, stated as such.

Every interval is an :class:`Interval`, stored in ``results.json`` as ``{"value", "lo", "hi", "n", "how"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gaugeport.core.errors import DataError

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A figure and its interval: ``value`` (the statistic on all units, or the mean of the draws),
    ``lo``/``hi``, the number of units or draws ``n``, and ``how`` it was made."""

    value: float
    lo: float
    hi: float
    n: int
    how: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def excludes(self, x: float) -> bool:
        """True when ``x`` lies outside ``[lo, hi]`` (the interval supports a difference from ``x``)."""
        return x < self.lo or x > self.hi


def bootstrap(units: Any, stat: Callable[[np.ndarray], float] | None = None, *, n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = 0, what: str = "units") -> Interval:
    """Percentile bootstrap of ``stat`` over the rows of ``units`` (axis 0; default statistic: the mean).

    ``units`` may be 2-D (one row per unit, several columns: e.g. a ratio of two per-prompt means).
    """
    x = np.asarray(units, dtype=np.float64)
    if x.ndim == 0 or len(x) < 2:
        raise DataError(f"a bootstrap needs at least 2 {what}, got {x.size}")
    if not np.isfinite(x).all():
        raise DataError(f"the {what} to bootstrap are not all finite")
    fn = stat if stat is not None else (lambda a: float(np.mean(a, axis=0)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    draws = np.array([fn(x[i]) for i in idx], dtype=np.float64)
    draws = draws[np.isfinite(draws)]
    alpha = (1 - level) / 2
    lo, hi = np.quantile(draws, [alpha, 1 - alpha])
    return Interval(float(fn(x)), float(lo), float(hi), len(x),
                    f"{level:.0%} percentile bootstrap over {len(x)} {what}")


def ratio_of_means(a: np.ndarray) -> float:
    """Column 1's mean over column 0's (e.g. the transported vector's effect over the original's)."""
    return float(np.mean(a[:, 1]) / np.mean(a[:, 0]))


def ratio_of_sums(a: np.ndarray) -> float:
    """Column 0's sum over column 1's (e.g. squared error over variance: an NMSE)."""
    return float(np.sum(a[:, 0]) / np.sum(a[:, 1]))


def spread(draws: Sequence[float], what: str = "draws") -> Interval:
    """Independent draws: their mean, and the range min..max over all of them."""
    x = np.asarray(list(draws), dtype=np.float64)
    if x.size == 0:
        raise DataError(f"no {what} to summarize")
    return Interval(float(x.mean()), float(x.min()), float(x.max()), int(x.size),
                    f"mean, min..max over {x.size} {what}")


def fmt(iv: dict[str, Any] | Interval, spec: str = ".3g", scale: float = 1.0, unit: str = "") -> str:
    """``value [lo, hi]`` with one format; ``scale=100, unit='%'`` for percentages."""
    d = iv.to_dict() if isinstance(iv, Interval) else iv
    v, lo, hi = (format(d[k] * scale, spec) for k in ("value", "lo", "hi"))
    return f"{v}{unit} [{lo}, {hi}]"
