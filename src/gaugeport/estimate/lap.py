"""Linear assignment (LAP) solvers: a dense solver chosen by benchmark, and a certified sparse one.

Dense (the default): ``lap.lapjvr`` from the maintained ``lapx`` package (a Jonker-Volgenant solver
in Rust). ``benchmarks/bench_lap.py`` compared it with the other ``lapx`` kernels (``lapjv``,
``lapjvx``, ``lapjvs``, ``lapjvh``), the ``lapjv`` package and ``scipy.optimize.linear_sum_assignment``
on correlation-like matrices; ``lapjvr`` (with ``lapjvh``, its sibling) was the fastest from
d = 4096 up, 0.03-0.09x SciPy's time, and within 0.03x of the best at d = 1024 (figures in
``benchmarks/bench_lap.json``). SciPy is the fallback when ``lapx`` is missing or a kernel fails.

Sparse (opt-in, ``linear_assignment(..., sparse=True)``): matching two checkpoints gives a
*near-permutation* score matrix. :func:`sparse_assignment` solves the LAP on the top-``k``
candidates of each row only (``lapmod``), then proves the result optimal for the *full* matrix
with a dual certificate (LP duality: column potentials ``v`` from shortest paths in the sparse
residual graph, row potentials ``u`` from the matched edges; if every reduced cost
``c_ij - u_i - v_j`` of the dense matrix is ``>= -tol`` no assignment is cheaper). Violating
entries are added as candidates and the solve repeated; when optimality still cannot be proven it
returns None and the dense solver runs. It is correct but, measured, 3.5-12x slower than dense
``lapjvr`` on these matrices (and declines on weak ones at d >= 8192): both are dominated by
O(d^2) passes (top-k selection and the certificate here, JV's column reduction there), and JV's
passes are cheaper. Its sparse solve itself needs only O(k d) memory.
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
DEFAULT_K = 8


@dataclass(frozen=True)
class Assignment:
    """``cols[i]``: the column assigned to row ``i``; how it was found."""

    cols: np.ndarray
    backend: str
    sparse: bool  # True when the certified sparse path produced the result
    rounds: int = 0  # sparse candidate rounds used (0: dense)

    def to_dict(self) -> dict[str, object]:
        return {"backend": self.backend, "sparse": self.sparse, "rounds": self.rounds}


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
    _check_cost(cost)
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


# ----------------------------------------------------------------------------- sparse + certificate
def top_k_candidates(cost: np.ndarray, k: int, columns: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Candidate edges: the ``k`` cheapest entries of every row (and of every column with ``columns``)."""
    import torch

    d = cost.shape[0]
    k = min(k, d)
    t = torch.from_numpy(np.ascontiguousarray(cost))
    rows = [np.repeat(np.arange(d), k)]
    cols = [torch.topk(t, k, dim=1, largest=False, sorted=False).indices.numpy().ravel()]
    if columns:  # a column-wise top-k is a strided (slower) pass: only when rows alone leave no perfect matching
        rows.append(torch.topk(t, k, dim=0, largest=False, sorted=False).indices.numpy().T.ravel())
        cols.append(np.repeat(np.arange(d), k))
    return _dedupe(np.concatenate(rows), np.concatenate(cols), d)


