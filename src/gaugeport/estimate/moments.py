"""Streaming, mergeable cross-moments of paired activations (A and B at one site).

Memory is O(d^2) per site whatever the token count. The accumulator keeps *centred* statistics
(count, means, sums of squared deviations, and the centred cross-moment) and merges batches and
shards with Chan et al.'s pairwise update, so nothing of the form ``sum(a b) - n mean_a mean_b``
is ever formed: that difference cancels catastrophically once ``n`` is large and the means are
large relative to the spread (as residual streams with massive activations are). All state is
float64. Each batch is centred on its own mean before its product is taken; that product may run
in float32 (``batch_dtype``), which keeps collection cheap: a batch holds a few thousand tokens,
so its float32 sum is accurate to ~1e-6 relative, and every accumulation across batches is float64.

The raw sums of the documented interface (``sum_a``, ``sumsq_a``, ``cross`` = ``sum a b^T``, ...)
are available as properties derived from the centred state.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.errors import DataError

FORMAT_NAME = "gaugeport.moments"
FORMAT_VERSION = "1"
# A coordinate is dead (constant up to rounding, so its correlation is undefined) when its variance is
# below DEAD_RTOL_MAX of the largest variance at the site (massive activations reach ~1e8 times the
# typical variance, far above this), or its standard deviation is below DEAD_RTOL_MEAN of its mean
# (float64 rounding of a constant; float32 constants give exactly zero after batch centring).
DEAD_RTOL_MAX = 1e-12
DEAD_RTOL_MEAN = 1e-10
_FIELDS = ("count", "mean_a", "mean_b", "m2_a", "m2_b", "comoment")

ArrayLike = np.ndarray | torch.Tensor


class NonFiniteError(DataError):
    """NaN or infinite values in the rows given to :meth:`CrossMoments.update` (``which``: "a" or "b")."""

    def __init__(self, which: str) -> None:
        super().__init__(f"{which} contains NaN or infinite values",
                         hint="the model overflowed on this data (try float32 weights) or a weight is NaN")
        self.which = which


def _as_rows(x: ArrayLike, what: str) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x.detach()
    if t.ndim != 2:
        raise DataError(f"{what} must have shape [n_tokens, d], got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    return t


MEMORY_SHARE = 0.8  # the moments may take this share of the memory available; the rest is the models' blocks


def moment_bytes(n_sites: int, d: int) -> int:
    """Memory the moments of ``n_sites`` sites of width ``d`` hold: one ``d x d`` float64 co-moment and four
    float64 ``d``-vectors each (what :class:`CrossMoments` allocates)."""
    return n_sites * (d * d + 4 * d) * 8


def available_memory_bytes() -> int | None:
    """``MemAvailable`` of ``/proc/meminfo`` (memory that can be had without swapping, page cache included);
    None where the kernel does not say (not Linux)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_moment_memory(n_sites: int, d: int, available: int | None = None) -> None:
    """Refuse, before any model runs, a collection whose moments alone would not fit in memory (at Llama-3-70B
    width the default sites hold 86 GB): better a refusal that says which ``--site`` list fits than a run the
    kernel kills hours in. ``available`` defaults to :func:`available_memory_bytes` (no check when unknown)."""
    avail = available_memory_bytes() if available is None else available
    need = moment_bytes(n_sites, d)
    if avail is None or need <= MEMORY_SHARE * avail:
        return
    per_site = moment_bytes(1, d)
    fits = int(MEMORY_SHARE * avail // per_site)
    raise DataError(f"the moments of {n_sites} sites at d={d} need {need / 1e9:.1f} GB, and this machine has "
                    f"{avail / 1e9:.1f} GB of memory available",
                    hint=f"each site holds {per_site / 1e9:.2f} GB: restrict --site to at most {fits} sites "
                    "(e.g. a few resid_post.L), split the sites over several collect runs, or collect on a "
                    "machine with more memory")


class CrossMoments:
    """Centred first and second moments of a pair of streams ``a`` (width ``d_a``) and ``b`` (``d_b``)."""

    def __init__(self, d_a: int, d_b: int | None = None, *, batch_dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> None:
        d_b = d_a if d_b is None else d_b
        if d_a <= 0 or d_b <= 0:
            raise DataError(f"moment widths must be positive, got d_a={d_a}, d_b={d_b}")
        self.d_a, self.d_b = int(d_a), int(d_b)
        self.batch_dtype = batch_dtype
        dev = torch.device(device) if device is not None else torch.device("cpu")
        f64 = {"dtype": torch.float64, "device": dev}
        self.count = 0.0
        self.mean_a = torch.zeros(self.d_a, **f64)
        self.mean_b = torch.zeros(self.d_b, **f64)
        self.m2_a = torch.zeros(self.d_a, **f64)  # sum of squared deviations from the mean
        self.m2_b = torch.zeros(self.d_b, **f64)
        self.comoment = torch.zeros(self.d_a, self.d_b, **f64)  # sum (a - mean_a)(b - mean_b)^T

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, a: ArrayLike, b: ArrayLike) -> CrossMoments:
        """Add ``n`` paired rows: ``a`` is ``[n, d_a]``, ``b`` is ``[n, d_b]`` (numpy or torch)."""
        ta, tb = _as_rows(a, "a"), _as_rows(b, "b")
        if ta.shape[0] != tb.shape[0]:
            raise DataError(f"a and b must pair the same tokens: {ta.shape[0]} rows vs {tb.shape[0]}")
        if ta.shape[1] != self.d_a or tb.shape[1] != self.d_b:
            raise DataError(f"width mismatch: moments are {self.d_a} x {self.d_b}, "
                            f"got rows of width {ta.shape[1]} and {tb.shape[1]}")
        n = ta.shape[0]
        if n == 0:
            return self
        dev = self.comoment.device
        work = self.batch_dtype
        ta, tb = ta.to(device=dev, dtype=work), tb.to(device=dev, dtype=work)
        mean_a, mean_b = ta.mean(0, dtype=torch.float64), tb.mean(0, dtype=torch.float64)
        for which, mean in (("a", mean_a), ("b", mean_b)):  # NaN / inf anywhere in a column reach its mean:
            if not bool(torch.isfinite(mean).all()):  # an O(d) check instead of a pass over the rows
                raise NonFiniteError(which)
        ca, cb = ta - mean_a.to(work), tb - mean_b.to(work)  # centre on the batch mean before any product
        batch = _Stats(float(n), mean_a, mean_b, ca.pow(2).sum(0, dtype=torch.float64),
                       cb.pow(2).sum(0, dtype=torch.float64), (ca.T @ cb).double())
        self._absorb(batch)
        return self

    def merge(self, other: CrossMoments) -> CrossMoments:
        """Combine another accumulator's tokens into this one (exact: Chan's pairwise formulas)."""
        if not isinstance(other, CrossMoments):
            raise DataError(f"can only merge CrossMoments, got {type(other).__name__}")
        if (other.d_a, other.d_b) != (self.d_a, self.d_b):
            raise DataError(f"cannot merge moments of widths {other.d_a} x {other.d_b} into {self.d_a} x {self.d_b}")
        if other.count:
            dev = self.comoment.device
            self._absorb(_Stats(other.count, other.mean_a.to(dev), other.mean_b.to(dev), other.m2_a.to(dev),
                                other.m2_b.to(dev), other.comoment.to(dev)))
        return self

    def _absorb(self, s: _Stats) -> None:
        n0, n1 = self.count, s.count
        total = n0 + n1
        da, db = s.mean_a - self.mean_a, s.mean_b - self.mean_b
        w = n0 * n1 / total
        self.comoment += s.comoment
        self.comoment.add_(torch.outer(da, db), alpha=w)
        self.m2_a += s.m2_a + da.pow(2) * w
        self.m2_b += s.m2_b + db.pow(2) * w
        self.mean_a += da * (n1 / total)
        self.mean_b += db * (n1 / total)
        self.count = total

    def copy(self) -> CrossMoments:
        out = CrossMoments(self.d_a, self.d_b, batch_dtype=self.batch_dtype, device=self.comoment.device)
        out.count = self.count
        for name in _FIELDS[1:]:
            setattr(out, name, getattr(self, name).clone())
        return out

    # ------------------------------------------------------------------ derived statistics
    @property
    def var_a(self) -> np.ndarray:
        return (self.m2_a / max(self.count, 1.0)).cpu().numpy()

    @property
    def var_b(self) -> np.ndarray:
        return (self.m2_b / max(self.count, 1.0)).cpu().numpy()

    def dead_a(self) -> np.ndarray:
        """Indices of A's coordinates with (numerically) zero variance."""
        return np.nonzero(_dead(self.var_a, self.mean_a.cpu().numpy()))[0]

    def dead_b(self) -> np.ndarray:
        return np.nonzero(_dead(self.var_b, self.mean_b.cpu().numpy()))[0]

    def correlation(self) -> np.ndarray:
        """``C[i, j] = corr(a_i, b_j)`` (float64, ``d_a x d_b``); rows / columns of dead coordinates are 0."""
        if self.count < 2:
            raise DataError(f"a correlation needs at least 2 tokens, these moments hold {self.count:g}",
                            hint="collect more data (--tokens)")
        live_a = ~_dead(self.var_a, self.mean_a.cpu().numpy())
        live_b = ~_dead(self.var_b, self.mean_b.cpu().numpy())
        inv_a = np.where(live_a, 1.0 / np.sqrt(np.where(live_a, self.m2_a.cpu().numpy(), 1.0)), 0.0)
        inv_b = np.where(live_b, 1.0 / np.sqrt(np.where(live_b, self.m2_b.cpu().numpy(), 1.0)), 0.0)
        c = self.comoment.cpu().numpy() * inv_a[:, None] * inv_b[None, :]
        return np.clip(c, -1.0, 1.0, out=c)

    # documented raw-sum view (derived; the centred state is what is stored)
    @property
    def sum_a(self) -> np.ndarray:
        return (self.mean_a * self.count).cpu().numpy()

    @property
    def sum_b(self) -> np.ndarray:
        return (self.mean_b * self.count).cpu().numpy()

    @property
    def sumsq_a(self) -> np.ndarray:
        return (self.m2_a + self.count * self.mean_a.pow(2)).cpu().numpy()

    @property
    def sumsq_b(self) -> np.ndarray:
        return (self.m2_b + self.count * self.mean_b.pow(2)).cpu().numpy()

    @property
    def cross(self) -> np.ndarray:
        """``sum a b^T`` over all tokens."""
        return (self.comoment + self.count * torch.outer(self.mean_a, self.mean_b)).cpu().numpy()

    # ------------------------------------------------------------------ (de)serialisation
    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        out = {f"{prefix}{n}": getattr(self, n).detach().cpu().contiguous() for n in _FIELDS[1:]}
        out[f"{prefix}count"] = torch.tensor([self.count], dtype=torch.float64)
        return out

    @classmethod
    def from_tensors(cls, t: Mapping[str, torch.Tensor], prefix: str = "", where: str = "moments") -> CrossMoments:
        missing = [n for n in _FIELDS if f"{prefix}{n}" not in t]
        if missing:
            raise DataError(f"{where}: missing tensors {', '.join(prefix + m for m in missing)}")
        co = t[f"{prefix}comoment"]
        if co.ndim != 2:
            raise DataError(f"{where}: {prefix}comoment must be 2-D, got shape {tuple(co.shape)}")
        out = cls(co.shape[0], co.shape[1])
        out.count = float(t[f"{prefix}count"].double().reshape(-1)[0])
        for name in _FIELDS[1:]:
            val = t[f"{prefix}{name}"].double()
            if tuple(val.shape) != tuple(getattr(out, name).shape):
                raise DataError(f"{where}: {prefix}{name} has shape {tuple(val.shape)}, "
                                f"expected {tuple(getattr(out, name).shape)}")
            if not bool(torch.isfinite(val).all()):
                raise DataError(f"{where}: {prefix}{name} contains NaN or infinite values")
            setattr(out, name, val.clone())
        if out.count < 0 or not np.isfinite(out.count):
            raise DataError(f"{where}: invalid token count {out.count}")
        return out

    def __repr__(self) -> str:
        return f"CrossMoments(d_a={self.d_a}, d_b={self.d_b}, count={self.count:g})"


@dataclass
class _Stats:
    count: float
    mean_a: torch.Tensor
    mean_b: torch.Tensor
    m2_a: torch.Tensor
    m2_b: torch.Tensor
    comoment: torch.Tensor


def _dead(var: np.ndarray, mean: np.ndarray) -> np.ndarray:
    top = float(var.max(initial=0.0))
    return (var <= 0) | (var <= DEAD_RTOL_MAX * top) | (var <= (DEAD_RTOL_MEAN * mean) ** 2)


# ============================================================================= a set of sites
@dataclass
class MomentSet:
    """Cross-moments per residual site for one model pair, with what is needed to merge safely.

    ``model_a`` / ``model_b``: identities (see :func:`gaugeport.estimate.activations.model_fingerprint`);
    ``shard_ids``: the data shards folded in (merging refuses a shard twice); ``info``: free-form
    provenance (model types, data source, sequence length, ...).
    """

    sites: dict[str, CrossMoments]
    model_a: str
    model_b: str
    shard_ids: list[str] = field(default_factory=lambda: ["0"])
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tokens(self) -> int:
        return int(round(next(iter(self.sites.values())).count)) if self.sites else 0

    @property
    def d(self) -> int:
        return next(iter(self.sites.values())).d_a if self.sites else 0

    def site_names(self) -> list[str]:
        return list(self.sites)

    def merge(self, other: MomentSet) -> MomentSet:
        """A new set holding both sets' tokens; refuses other model pairs, other sites, repeated shards."""
        if (self.model_a, self.model_b) != (other.model_a, other.model_b):
            raise DataError("cannot merge moments of different model pairs "
                            f"({self.model_a} -> {self.model_b} vs {other.model_a} -> {other.model_b})",
                            hint="every shard must be collected from the same checkpoints A and B")
        if set(self.sites) != set(other.sites):
            diff = sorted(set(self.sites) ^ set(other.sites))
            raise DataError(f"cannot merge moments collected at different sites (differ in: {', '.join(diff[:6])})",
                            hint="collect every shard with the same --site options")
        repeated = sorted(set(self.shard_ids) & set(other.shard_ids))
        if repeated:
            raise DataError(f"shard id(s) {', '.join(repeated)} would be counted twice",
                            hint="give each collect run its own --shard-id (or --seed) so shards hold different data")
        sites = {name: cm.copy().merge(other.sites[name]) for name, cm in self.sites.items()}
        return MomentSet(sites, self.model_a, self.model_b, [*self.shard_ids, *other.shard_ids],
                         {**other.info, **self.info})

    @staticmethod
    def merge_all(sets: Iterable[MomentSet]) -> MomentSet:
        items = list(sets)
        if not items:
            raise DataError("no moment shards to merge")
        out = items[0]
        for s in items[1:]:
            out = out.merge(s)
        return out

    # ------------------------------------------------------------------ files
    def save(self, path: str | Path, *, force: bool = False) -> Path:
        from gaugeport.core.fileio import atomic_save_safetensors

        tensors: dict[str, torch.Tensor] = {}
        for name, cm in self.sites.items():
            tensors.update(cm.tensors(prefix=f"{name}/"))
        metadata = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "model_a": self.model_a, "model_b": self.model_b,
            "sites": json.dumps(list(self.sites)), "shard_ids": json.dumps(self.shard_ids),
            "n_tokens": str(self.n_tokens), "info": json.dumps(self.info, sort_keys=True, default=str),
        }
        return atomic_save_safetensors(tensors, Path(path), metadata, force=force)

    @classmethod
    def load(cls, path: str | Path) -> MomentSet:
        from gaugeport.core.fileio import read_safetensors

        tensors, meta = read_safetensors(Path(path), what="moments file")
        if meta.get("format") != FORMAT_NAME:
            raise DataError(f"{path} is not a gaugeport moments file (metadata format={meta.get('format')!r})",
                            hint="moments are written by `gaugeport collect`")
        try:
            names = json.loads(meta["sites"])
            shard_ids = [str(s) for s in json.loads(meta["shard_ids"])]
            info = json.loads(meta.get("info", "{}"))
        except (KeyError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: corrupt moments metadata ({exc})") from exc
        if not names:
            raise DataError(f"{path}: the moments file holds no site")
        sites = {n: CrossMoments.from_tensors(tensors, prefix=f"{n}/", where=str(path)) for n in names}
        counts = {cm.count for cm in sites.values()}
        if len(counts) != 1:
            raise DataError(f"{path}: sites hold different token counts {sorted(counts)}; the file is inconsistent")
        return cls(sites, meta.get("model_a", ""), meta.get("model_b", ""), shard_ids, info)

    def __repr__(self) -> str:
        return (f"MomentSet({len(self.sites)} sites, d={self.d}, tokens={self.n_tokens}, "
                f"shards={self.shard_ids})")
