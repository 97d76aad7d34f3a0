"""``same --pairs pairs.csv``: many pairs, one JSON line each, resumable, with an ROC summary.

The CSV has a header with columns ``a`` and ``b`` (checkpoint paths or hub IDs; a relative path is
read relative to the CSV's folder when it exists there) and optionally ``label`` (1 / 0, true /
false, derived / independent). Every pair is compared with ``same`` (which sends shape-changed
pairs to lineage); its line carries the verdict, p-value, the graded ``effect`` (lineage's, computed
for same-shape pairs too, so every pair is ranked on one scale), seconds, and the label. A pair that
fails records its ``error`` and the batch goes on.

Resuming: lines already in the output are kept and their pairs skipped; a torn last line (an
interrupted write) is dropped first, by rewriting the file atomically. Each line is written (and synced)
the moment its pair finishes, in whatever order pairs finish: ``--ray ADDRESS`` spreads the pairs over a
Ray cluster (:func:`ray_executor`), and an interrupted cluster run resumes the same way. With labels, the summary
gives the AUC of ``effect`` and the TPR at 1% FPR, and an ROC plot is written next to the output.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gaugeport.core.errors import DataError, GaugeportError

_TRUE = {"1", "true", "yes", "derived", "positive"}
_FALSE = {"0", "false", "no", "independent", "negative"}


def read_pairs(path: str | Path) -> list[dict[str, Any]]:
    """Rows of the pairs CSV: ``{"a", "b", "label"}`` (label None when absent)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"pairs file not found: {p}", hint="give a CSV with a header row: a,b[,label]")
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        if "a" not in cols or "b" not in cols:
            raise DataError(f"{p}: the header names no columns a and b (found {', '.join(cols) or 'none'})",
                            hint="first line: a,b or a,b,label")
        rows = []
        for n, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            if not row.get("a") or not row.get("b"):
                raise DataError(f"{p}:{n}: empty a or b", hint="every row names two checkpoints")
            lab = row.get("label", "")
            label: int | None = None
            if lab:
                if lab.lower() in _TRUE:
                    label = 1
                elif lab.lower() in _FALSE:
                    label = 0
                else:
                    raise DataError(f"{p}:{n}: label {lab!r} is not 1/0, true/false or derived/independent",
                                    hint="leave the column empty where the truth is unknown")
            rows.append({"a": _resolve(row["a"], p.parent), "b": _resolve(row["b"], p.parent), "label": label})
    if not rows:
        raise DataError(f"{p} lists no pairs", hint="add rows below the header a,b[,label]")
    return rows


def _resolve(x: str, base: Path) -> str:
    q = Path(x)
    return str(base / q) if not q.is_absolute() and (base / q).exists() else x


def _done_lines(out: Path) -> list[dict[str, Any]]:
    """Complete JSON lines already written; a torn last line is removed (atomic rewrite)."""
    if not out.exists():
        return []
    text = out.read_text(encoding="utf-8")
    good, kept = [], []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "a" in doc and "b" in doc:
            good.append(doc)
            kept.append(line)
    clean = "".join(ln + "\n" for ln in kept)
    if clean != text:
        from gaugeport.core.fileio import atomic_write_text

        atomic_write_text(out, clean)
    return good


def compare_pair(a: str, b: str, alpha: float) -> dict[str, Any]:
    """One pair: verdict and p from ``same`` (lineage for shape changes), effect from lineage."""
    from gaugeport.provenance.lineage import LineageResult, lineage
    from gaugeport.provenance.same import same

    t0 = time.perf_counter()
    res = same(a, b, alpha=alpha)
    lin = res if isinstance(res, LineageResult) else lineage(a, b, alpha=alpha)
    return {"verdict": res.verdict, "p_value": res.p_value, "log10_p_value": res.log10_p,
            "mode": "lineage" if isinstance(res, LineageResult) else "same", "effect": lin.effect,
            "evidence": lin.evidence, "seconds": time.perf_counter() - t0}


Compare = Callable[[str, str, float], dict[str, Any]]
# An executor takes the rows still to do, the comparison and alpha, and yields (row, line) as each pair finishes
# (in any order); run_pairs writes every line the moment it arrives, so an interrupted batch resumes.
Executor = Callable[[list[dict[str, Any]], Compare, float], Iterator[tuple[dict[str, Any], dict[str, Any]]]]


def compare_row(row: dict[str, Any], compare: Compare, alpha: float) -> dict[str, Any]:
    """One pair's JSON line: its row and the comparison, or the error that stopped it."""
    head = {"a": row["a"], "b": row["b"], "label": row["label"]}
    try:
        return {**head, **compare(row["a"], row["b"], alpha)}
    except GaugeportError as exc:
        return {**head, "error": str(exc)}


def serial_executor(rows: list[dict[str, Any]], compare: Compare,
                    alpha: float) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every pair in this process, in the CSV's order."""
    for row in rows:
        yield row, compare_row(row, compare, alpha)


