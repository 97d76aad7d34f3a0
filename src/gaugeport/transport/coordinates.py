"""Top-k coordinate sets and signed attributions (docs/transport.md).

Coordinate ``i`` of A is coordinate ``perm[i]`` of B with sign ``signs[i]``: every index is mapped
through ``perm``, a signed score (an attribution, a probe weight) is multiplied by the sign, and a
coordinate set carries each coordinate's sign flip in a ``sign`` field (added when missing), since
"neuron 17 fires for X" in A reads "neuron 40 fires *negatively* for X" in B. A ``site`` column is
kept: one gauge serves every site of the stream.

Files: JSON (a list of indices; a list of ``[index, score]`` pairs; a list of records with
``coordinate`` or ``index``; or an object with parallel ``coordinates``/``scores``/``signs`` lists)
and CSV with a header (``coordinate, score[, site]``, other columns kept). The output has the
input's layout, except that a bare list of indices becomes ``{"coordinates", "signs"}`` to carry the
signs. JSON objects get a ``gaugeport`` provenance entry.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gaugeport.core.errors import ArtifactError, CheckpointError, GaugeError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.gauge import SignedPermutation
from gaugeport.transport._common import as_applied, provenance

TableKind = Literal["coordinates", "attributions"]
INDEX_KEYS = ("coordinate", "index")
LIST_KEYS = ("coordinates", "indices")
NESTED_KEYS = ("attributions", "records", "features")


# ------------------------------------------------------------------------------------- arrays
def transport_coordinates(indices: Sequence[int] | np.ndarray, gauge: SignedPermutation,
                          signs: Sequence[int] | None = None, perm_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a coordinate set in B, and the sign each carries (``signs``: the set's own, default +1)."""
    g = as_applied(gauge, perm_only)
    idx = _indices(indices, g)
    own = np.ones(len(idx), dtype=np.int64) if signs is None else _signs(signs, len(idx))
    return g.perm[idx], own * g.signs[idx]


