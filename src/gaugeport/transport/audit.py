"""Gauge-sweep audits of index-level claims (docs/transport.md).

A claim names residual coordinates ("coordinate 17 encodes polarity"), a direction, or signed
attributions, at a site of a reference checkpoint. The same network can be written in any gauge
of its group, so the audit re-expresses every claim under a sweep of gauges (identity, K random
signed permutations, and the estimated gauge(s) given) and asks whether the claim, *read as it is
stated*, still holds there:

* a claim stated with **bare indices** (no ``frame``) is read literally in each gauge's
  coordinates;
* a claim stated **relative to an explicit gauge** (``"frame": "<checkpoint or gauge id>"``) is
  carried through each gauge before it is read (that is what stating the frame buys).

Verdict: ``gauge-covariant`` when the claim survives every gauge of the sweep, ``index-bound``
otherwise (reproducible only relative to an explicit gauge). The evidence is a per-gauge
agreement in [-1, 1]:

* without data: agreement of the claim as read with the claim carried through the gauge
  (fraction of (index, sign) pairs kept; cosine for directions and attribution vectors);
* with activations and labels at the claim's site (``Evidence``): the claim's effect size in that
  gauge relative to its effect size in the reference coordinates (Cohen's d of the claimed
  coordinates, of the projection on the direction, or the cosine of attributions with measured
  per-coordinate effects).

Claims file (JSON)::

    {"claims": [
      {"name": "polarity neuron", "site": "layer0", "kind": "coordinates", "indices": [17], "signs": [1]},
      {"name": "polarity direction", "site": "layer0", "kind": "direction", "vector": [...],
       "frame": "base@3f2a"},
      {"name": "refusal attributions", "site": "layer0", "kind": "attribution",
       "attributions": [[3, 0.9], [7, -0.4]], "evidence": "refusal"}]}
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gaugeport.core.errors import ArtifactError, DataError, GaugeError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport.coordinates import transport_attributions, transport_coordinates
from gaugeport.transport.rules import ArtifactKind
from gaugeport.transport.vectors import transport_vector

Kind = Literal["coordinates", "direction", "attribution"]
# claim kind (as claims files spell it) -> the artifact kind whose transport re-expresses it
CLAIM_KINDS: dict[str, ArtifactKind] = {"coordinates": ArtifactKind.COORDINATES, "direction": ArtifactKind.VECTOR,
                                        "attribution": ArtifactKind.ATTRIBUTIONS}
KINDS = tuple(CLAIM_KINDS)
COVARIANT, INDEX_BOUND = "gauge-covariant", "index-bound"
DEFAULT_TOL = 0.2


# ------------------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """One index-level statement about the residual stream at ``site`` of a reference checkpoint."""

    name: str
    site: str
    kind: Kind
    indices: np.ndarray  # coordinates / attribution: the indices named; direction: all of range(d)
    values: np.ndarray  # coordinates: signs (0 = sign not claimed); attribution: scores; direction: v
    frame: str | None = None  # the explicit gauge the claim is stated relative to; None = bare indices
    evidence_key: str | None = None  # which labelled data tests it (default: the site)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Claim:
        name = str(raw.get("name", "")).strip()
        where = f"claim {name!r}" if name else "a claim"
        for key in ("name", "site", "kind"):
            if not raw.get(key):
                raise ArtifactError(f"{where} lacks {key!r}", hint='each claim needs "name", "site" and "kind"')
        kind = raw["kind"]
        if kind not in KINDS:
            raise ArtifactError(f"{where}: unknown kind {kind!r}", hint=f"kinds: {', '.join(KINDS)}")
        if kind == "coordinates":
            idx = _ints(raw.get("indices"), where, "indices")
            signs = raw.get("signs")
            vals = np.zeros(len(idx)) if signs is None else _floats(signs, where, "signs")
            if signs is not None and (len(vals) != len(idx) or not np.all(np.isin(vals, (-1, 1)))):
                raise ArtifactError(f"{where}: signs must be -1 or +1, one per index",
                                    hint="leave out \"signs\" for a claim about coordinates regardless of sign")
        elif kind == "direction":
            vals = _floats(raw.get("vector"), where, "vector")
            if not np.any(vals):
                raise ArtifactError(f"{where}: the direction is the zero vector")
            idx = np.arange(len(vals))
        else:
            pairs = raw.get("attributions")
            if not isinstance(pairs, list) or not pairs or any(not isinstance(p, list | tuple) or len(p) != 2
                                                               for p in pairs):
                raise ArtifactError(f"{where}: attributions must be a non-empty list of [index, score] pairs")
            idx = _ints([p[0] for p in pairs], where, "attribution indices")
            vals = _floats([p[1] for p in pairs], where, "attribution scores")
        if len(set(idx.tolist())) != len(idx):
            raise ArtifactError(f"{where}: repeated indices")
        frame = raw.get("frame")
        return cls(name, str(raw["site"]), kind, idx, vals, None if frame in (None, "") else str(frame),
                   raw.get("evidence"))

    @property
    def stated(self) -> str:
        return f"relative to explicit gauge {self.frame!r}" if self.frame else "bare indices"

    @property
    def key(self) -> str:
        return self.evidence_key or self.site

    def check_width(self, d: int) -> None:
        if self.kind == "direction" and len(self.values) != d:
            raise ArtifactError(f"claim {self.name!r}: the direction has length {len(self.values)}, the gauges d={d}",
                                hint="a direction has one entry per residual coordinate (the model's hidden size)")
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= d):
            raise ArtifactError(f"claim {self.name!r}: indices must lie in [0, {d}), got "
                                f"[{self.indices.min()}, {self.indices.max()}]", hint=_CLAIM_HINT)

    def reexpress(self, g: SignedPermutation) -> Claim:
        """The same claim in the coordinates of ``g``, carried by the transport of its artifact kind."""
        artifact = CLAIM_KINDS[self.kind]
        if artifact == ArtifactKind.VECTOR:
            return _replace(self, self.indices, np.asarray(transport_vector(self.values, g)))
        if artifact == ArtifactKind.ATTRIBUTIONS:
            return _replace(self, *transport_attributions(self.indices, self.values, g))
        indices, signs = transport_coordinates(self.indices, g)
        return _replace(self, indices, self.values * signs)  # a sign not claimed (0) stays unclaimed

    def read_in(self, g: SignedPermutation) -> Claim:
        """What a reader of the claim *as stated* looks at in the coordinates of ``g``."""
        return self.reexpress(g) if self.frame else self

    def dense(self, d: int) -> np.ndarray:
        out = np.zeros(d)
        out[self.indices] = self.values if self.kind != "coordinates" else np.where(self.values == 0, 1, self.values)
        return out


def _replace(c: Claim, indices: np.ndarray, values: np.ndarray) -> Claim:
    return Claim(c.name, c.site, c.kind, indices, values, c.frame, c.evidence_key)


_CLAIM_HINT = "indices name residual coordinates: integers from 0 to d - 1 (the model's hidden size, --d)"


def _ints(x: Any, where: str, what: str) -> np.ndarray:
    if not isinstance(x, list) or not x or any(isinstance(v, bool) or not isinstance(v, int) for v in x):
        bad = next((v for v in x if isinstance(v, bool) or not isinstance(v, int)), x) if isinstance(x, list) else x
        raise ArtifactError(f"{where}: {what} must be a non-empty list of integers (found {bad!r})", hint=_CLAIM_HINT)
    out_of_range = next((v for v in x if not 0 <= v < 1 << 40), None)
    if out_of_range is not None:
        raise ArtifactError(f"{where}: {what} holds {out_of_range}, not a coordinate index", hint=_CLAIM_HINT)
    return np.asarray(x, dtype=np.int64)


def _floats(x: Any, where: str, what: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: {what} must be a list of numbers") from exc
    if arr.ndim != 1 or arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ArtifactError(f"{where}: {what} must be a non-empty list of finite numbers")
    return arr


def load_claims(path: str | Path) -> list[Claim]:
    """Read a claims JSON file: ``{"claims": [...]}`` or a bare list."""
    from gaugeport.core.fileio import require_file

    hint = 'a claims file is JSON: {"claims": [{"name", "site", "kind", ...}]} (see the README)'
    path = require_file(path, "claims file")
    try:
        raw = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc})", hint=hint) from exc
    items = raw.get("claims") if isinstance(raw, dict) else raw
    if not isinstance(items, list) or not items:
        raise ArtifactError(f"{path}: expected a non-empty list of claims (or {{\"claims\": [...]}})", hint=hint)
    claims = [Claim.from_dict(c if isinstance(c, dict) else {}) for c in items]
    names = [c.name for c in claims]
    if len(set(names)) != len(names):
        raise ArtifactError(f"{path}: claim names must be unique", hint="rename the duplicated claims")
    return claims


# ------------------------------------------------------------------------------------- evidence
@dataclass(frozen=True)
class Evidence:
    """Activations ``[n, d]`` at a claim's site in the reference coordinates, with binary labels.

    ``in_gauge``: activations of the checkpoint a named gauge maps to (e.g. the estimated gauge's
    target). Gauges not listed are exact re-expressions of the reference: their activations are
    the gauge applied to ``acts``.
    """

    acts: np.ndarray
    labels: np.ndarray
    in_gauge: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        acts, labels = np.asarray(self.acts, dtype=np.float64), np.asarray(self.labels).astype(bool)
        if acts.ndim != 2 or len(labels) != len(acts) or labels.all() or not labels.any():
            raise DataError("evidence needs activations [n, d] and n labels with both classes present")
        object.__setattr__(self, "acts", acts)
        object.__setattr__(self, "labels", labels)

    def activations(self, gauge_name: str, g: SignedPermutation) -> np.ndarray:
        if gauge_name in self.in_gauge:
            return np.asarray(self.in_gauge[gauge_name], dtype=np.float64)
        return np.asarray(g.apply(self.acts, axis=1))


def effect_sizes(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cohen's d of every column between the two label classes."""
    a, b = acts[labels], acts[~labels]
    pooled = np.sqrt(0.5 * (a.var(0) + b.var(0))) + 1e-12
    return (a.mean(0) - b.mean(0)) / pooled