def ray_executor(address: str, workers: int = 2, *, max_retries: int = 1,
                 connect_timeout_s: float | None = None) -> Executor:
    """Spread the pairs over a Ray cluster (``collect --ray``'s engine and addresses: ``local``, ``auto``,
    ``HOST:6379``, ``ray://HOST:10001``; see :mod:`gaugeport.estimate.distributed`): one task per pair, one CPU
    each, ``workers`` CPUs for a ``local`` instance. A task opens both checkpoints *from their paths* (every node
    must read them there, or have the hub IDs cached); nothing model-sized travels. A worker that dies is retried
    ``max_retries`` times, then its pair records an ``error`` line and the batch goes on. Ray is the optional
    extra ``gaugeport[ray]``: without it, a GaugeportError says how to install it."""

    def run(rows: list[dict[str, Any]], compare: Compare,
            alpha: float) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        from gaugeport.core.errors import require
        from gaugeport.estimate.distributed import DEFAULT_CONNECT_TIMEOUT_S, connect

        require("ray", "ray", "spreading pairs over Ray (same --pairs --ray)")
        if not rows:
            return
        ray, started = connect(address, workers, connect_timeout_s or DEFAULT_CONNECT_TIMEOUT_S)
        task = ray.remote(compare_row).options(num_cpus=1, max_retries=max_retries, retry_exceptions=False)
        pending = {task.remote(row, compare, alpha): row for row in rows}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                row = pending.pop(done[0])
                try:
                    doc = ray.get(done[0])
                except Exception as exc:  # the worker died (after retries) or raised a non-gaugeport error
                    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                    doc = {"a": row["a"], "b": row["b"], "label": row["label"],
                           "error": f"ray task failed: {type(exc).__name__}: {first}"}
                yield row, doc
        finally:
            for ref in pending:  # an error or ^C in the driver stops the other pairs too
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()

    return run


def run_pairs(pairs_csv: str | Path, out: str | Path, *, alpha: float = 1e-3,
              compare: Compare = compare_pair, echo: Callable[[str], None] | None = None,
              executor: Executor = serial_executor) -> dict[str, Any]:
    """Compare every pair not yet in ``out`` (JSON lines, written as each pair finishes), then summarise all
    lines. ``executor``: :func:`serial_executor` (this process) or :func:`ray_executor` (a Ray cluster)."""
    rows = read_pairs(pairs_csv)
    out = Path(out)
    done = _done_lines(out)
    seen = {(d["a"], d["b"]) for d in done}
    todo, queued = [], set()
    for row in rows:
        if (row["a"], row["b"]) not in seen | queued:
            todo.append(row)
            queued.add((row["a"], row["b"]))
    with out.open("a", encoding="utf-8") as f:
        for row, doc in executor(todo, compare, alpha):
            f.write(json.dumps(doc, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done.append(doc)
            if echo is not None:
                echo(f"{doc.get('verdict', 'error'):<12} effect {doc.get('effect', float('nan')):6.3f}  "
                     f"{row['a']} -> {row['b']}")
    wanted = {(r["a"], r["b"]) for r in rows}
    return summarize([d for d in done if (d["a"], d["b"]) in wanted])


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (Mann-Whitney: P(score of a positive > score of a negative), ties half)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def tpr_at_fpr(scores: Sequence[float], labels: Sequence[int], fpr: float = 0.01) -> float:
    """The fraction of positives above the threshold that lets at most ``fpr`` of the negatives through
    (strictly above the negatives' score at that quantile; with fewer than ``1 / fpr`` negatives the
    threshold is their maximum)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = s[y == 1], s[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    allowed = int(np.floor(fpr * len(neg)))
    thr = np.sort(neg)[::-1][allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(pos > thr))


def summarize(docs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [d for d in docs if "error" not in d]
    verdicts: dict[str, int] = {}
    for d in ok:
        verdicts[d["verdict"]] = verdicts.get(d["verdict"], 0) + 1
    out: dict[str, Any] = {"pairs": len(docs), "errors": len(docs) - len(ok), "verdicts": verdicts,
                           "seconds_total": float(sum(d.get("seconds", 0.0) for d in ok))}
    lab = [d for d in ok if d.get("label") is not None]
    if lab:
        scores, labels = [d["effect"] for d in lab], [int(d["label"]) for d in lab]
        out.update(labelled=len(lab), auc=roc_auc(scores, labels), tpr_at_1pct_fpr=tpr_at_fpr(scores, labels),
                   verdict_accuracy=float(np.mean([(d["verdict"] != "independent") == bool(d["label"])
                                                   for d in lab])))
    return out


def plot_roc(docs: list[dict[str, Any]], path: str | Path) -> Path | None:
    """ROC of ``effect`` over the labelled pairs (matplotlib, imported here only); None without both classes."""
    lab = [d for d in docs if "error" not in d and d.get("label") is not None]
    y = np.asarray([int(d["label"]) for d in lab])
    if not lab or y.min() == y.max():
        return None
    try:
        import matplotlib
    except ImportError:  # the plot is optional (pip install 'gaugeport[study]'); the summary has every figure
        return None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gaugeport.core.fileio import atomic_path

    s = np.asarray([d["effect"] for d in lab])
    thr = np.r_[np.inf, np.sort(np.unique(s))[::-1]]
    tpr = [float(np.mean(s[y == 1] >= t)) for t in thr]
    fpr = [float(np.mean(s[y == 0] >= t)) for t in thr]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr, "o-", ms=3, label=f"effect (AUC {roc_auc(s, y):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.6)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(Path(path), force=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