def transport_attributions(indices: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                           gauge: SignedPermutation, perm_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(coordinate, score)`` pairs in B: index mapped, score multiplied by the coordinate's sign."""
    g = as_applied(gauge, perm_only)
    idx = _indices(indices, g)
    if not isinstance(scores, np.ndarray | list | tuple):
        raise ArtifactError(f"scores must be a list of numbers, got {type(scores).__name__}",
                            hint="one number per coordinate, in the same order")
    sc = np.asarray([_float(v) for v in np.asarray(scores, dtype=object).reshape(-1)], dtype=np.float64)
    if sc.shape != idx.shape:
        raise ArtifactError(f"{len(idx)} coordinates but {sc.size} scores")
    if not np.all(np.isfinite(sc)):
        raise ArtifactError("attribution scores contain NaN or infinite values")
    return g.perm[idx], sc * g.signs[idx]


def _indices(indices: Any, g: SignedPermutation) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ArtifactError(f"coordinates must be a flat list of integers, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= g.d):
        raise GaugeError(f"coordinate {int(arr.max() if arr.max() >= g.d else arr.min())} is out of range for a "
                         f"gauge of width d={g.d}", hint="the artifact comes from a model of another hidden size, "
                         "or the coordinates are not residual-stream indices")
    return arr


def _signs(signs: Any, n: int) -> np.ndarray:
    arr = np.asarray(signs)
    if arr.shape != (n,) or arr.dtype.kind not in "iuf" or not np.all(np.isin(arr, (-1, 1))):
        raise ArtifactError("signs must be -1 or +1, one per coordinate",
                            hint="a sign of 0 or 2 is not a sign flip; fix the artifact before transporting")
    return arr.astype(np.int64)


def _sign(v: Any) -> int:
    s = _int(v, "sign")
    if s not in (-1, 1):
        raise ArtifactError(f"sign must be -1 or +1, got {v!r}",
                            hint="a sign of 0 or 2 is not a sign flip; fix the artifact before transporting")
    return s


# ------------------------------------------------------------------------------------- records
def transport_records(records: list[dict[str, Any]], g: SignedPermutation, kind: TableKind,
                      unsigned_scores: bool = False) -> list[dict[str, Any]]:
    """Rows with ``coordinate`` (or ``index``) and optional ``score``/``sign``; other fields kept."""
    key = _index_key(records[0]) if records else "coordinate"
    idx = _indices([_int(r.get(key), key) for r in records], g)
    out = []
    for r, i in zip(records, idx, strict=True):
        s = int(g.signs[i])
        row = {**r, key: int(g.perm[i])}
        if "score" in r and not unsigned_scores:
            row["score"] = _float(r["score"]) * s
        if "sign" in r or kind == "coordinates":
            row["sign"] = (_sign(r["sign"]) if "sign" in r else 1) * s
        out.append(row)
    return out


def _index_key(row: dict[str, Any]) -> str:
    for key in INDEX_KEYS:
        if key in row:
            return key
    raise ArtifactError(f"a record lacks a coordinate: expected one of {INDEX_KEYS}, got keys {sorted(row)}")


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or v is None:
        raise ArtifactError(f"{what} must be an integer, got {v!r}")
    try:
        f = float(v)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{what} must be an integer, got {v!r}") from exc
    if not math.isfinite(f) or f != int(f):
        raise ArtifactError(f"{what} must be an integer, got {v!r}")
    return int(f)


def _float(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"score {v!r} is not a number") from exc
    if not math.isfinite(f):
        raise ArtifactError(f"score {v!r} is NaN or infinite", hint="fix or drop the row before transporting")
    return f


def guess_kind(records: list[dict[str, Any]]) -> TableKind:
    return "attributions" if records and "score" in records[0] else "coordinates"


# ------------------------------------------------------------------------------------- JSON
def transport_json(data: Any, g: SignedPermutation, kind: TableKind | None = None, unsigned_scores: bool = False,
                   stamp: dict[str, str] | None = None) -> Any:
    """Any of the JSON layouts in the module docstring, transported, in the same layout."""
    if isinstance(data, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in data) and data:
        new, signs = transport_coordinates(data, g)
        return {"coordinates": new.tolist(), "signs": signs.tolist(), **({"gaugeport": stamp} if stamp else {})}
    if isinstance(data, list) and data and all(isinstance(x, list) and len(x) == 2 for x in data):
        raw = [_float(x[1]) for x in data]
        new, scores = transport_attributions([_int(x[0], "index") for x in data], raw, g)
        return [[int(i), s] for i, s in zip(new.tolist(), raw if unsigned_scores else scores.tolist(), strict=True)]
    if isinstance(data, list) and data and all(isinstance(x, dict) for x in data):
        return transport_records(data, g, kind or guess_kind(data), unsigned_scores)
    if isinstance(data, dict):
        return _transport_object(data, g, kind, unsigned_scores, stamp)
    raise ArtifactError("unrecognised coordinate/attribution JSON",
                        hint="expected a list of indices, a list of [index, score] pairs, a list of records with "
                        "'coordinate', or an object with a 'coordinates' list")


def _transport_object(data: dict[str, Any], g: SignedPermutation, kind: TableKind | None, unsigned_scores: bool,
                      stamp: dict[str, str] | None) -> dict[str, Any]:
    out = dict(data)
    if stamp:
        out["gaugeport"] = stamp
    for key in NESTED_KEYS:
        if key in data:
            out[key] = transport_json(data[key], g, kind or ("attributions" if key == "attributions" else None),
                                      unsigned_scores)
            return out
    key = next((k for k in LIST_KEYS if k in data), None)
    if key is None:
        raise ArtifactError(f"JSON object has none of {LIST_KEYS + NESTED_KEYS}", hint="nothing to transport")
    scores = data.get("scores")
    if scores is not None and not unsigned_scores:
        new, sc = transport_attributions(data[key], scores, g)
        out["scores"] = sc.tolist()
    else:
        new, _ = transport_coordinates(data[key], g)
    if "signs" in data or (kind or ("attributions" if scores is not None else "coordinates")) == "coordinates":
        out["signs"] = transport_coordinates(data[key], g, data.get("signs"))[1].tolist()
    out[key] = new.tolist()
    return out


# ------------------------------------------------------------------------------------- CSV
def transport_csv(text: str, g: SignedPermutation, kind: TableKind | None = None, unsigned_scores: bool = False) -> str:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows:
        raise ArtifactError("the CSV has no rows (a header with 'coordinate[,score][,site]' and one row per entry)")
    fields = list(rows[0])
    for n, row in enumerate(rows, start=2):
        if None in row:
            raise ArtifactError(f"CSV line {n} has more fields than the header ({len(fields)} columns)",
                                hint="quote fields that contain commas, or add the missing column to the header")
    if not any(k in fields for k in INDEX_KEYS):
        raise ArtifactError(f"CSV columns {fields}: need a 'coordinate' (or 'index') column",
                            hint="the header must name the coordinate column, e.g. coordinate,score,site")
    moved = transport_records(rows, g, kind or guess_kind(rows), unsigned_scores)
    if "sign" in moved[0] and "sign" not in fields:
        fields.append("sign")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(moved)
    return buf.getvalue()


# ------------------------------------------------------------------------------------- files
def transport_coordinates_file(src: str | Path, gauge: SignedPermutation, out: str | Path,
                               kind: TableKind | None = None, perm_only: bool = False, force: bool = False,
                               unsigned_scores: bool = False) -> Path:
    """Transport a ``.json`` or ``.csv`` coordinate set / attribution list into ``out`` (same format)."""
    src, out = Path(src), Path(out)
    suffix = src.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ArtifactError(f"{src.name}: coordinate sets and attributions are .json or .csv files")
    if out.suffix.lower() != suffix:
        raise ArtifactError(f"output {out.name} must have the input's format ({suffix})")
    if not src.is_file():
        raise CheckpointError(f"file not found: {src}")
    try:
        text = src.read_text()
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{src} is not a text file ({exc})", hint="the file is corrupt") from exc
    g = as_applied(gauge, perm_only)
    if suffix == ".csv":
        result = transport_csv(text, g, kind, unsigned_scores)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{src} is not valid JSON ({exc})", hint="the file is truncated or corrupt") from exc
        stamp = provenance(gauge, src, perm_only, kind or "coordinates")
        result = json.dumps(transport_json(data, g, kind, unsigned_scores, stamp), indent=2) + "\n"
    with atomic_path(out, force, inputs=(src,), kind="file") as tmp:
        tmp.write_text(result)
    return out
