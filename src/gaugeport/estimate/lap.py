"""Linear assignment (LAP) on correlation-like matrices, at the cost of one pass over the matrix.

Matching two checkpoints gives a *near-permutation* score matrix: almost every row has one
dominant column. :func:`linear_assignment` exploits that in three steps.

1. **One pass** (:func:`row_best`): each row's best column, in row chunks small enough to stay in
   cache (``|S|`` is formed chunk by chunk when the score is an absolute value; nothing ``d x d``
   is allocated). Non-finite entries are caught by the same pass: a NaN or an infinity wins the
   row's argmax.
2. **The one-pass shortcut**: when every row's best column is a different column, that assignment
   is optimal, because no permutation can score more than ``sum_i max_j S_ij`` and this one scores
   exactly that. On near-permutation matrices this is the common case and the solve ends here.
3. **Augmentation** (:func:`augment_from_best`): otherwise the rows that lost a column to another
   row are inserted one by one with Jonker-Volgenant shortest augmenting paths (Dijkstra on
   reduced costs with column potentials). The row-best assignment is a valid JV starting point
   (every assigned edge is tight with all potentials zero), so the result is an exact optimum; each
   step reads only the rows it scans, one at a time. When the paths grow long (a matrix far from a
   permutation) the budget ``max_scans`` stops it and the dense solver runs instead.

Dense solver (the fallback, or ``backend=`` a named kernel): ``lap.lapjvr`` from the maintained
``lapx`` package (Jonker-Volgenant in Rust) on a float32 cost matrix; ``benchmarks/bench_lap.py``
compares it with the other ``lapx`` kernels and SciPy. SciPy is used when ``lapx`` is missing or a
kernel fails.

An earlier certified *sparse* path (top-k candidates per row, a dual certificate over the full
matrix) was removed: it was 3-11x slower than dense ``lapjvr`` at every size measured, while the
augmentation above needs no certificate pass at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from gaugeport.core.errors import DataError

Backend = Literal["auto", "lapjvr", "lapjvh", "lapjvs", "lapjv", "lapjvx", "scipy"]

# Scores are correlations (bounded by 1 in absolute value, averaged over sites), so float32 costs
# resolve differences of ~1e-7, far below the sampling noise of any correlation estimate
# (1/sqrt(n_tokens) > 1e-4 below 1e8 tokens); float32 halves the memory of a d x d cost matrix.
COST_DTYPE = np.float32
CHUNK_BYTES = 1 << 20  # rows per chunk of the one pass: about 1 MB, so the chunk stays in cache


@dataclass(frozen=True)
class Assignment:
    """``cols[i]``: the column assigned to row ``i``; how it was found."""

    cols: np.ndarray
    backend: str  # "one-pass", "augment", or the dense kernel's name
    free_rows: int = 0  # rows whose best column another row took (0: the one-pass shortcut held)
    scans: int = 0  # rows read by the augmenting paths

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "free_rows": self.free_rows, "scans": self.scans}


# ----------------------------------------------------------------------------- one pass
def row_best(score: np.ndarray, *, absolute: bool = False, maximize: bool = True) -> np.ndarray:
    """Each row's best column of ``score`` (``|score|`` with ``absolute``), in one chunked pass.

    Raises DataError when the matrix holds NaN or an infinity (both win the argmax of ``|row|``).
    """
    d, n = score.shape
    rows = max(1, CHUNK_BYTES // max(1, n * score.itemsize))
    best = np.empty(d, dtype=np.int64)
    buf = np.empty((min(rows, d), n), dtype=score.dtype)
    bad = False
    for start in range(0, d, rows):
        block = score[start:start + rows]
        b = buf[:block.shape[0]]
        np.abs(block, out=b)
        big = b.argmax(axis=1)  # NaN and +-inf win |row|'s argmax
        bad = bad or not np.all(np.isfinite(b[np.arange(b.shape[0]), big]))
        if absolute:
            best[start:start + rows] = big if maximize else b.argmin(axis=1)
        else:
            best[start:start + rows] = block.argmax(axis=1) if maximize else block.argmin(axis=1)
    if bad:
        raise DataError("the score matrix contains NaN or infinite entries",
                        hint="a correlation is undefined for dead (constant) coordinates; zero them first")
    return best


def one_pass_assignment(best: np.ndarray) -> np.ndarray | None:
    """The row-best assignment when it is a permutation (then it is optimal), else None."""
    return best if np.unique(best).size == best.size else None


# ----------------------------------------------------------------------------- augmentation
def augment_from_best(score: np.ndarray, best: np.ndarray, *, absolute: bool = False, maximize: bool = True,
                      max_scans: int | None = None) -> tuple[np.ndarray, int, int] | None:
    """Exact optimum from the row-best start: ``(cols, free rows, rows scanned)``, or None over budget.

    Costs are ``c_ij = -S_ij`` (``+S_ij`` when minimizing), read one row at a time in float64.
    Invariant (JV): ``c_ij - v_j >= c_{i,x_i} - v_{x_i}`` for every assigned row ``i``; it holds at
    the start with ``v = 0`` because every row holds its own best column.
    """
    d = score.shape[0]
    budget = max(256, d // 2) if max_scans is None else max_scans
    sign = -1.0 if maximize else 1.0

    def cost_row(i: int) -> np.ndarray:
        r = score[i].astype(np.float64)
        return sign * (np.abs(r) if absolute else r)

    x = np.full(d, -1, dtype=np.int64)  # row -> column
    y = np.full(d, -1, dtype=np.int64)  # column -> row
    cols, first = np.unique(best, return_index=True)
    x[first], y[cols] = cols, first
    free = np.nonzero(x < 0)[0]
    v = np.zeros(d)
    scans = 0
    dist = np.empty(d)
    open_dist = np.empty(d)  # dist with scanned columns at +inf, for the argmin
    pred = np.empty(d, dtype=np.int64)
    new = np.empty(d)
    better = np.empty(d, dtype=bool)
    unscanned = np.empty(d, dtype=bool)
    for f in free:
        np.subtract(cost_row(int(f)), v, out=dist)
        open_dist[:] = dist
        pred[:] = f
        unscanned[:] = True
        ready: list[int] = []
        while True:
            j = int(open_dist.argmin())
            mu = dist[j]
            if y[j] < 0:
                break
            ready.append(j)
            open_dist[j] = np.inf
            unscanned[j] = False
            i = int(y[j])
            scans += 1
            if scans > budget:
                return None
            ci = cost_row(i)
            # through row i: mu + reduced cost of (i, k) relative to its assigned edge (i, j)
            np.subtract(ci, v, out=new)
            new += mu - (ci[j] - v[j])
            np.less(new, open_dist, out=better)
            better &= unscanned  # a scanned column's distance is final
            open_dist[better] = new[better]
            dist[better] = new[better]
            pred[better] = i
        if ready:
            r = np.asarray(ready)
            v[r] += dist[r] - mu
        while True:  # flip the alternating path ending at the free column j
            i = int(pred[j])
            y[j] = i
            x[i], j = j, int(x[i])
            if i == f:
                break
    return x, int(free.size), scans


# ----------------------------------------------------------------------------- dense
def _lapx(name: str) -> Callable[[np.ndarray], np.ndarray]:
    import lap  # the ``lapx`` distribution installs the ``lap`` module

    fn = getattr(lap, name)

    def solve(cost: np.ndarray) -> np.ndarray:
        if name == "lapjv":
            return np.asarray(fn(cost, return_cost=False)[0])
        if name == "lapjvs":
            return np.asarray(fn(cost, return_cost=False, jvx_like=False)[0])
        rows, cols = fn(cost, return_cost=False)
        out = np.empty(cost.shape[0], dtype=np.int64)
        out[np.asarray(rows)] = np.asarray(cols)
        return out

    return solve


def _scipy(cost: np.ndarray) -> np.ndarray:
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    out = np.empty(cost.shape[0], dtype=np.int64)
    out[rows] = cols
    return out


def dense_solvers() -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Every dense backend importable here (``scipy`` always)."""
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    try:
        import lap

        for name in ("lapjvr", "lapjvh", "lapjvs", "lapjv", "lapjvx"):
            if hasattr(lap, name):
                out[name] = _lapx(name)
    except ImportError:
        pass
    out["scipy"] = _scipy
    return out