def _dedupe(rows: np.ndarray, cols: np.ndarray, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted by row, then column (the CSR layout ``lapmod`` needs), without repeats."""
    key = np.unique(rows.astype(np.int64) * d + cols)
    return key // d, key % d


def _solve_sparse(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Min-cost perfect matching restricted to the candidate edges; None when none exists."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    d = cost.shape[0]
    graph = csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(d, d))
    if np.any(maximum_bipartite_matching(graph, perm_type="column") < 0):
        return None  # lapmod needs a perfect matching to exist among the candidates
    try:
        import lap

        starts = np.searchsorted(rows, np.arange(d + 1)).astype(np.int32)
        x, _ = lap.lapmod(d, cost[rows, cols].astype(np.float64), starts, cols.astype(np.int32),
                          return_cost=False)
        out = np.asarray(x, dtype=np.int64)
        return out if _is_permutation(out) else None
    except (ImportError, ValueError):
        from scipy.sparse.csgraph import min_weight_full_bipartite_matching

        w = cost[rows, cols].astype(np.float64)
        w = w - w.min() + 1.0  # csgraph drops explicit zeros: keep every weight strictly positive
        r, c = min_weight_full_bipartite_matching(csr_matrix((w, (rows, cols)), shape=(d, d)))
        out = np.empty(d, dtype=np.int64)
        out[r] = c
        return out


def dual_potentials(cost: np.ndarray, rows: np.ndarray, cols: np.ndarray, match: np.ndarray,
                    max_iter: int = 256) -> tuple[np.ndarray, np.ndarray] | None:
    """Dual potentials ``(u, v)`` of a matching optimal on the candidate edges, or None.

    Column potentials solve ``v_j <= v_{match[i]} + c_ij - c_{i,match[i]}`` for every candidate
    ``(i, j)`` (Bellman-Ford from a virtual source joined to every column at cost 0); row potentials
    then make every matched edge tight, ``u_i = c_{i,match[i]} - v_{match[i]}``. A negative cycle
    (the matching is not optimal on the candidates) shows up as no convergence and returns None.
    """
    d = cost.shape[0]
    matched_cost = cost[np.arange(d), match].astype(np.float64)
    src = match[rows]
    w = cost[rows, cols].astype(np.float64) - matched_cost[rows]
    keep = cols != src
    src, dst, w = src[keep], cols[keep], w[keep]
    v = np.zeros(d)
    for _ in range(max_iter):
        cand = v[src] + w
        new = v.copy()
        np.minimum.at(new, dst, cand)
        if np.array_equal(new, v):
            return matched_cost - v[match], v
        v = new
    return None


def violations(cost: np.ndarray, u: np.ndarray, v: np.ndarray, tol: float,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Entries whose reduced cost ``c_ij - u_i - v_j`` is below ``-tol`` (row-chunked: O(chunk * d) memory).

    Rows are screened first with one fused pass (``min_j c_ij - v_j >= u_i - tol`` proves a row);
    only rows that fail are expanded into entries.
    """
    import torch

    t = torch.from_numpy(np.ascontiguousarray(cost))
    vt = torch.from_numpy(v).to(t.dtype)
    bad_r, bad_c = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for start in range(0, cost.shape[0], chunk):
        block = t[start:start + chunk] - vt
        rmin = block.min(dim=1).values.double().numpy()
        suspect = np.nonzero(rmin - u[start:start + chunk] < -tol)[0]
        for i in suspect:  # few rows, if any: exact float64 check of each entry
            red = cost[start + i].astype(np.float64) - u[start + i] - v
            js = np.nonzero(red < -tol)[0]
            bad_r.append(np.full(len(js), start + i))
            bad_c.append(js)
    return np.concatenate(bad_r), np.concatenate(bad_c)


def sparse_assignment(cost: np.ndarray, k: int = DEFAULT_K, max_rounds: int = 3,
                      tol: float | None = None) -> tuple[np.ndarray, int] | None:
    """Certified-optimal assignment from top-``k`` candidates: ``(cols, rounds)``, or None when the
    optimum could not be proven within ``max_rounds`` (the caller then solves densely)."""
    _check_cost(cost)
    d = cost.shape[0]
    # reduced costs are computed in float64 from float32 costs: allow the float32 rounding of each term
    tol = float(np.finfo(cost.dtype).eps * 8 * max(1.0, float(np.abs(cost).max()))) if tol is None else tol
    rows, cols = top_k_candidates(cost, k)
    for rnd in range(1, max_rounds + 1):
        match = _solve_sparse(cost, rows, cols)
        if match is None:  # widen: more candidates per row, and per column too
            rows, cols = top_k_candidates(cost, min(d, 4 * k * rnd), columns=True)
            continue
        duals = dual_potentials(cost, rows, cols, match)
        if duals is None:
            return None
        bad_r, bad_c = violations(cost, *duals, tol=tol)
        if bad_r.size == 0:
            return match, rnd
        if bad_r.size > 16 * d:  # far from optimal on the candidates: the dense solve is cheaper
            return None
        rows, cols = _dedupe(np.concatenate([rows, bad_r]), np.concatenate([cols, bad_c]), d)
    return None


# ----------------------------------------------------------------------------- entry point
def linear_assignment(score: np.ndarray, *, maximize: bool = True, backend: Backend = "auto",
                      sparse: bool = False, k: int = DEFAULT_K) -> Assignment:
    """Optimal assignment of a square score (or cost) matrix.

    Dense by default: on correlation-like matrices the dense ``lapjvr`` beat the certified sparse
    path at every size measured (``benchmarks/bench_lap.json``), because both are dominated by
    O(d^2) passes over the matrix and JV's passes are cheaper. ``sparse=True`` runs the certified
    sparse path first (falling back to dense when it cannot prove optimality); the answer is optimal
    either way, up to the float32 rounding of the costs (see ``COST_DTYPE``).
    """
    s = np.asarray(score)
    if s.ndim != 2 or s.shape[0] != s.shape[1]:
        raise DataError(f"the assignment needs a square matrix, got shape {s.shape}")
    if s.shape[0] == 0:
        return Assignment(np.zeros(0, dtype=np.int64), "none", False)
    if not np.all(np.isfinite(s)):
        raise DataError("the score matrix contains NaN or infinite entries",
                        hint="a correlation is undefined for dead (constant) coordinates; zero them first")
    cost = (s.max() - s if maximize else s - s.min()).astype(COST_DTYPE)  # non-negative, as sparse solvers need
    if sparse:
        found = sparse_assignment(cost, k=k)
        if found is not None:
            return Assignment(found[0], "sparse-certified", True, found[1])
    cols, name = solve_dense(cost, backend)
    return Assignment(cols, name, False)


def _check_cost(cost: np.ndarray) -> None:
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1]:
        raise DataError(f"the assignment needs a square matrix, got shape {cost.shape}")


def _is_permutation(cols: np.ndarray) -> bool:
    return cols.ndim == 1 and np.array_equal(np.sort(cols), np.arange(cols.shape[0]))