def claim_score(claim: Claim, acts: np.ndarray, labels: np.ndarray) -> float:
    """How strongly the data supports the claim (sign included) in the coordinates of ``acts``."""
    if claim.kind == "direction":
        v = claim.values / np.linalg.norm(claim.values)
        return float(effect_sizes((acts @ v)[:, None], labels)[0])
    eff = effect_sizes(acts[:, claim.indices], labels)
    if claim.kind == "coordinates":
        return float(np.mean(np.where(claim.values == 0, np.abs(eff), claim.values * eff)))
    return _cosine(claim.values, eff)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def agreement(read: Claim, truth: Claim, d: int) -> float:
    """Without data: does the claim as read coincide with the claim carried through the gauge?"""
    if read.kind == "coordinates":
        signed = bool(np.any(read.values))
        as_read = set(zip(read.indices.tolist(), (read.values if signed else 0 * read.values).tolist(), strict=True))
        true = set(zip(truth.indices.tolist(), (truth.values if signed else 0 * truth.values).tolist(), strict=True))
        return len(as_read & true) / len(true)
    return _cosine(read.dense(d), truth.dense(d))


# ------------------------------------------------------------------------------------- the audit
@dataclass(frozen=True)
class Verdict:
    claim: Claim
    verdict: str
    evidence: list[dict[str, Any]]  # one row per gauge of the sweep
    method: str  # "data" or "algebra"

    @property
    def worst(self) -> dict[str, Any]:
        return min(self.evidence, key=lambda e: e["agreement"])

    @property
    def reexpressed_survives(self) -> bool:
        return all(e["reexpressed_survives"] for e in self.evidence)

    def note(self) -> str:
        w = self.worst
        if self.verdict == COVARIANT:
            return f"survives all {len(self.evidence)} gauges (lowest agreement {w['agreement']:.2f}, {w['gauge']})"
        fix = ("; stated relative to an explicit gauge it would survive" if self.reexpressed_survives and
               not self.claim.frame else "")
        return f"fails under {w['gauge']} (agreement {w['agreement']:.2f}){fix}"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.claim.name, "site": self.claim.site, "kind": self.claim.kind,
                "stated": self.claim.stated, "verdict": self.verdict, "method": self.method,
                "note": self.note(), "evidence": self.evidence}