def solve_dense(cost: np.ndarray, backend: Backend = "auto") -> tuple[np.ndarray, str]:
    """Minimum-cost assignment of a square cost matrix: ``(cols, backend used)``."""
    _check_square(cost)
    solvers = dense_solvers()
    order = ["lapjvr", "lapjvh", "lapjv", "scipy"] if backend == "auto" else [backend]
    for name in order:
        if name not in solvers:
            if backend != "auto":
                raise DataError(f"LAP backend {backend!r} is not available here",
                                hint="install lapx (pip install lapx) or use backend='scipy'")
            continue
        try:
            cols = solvers[name](cost)
        except (ValueError, RuntimeError, MemoryError):
            if backend != "auto" or name == "scipy":
                raise
            continue  # a native kernel refused: the next one (finally scipy) takes over
        if _is_permutation(cols):
            return cols.astype(np.int64), name
    raise DataError("no LAP solver produced a valid assignment")  # unreachable: scipy raises first


def dense_cost(score: np.ndarray, *, absolute: bool = False, maximize: bool = True) -> np.ndarray:
    """The float32 cost matrix the dense kernels minimize (one pass, one d x d allocation)."""
    cost = np.empty(score.shape, dtype=COST_DTYPE)
    if absolute:
        np.abs(score, out=cost, casting="same_kind")
    else:
        cost[...] = score
    if maximize:
        np.negative(cost, out=cost)
    return cost


