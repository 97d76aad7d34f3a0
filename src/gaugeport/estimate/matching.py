"""From a cross-correlation to a gauge: sign-marginalized matching and its baselines (docs/estimation.md).

``C[i, j] = corr(a_i, b_j)``: rows are A's coordinates, columns B's. Methods:

``signed`` (default, the paper's)
    assignment maximizing ``sum |C[i, pi(i)]|``, then ``sign_i = sign(C[i, pi(i)])``. A coordinate
    that B stores negated is as strongly matched as one stored as is.
``raw`` (naive baseline)
    assignment maximizing ``sum C[i, pi(i)]``. A negated coordinate looks anti-correlated and is
    never chosen, so accuracy is capped by the fraction of positive signs in the true gauge.
``perm-only`` (the S_d / LayerNorm-world baseline)
    the ``signed`` assignment with every sign ``+1``: permutations right, about half the signs wrong.

Confidence per coordinate: the matched score (``|C|``; ``C`` for ``raw``) and its margin over the
best alternative in its row *or* column (how far the runner-up is; small margins flag coordinates
whose assignment is ambiguous).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from gaugeport.core.errors import DataError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.estimate.lap import linear_assignment

Method = Literal["signed", "raw", "perm-only"]
METHODS: tuple[str, ...] = ("signed", "raw", "perm-only")


class ConfidenceSummary:
    """Mean / min of a per-coordinate ``confidence`` array (shared by alignments and chain hops)."""

    confidence: np.ndarray

    @property
    def mean_confidence(self) -> float:
        return float(np.mean(self.confidence))

    @property
    def min_confidence(self) -> float:
        return float(np.min(self.confidence))


@dataclass(frozen=True)
class Match:
    """A matched gauge with per-coordinate confidence (indexed by A's coordinates)."""

    gauge: SignedPermutation
    confidence: np.ndarray  # matched score
    margin: np.ndarray | None  # matched score minus the best alternative in its row or column (None: not asked)
    method: str = "signed"
    solver: dict[str, Any] = field(default_factory=dict)

    def low_confidence(self, margin_below: float = 0.05, limit: int = 50) -> list[dict[str, float]]:
        """The coordinates whose margin is below ``margin_below``, least certain first."""
        if self.margin is None:
            raise DataError("this match was made without margins", hint="match with margins=True")
        idx = np.nonzero(self.margin < margin_below)[0]
        idx = idx[np.argsort(self.margin[idx], kind="stable")][:limit]
        return [{"coordinate": int(i), "matched": int(self.gauge.perm[i]), "sign": int(self.gauge.signs[i]),
                 "confidence": float(self.confidence[i]), "margin": float(self.margin[i])} for i in idx]


def _as_matrix(C: Any, what: str = "correlation") -> np.ndarray:
    """A square float32 / float64 numpy view of ``C`` (no copy when it already is one; finiteness is
    checked by the assignment's one pass, not here)."""
    if isinstance(C, torch.Tensor):
        t = C.detach().cpu()
        arr = t.numpy() if t.dtype in (torch.float32, torch.float64) else t.double().numpy()
    else:
        arr = np.asarray(C)
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise DataError(f"the {what} matrix must be square d x d, got shape {arr.shape}",
                        hint="A and B must have residual streams of the same width")
    if arr.shape[0] == 0:
        raise DataError(f"the {what} matrix is empty")
    return np.ascontiguousarray(arr)


def _check_finite(arr: np.ndarray, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise DataError(f"the {what} matrix contains NaN or infinite entries",
                        hint="correlations of dead (constant) coordinates are undefined; set them to 0")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise DataError(f"unknown matching method {method!r}", hint="choose one of: " + ", ".join(METHODS))


def match_scores(score: np.ndarray, sign_source: np.ndarray, method: str = "signed", *,
                 margins: bool = True) -> Match:
    """Match on a precomputed ``score`` (maximized); signs from ``sign_source`` at the matched entries.

    ``align`` uses this with ``score`` = the mean of ``|C|`` over sites and ``sign_source`` = the
    mean of ``C``. ``margins=False`` skips the margin pass (``Match.margin`` is then None).
    """
    _check_method(method)
    score = _as_matrix(score, "score")
    sign_source = _as_matrix(sign_source, "sign")
    if score.shape != sign_source.shape:
        raise DataError(f"score {score.shape} and sign {sign_source.shape} matrices differ in shape")
    _check_finite(sign_source, "sign")
    return _match(score, sign_source, method, absolute=False, margins=margins)


def _match(score: np.ndarray, sign_source: np.ndarray, method: str, *, absolute: bool, margins: bool) -> Match:
    res = linear_assignment(score, maximize=True, absolute=absolute)  # also refuses NaN / inf in score
    cols = res.cols
    rows = np.arange(score.shape[0])
    matched = sign_source[rows, cols]
    signs = np.where(matched < 0, -1, 1).astype(np.int8)  # a zero entry carries no sign: +1
    if method == "perm-only":
        signs[:] = 1
    confidence = np.abs(score[rows, cols]) if absolute else score[rows, cols]
    margin = match_margin(score, cols, absolute=absolute) if margins else None
    return Match(SignedPermutation(cols, signs), confidence.astype(np.float64), margin, method, res.to_dict())


def match_margin(score: np.ndarray, cols: np.ndarray, chunk: int = 1024, *, absolute: bool = False) -> np.ndarray:
    """Matched score minus the best unmatched score in the same row or the same column.

    ``absolute``: of ``|score|``. Row-chunked so that no second ``d x d`` array is made.
    """
    d = score.shape[0]
    rows = np.arange(d)
    matched = score[rows, cols].astype(np.float64)
    if absolute:
        matched = np.abs(matched)
    if d == 1:
        return matched
    best_row = np.empty(d)
    col_best = np.full(d, -np.inf)
    for start in range(0, d, chunk):
        block = np.abs(score[start:start + chunk]) if absolute else score[start:start + chunk].copy()
        r = np.arange(block.shape[0])
        block[r, cols[start:start + chunk]] = -np.inf
        best_row[start:start + chunk] = block.max(axis=1)
        np.maximum(col_best, block.max(axis=0), out=col_best)
    return matched - np.maximum(best_row, col_best[cols])  # column cols[i] is B's coordinate matched to row i


def match_with_confidence(C: Any, method: str = "signed", *, margins: bool = True) -> Match:
    """Estimate a gauge from one ``d x d`` cross-correlation ``C`` (numpy or torch), with confidence.

    ``|C|`` is never formed: the assignment reads ``C`` in cache-sized chunks (see ``estimate.lap``).
    ``margins=False`` skips the margin pass (``Match.margin`` is then None).
    """
    _check_method(method)
    C = _as_matrix(C)
    return _match(C, C, method, absolute=method != "raw", margins=margins)


def match_coordinates(C: Any, method: str = "signed") -> SignedPermutation:
    """The gauge mapping A's coordinates to B's that best explains the cross-correlation ``C``.

    ``method``: ``signed`` (default; sign-marginalized Hungarian), ``raw`` or ``perm-only``
    (baselines). See the module docstring. Margins are not computed (use
    :func:`match_with_confidence` for them).
    """
    return match_with_confidence(C, method, margins=False).gauge
