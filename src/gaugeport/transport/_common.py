"""What every transport module shares: the gauge it applies, provenance, and input checks."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport import __version__
from gaugeport.core.errors import ArtifactError, CheckpointError, GaugeError
from gaugeport.core.gauge import ArrayLike, SignedPermutation


def as_applied(gauge: SignedPermutation, perm_only: bool = False) -> SignedPermutation:
    """The gauge to apply; ``perm_only`` drops the signs (the S_d baseline: what a permutation-only tool
    would do with the same gauge). Transport functions take a gauge, never a path: the caller reads
    the gauge file once (``load_gauge``) and hands the gauge to every step."""
    if not isinstance(gauge, SignedPermutation):
        raise GaugeError(f"expected a SignedPermutation, got {type(gauge).__name__}",
                         hint="read a gauge file once with gaugeport.load_gauge(path) and pass the gauge")
    return gauge.perm_only() if perm_only else gauge


def provenance(gauge: SignedPermutation, source: str | Path | None, perm_only: bool, kind: str) -> dict[str, str]:
    """String key/values recorded in outputs whose format has room for them."""
    out = {
        "gaugeport_version": __version__,
        "gaugeport_kind": kind,
        "gaugeport_gauge": gauge.fingerprint(),
        "gaugeport_transport": "perm-only (S_d baseline: signs dropped)" if perm_only else "signed",
    }
    if source is not None:
        out["gaugeport_source"] = str(source)
    return out


def check_finite(x: ArrayLike, what: str) -> None:
    """NaN or infinite entries would travel silently through a permutation: refuse them."""
    if isinstance(x, torch.Tensor):
        bad = x.is_floating_point() and not bool(torch.isfinite(x).all())
    else:
        arr = np.asarray(x)
        bad = arr.dtype.kind in "fc" and not bool(np.isfinite(arr).all())
    if bad:
        raise ArtifactError(f"{what} contains NaN or infinite values",
                            hint="fix or drop the non-finite entries before transporting")


def check_width(size: int, gauge: SignedPermutation, what: str) -> None:
    if size != gauge.d:
        raise GaugeError(
            f"width mismatch: the gauge has d={gauge.d} but {what} has width {size}",
            hint="use a gauge estimated between the checkpoints this artifact belongs to (same hidden size)",
        )


def load_torch(path: Path, what: str, hint: str = "save only tensors and plain containers") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only, never arbitrary code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol warnings are noise here
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # the weights-only unpickler met something other than tensors and plain containers: a global
        # (a class or function), or an opcode it does not run. Torch's own text suggests turning the check
        # off; never repeat that.
        from gaugeport.core.fileio import pickle_globals

        names = pickle_globals(path)
        if names:
            foreign = [n for n in names if not n.startswith(("torch.", "collections.OrderedDict"))] or names
            raise ArtifactError(
                f"{path} contains code objects (it names {', '.join(sorted(set(foreign))[:3])}); gaugeport "
                "refuses to load it, for safety: loading it could run arbitrary code",
                hint=f"this check is never disabled; {hint}",
            ) from None
        raise CheckpointError(f"cannot read {what} {path}: not a readable torch file",
                              hint="the file is truncated or corrupt") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        text = "not a readable torch file" if "weights_only" in str(exc) else str(exc)
        raise CheckpointError(f"cannot read {what} {path}: {text}", hint="the file is truncated or corrupt") from None