# ----------------------------------------------------------------------------- entry point
def linear_assignment(score: np.ndarray, *, maximize: bool = True, absolute: bool = False,
                      backend: Backend = "auto", max_scans: int | None = None) -> Assignment:
    """Optimal assignment of a square score (or, ``maximize=False``, cost) matrix.

    ``absolute``: assign on ``|score|`` without forming it. ``backend="auto"`` runs the one pass,
    the shortcut and the augmentation (module docstring), and the dense ``lapjvr`` only when the
    augmentation exceeds ``max_scans`` rows (default ``max(256, d / 2)``); a named backend runs that
    dense kernel directly. The answer is optimal either way (dense kernels: up to the float32
    rounding of the costs, see ``COST_DTYPE``).
    """
    s = np.asarray(score)
    _check_square(s)
    if s.shape[0] == 0:
        return Assignment(np.zeros(0, dtype=np.int64), "none")
    if s.dtype not in (np.float32, np.float64):
        s = s.astype(np.float64)
    best = row_best(s, absolute=absolute, maximize=maximize)
    if backend == "auto":
        cols = one_pass_assignment(best)
        if cols is not None:
            return Assignment(cols, "one-pass")
        found = augment_from_best(s, best, absolute=absolute, maximize=maximize, max_scans=max_scans)
        if found is not None:
            return Assignment(found[0], "augment", found[1], found[2])
    cols, name = solve_dense(dense_cost(s, absolute=absolute, maximize=maximize), backend)
    return Assignment(cols, name)


def _check_square(m: np.ndarray) -> None:
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise DataError(f"the assignment needs a square matrix, got shape {m.shape}")


def _is_permutation(cols: np.ndarray) -> bool:
    return cols.ndim == 1 and np.array_equal(np.sort(cols), np.arange(cols.shape[0]))