@dataclass(frozen=True)
class AuditReport:
    verdicts: list[Verdict]
    gauges: dict[str, str]  # name -> fingerprint
    tol: float

    def to_dict(self) -> dict[str, Any]:
        return {"tol": self.tol, "gauges": self.gauges,
                "n_covariant": sum(v.verdict == COVARIANT for v in self.verdicts),
                "n_index_bound": sum(v.verdict == INDEX_BOUND for v in self.verdicts),
                "claims": [v.to_dict() for v in self.verdicts]}

    def to_markdown(self) -> str:
        lines = ["# Gauge-sweep audit", "",
                 f"Sweep: {len(self.gauges)} gauges ({', '.join(self.gauges)}). A claim survives a gauge when its "
                 f"agreement is at least {1 - self.tol:.2f}.", "",
                 "| claim | kind | site | stated | verdict | evidence |", "|---|---|---|---|---|---|"]
        for v in self.verdicts:
            c = v.claim
            lines.append(f"| {c.name} | {c.kind} | {c.site} | {c.stated} | **{v.verdict}** | {v.note()} |")
        lines += ["", "Per-gauge agreement (as stated / carried through the gauge):", ""]
        names = list(self.gauges)
        lines += ["| claim | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for v in self.verdicts:
            by = {e["gauge"]: e for e in v.evidence}
            lines.append(f"| {v.claim.name} | " + " | ".join(
                f"{by[n]['agreement']:.2f} / {by[n]['reexpressed_agreement']:.2f}" for n in names) + " |")
        return "\n".join(lines) + "\n"


def gauge_sweep(d: int, n_random: int = 8, seed: int = 0,
                estimated: Mapping[str, SignedPermutation] | None = None) -> dict[str, SignedPermutation]:
    """Identity, ``n_random`` random signed permutations, and the estimated gauge(s)."""
    if isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 1:
        raise GaugeError(f"the sweep width must be a positive integer, got {d!r}",
                         hint="--d is the hidden size of the model the claims are about")
    if isinstance(n_random, bool) or not isinstance(n_random, int | np.integer) or n_random < 0:
        raise GaugeError(f"the number of random gauges must be >= 0, got {n_random!r}",
                         hint="--random 8 (the default) re-expresses every claim under 8 random gauges")
    sweep = {"identity": SignedPermutation.identity(d)}
    for k in range(n_random):
        sweep[f"random-{k + 1}"] = SignedPermutation.random(d, seed=seed * 1000 + k)
    for name, g in (estimated or {}).items():
        if g.d != d:
            raise GaugeError(f"gauge {name!r} has d={g.d}, the sweep d={d}")
        sweep[name] = g
    return sweep


def audit_claims(claims: Sequence[Claim], gauges: Mapping[str, SignedPermutation], *,
                 evidence: Mapping[str, Evidence] | None = None, tol: float = DEFAULT_TOL) -> AuditReport:
    """Re-express every claim under every gauge and give it a verdict (see the module docstring)."""
    if not gauges:
        raise GaugeError("the audit needs at least one gauge in its sweep")
    d = next(iter(gauges.values())).d
    verdicts = []
    for claim in claims:
        claim.check_width(d)
        ev = (evidence or {}).get(claim.key)
        rows = [_evidence_row(claim, name, g, ev, d, tol) for name, g in gauges.items()]
        ok = all(r["survives"] for r in rows)
        verdicts.append(Verdict(claim, COVARIANT if ok else INDEX_BOUND, rows, "data" if ev else "algebra"))
    return AuditReport(verdicts, {n: g.fingerprint() for n, g in gauges.items()}, tol)


def _evidence_row(claim: Claim, name: str, g: SignedPermutation, ev: Evidence | None, d: int,
                  tol: float) -> dict[str, Any]:
    truth = claim.reexpress(g)
    if ev is None:
        agree, re_agree = agreement(claim.read_in(g), truth, d), 1.0
    else:
        if ev.acts.shape[1] != d:
            raise DataError(f"evidence for {claim.key!r} has width {ev.acts.shape[1]}, the gauges d={d}")
        ref = claim_score(claim, ev.acts, ev.labels)
        if abs(ref) < 1e-9:
            raise DataError(f"claim {claim.name!r} has no support in its own reference data (score 0)")
        acts = ev.activations(name, g)
        agree = claim_score(claim.read_in(g), acts, ev.labels) / ref
        re_agree = claim_score(truth, acts, ev.labels) / ref
    return {"gauge": name, "fingerprint": g.fingerprint(), "agreement": float(agree),
            "survives": bool(agree >= 1 - tol), "reexpressed_agreement": float(re_agree),
            "reexpressed_survives": bool(re_agree >= 1 - tol)}


def write_audit(report: AuditReport, out: str | Path, *, force: bool = False) -> Path:
    """``out/audit.json`` and ``out/audit.md``, written atomically as one directory."""
    with atomic_path(Path(out), force, kind="directory") as tmp:
        tmp.mkdir()
        (tmp / "audit.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        (tmp / "audit.md").write_text(report.to_markdown())
    return Path(out)


def load_evidence(path: str | Path) -> dict[str, Evidence]:
    """An ``.npz`` with ``<key>.acts`` [n, d] and ``<key>.labels`` [n] per evidence key (a site name)."""
    from gaugeport.core.fileio import require_file

    hint = "evidence is an .npz (np.savez) with <site>.acts [n, d] and <site>.labels [n] arrays"
    path = require_file(path, "evidence file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read evidence file {path}: {exc}", hint=hint) from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single array, not an .npz archive of named arrays", hint=hint)
    keys = sorted({k.rsplit(".", 1)[0] for k in data.files if k.endswith((".acts", ".labels"))})
    out = {}
    for k in keys:
        if f"{k}.acts" not in data.files or f"{k}.labels" not in data.files:
            raise DataError(f"{path}: evidence {k!r} needs both {k}.acts and {k}.labels", hint=hint)
        out[k] = Evidence(data[f"{k}.acts"], data[f"{k}.labels"])
    if not out:
        raise DataError(f"{path}: no '<key>.acts' / '<key>.labels' arrays found", hint=hint)
    return out
