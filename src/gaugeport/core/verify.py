"""Check, never assume: do two checkpoints compute the same function (through a gauge)?

Function level: seeded probe token ids (or user data) through both models, each loaded as the
class it was saved from (``config.architectures``; the table's task head when it names none), and
never with a randomly initialised tensor; the outputs users consume (LM / MLM logits) must agree,
and with a gauge every hidden state of B must equal the gauge applied to A's.
Weight level: every tensor of B must equal the gauge applied to the same tensor of A.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.apply import check_gauge_fits, transform_tensor
from gaugeport.core.archspec import get_spec
from gaugeport.core.checkpoint import Checkpoint, check_sequence_length
from gaugeport.core.defaults import VERIFY_TOL
from gaugeport.core.errors import CheckpointError, DataError, GaugeError
from gaugeport.core.gauge import SignedPermutation
from gaugeport.core.stream import load_model, model_class_for  # noqa: F401 (re-exported)

DEFAULT_TOL = VERIFY_TOL  # relative to the largest |logit| of A (core/defaults.py)


@dataclass
class Verification:
    output: str  # which output was compared: "logits", "pooler_output" or "last_hidden_state" (base models)
    max_abs_diff: float
    max_rel_diff: float
    hidden_max_abs_diff: float | None  # with a gauge: max |h_B - G h_A| over all hidden states
    hidden_max_rel_diff: float | None
    weight_max_abs_diff: float | None  # with a gauge and checkpoints: max |W_B - G(W_A)|
    weight_worst_tensor: str | None  # the tensor with the largest relative difference
    n_tokens: int
    tol: float
    weight_max_rel_diff: float | None = None  # max over tensors of |W_B - G(W_A)| / max |W_A|

    @property
    def ok(self) -> bool:
        checks = [self.max_rel_diff, self.hidden_max_rel_diff, self.weight_max_rel_diff]
        return all(c is None or c <= self.tol for c in checks)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def probe_token_ids(vocab_size: int, n_seq: int = 4, seq_len: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (n_seq, seq_len), generator=g)


def load_token_ids(path: str | Path, vocab_size: int) -> torch.Tensor:
    """Token ids ``[n_seq, seq_len]`` from a ``.npy`` file (never unpickled), checked against the vocabulary."""
    from gaugeport.core.fileio import require_file

    hint = "verify --data takes a .npy of integer token ids [n_seq, seq_len] (np.save('ids.npy', ids))"
    path = require_file(path, "token-id file")
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: verify reads token ids from a .npy file, not {path.suffix or 'a bare file'}",
                        hint=hint)
    from gaugeport.core.fileio import check_npy_size

    check_npy_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        what = "holds Python objects (refused: loading them would unpickle)" if "pickle" in str(exc) else \
            "is not a readable .npy file"
        raise DataError(f"{path} {what}", hint=hint) from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: expected integer token ids of shape [n_seq, seq_len], got {arr.dtype} {arr.shape}",
                        hint=hint)
    if arr.size == 0:
        raise DataError(f"{path}: no token ids", hint=hint)
    if arr.min() < 0 or arr.max() >= vocab_size:
        raise DataError(f"{path}: token ids must lie in [0, {vocab_size}), found [{arr.min()}, {arr.max()}]",
                        hint="the ids come from another tokenizer; tokenize with this model's tokenizer")
    return torch.from_numpy(arr.astype(np.int64))


def check_tolerance(tol: float) -> float:
    """A tolerance is a finite number >= 0 (a negative or NaN one would make every check fail or pass)."""
    if isinstance(tol, bool) or not isinstance(tol, int | float) or not np.isfinite(tol) or tol < 0:
        raise DataError(f"tolerance must be a finite number >= 0, got {tol!r}",
                        hint=f"the default {DEFAULT_TOL:g} is relative to the largest |value| compared")
    return float(tol)


@torch.no_grad()
def compare_models(model_a: torch.nn.Module, model_b: torch.nn.Module, ids: torch.Tensor,
                   gauge: SignedPermutation | None = None, tol: float = DEFAULT_TOL) -> Verification:
    from gaugeport.core.stream import model_device

    out_a = model_a(input_ids=ids.to(model_device(model_a)), output_hidden_states=True)
    out_b = model_b(input_ids=ids.to(model_device(model_b)), output_hidden_states=True)
    key = next(k for k in ("logits", "pooler_output", "last_hidden_state") if getattr(out_a, k, None) is not None)
    ya, yb = getattr(out_a, key).cpu(), getattr(out_b, key).cpu()
    for which, y in (("A", ya), ("B", yb)):
        if not bool(torch.isfinite(y).all()):
            raise DataError(f"model {which} produced NaN or infinite {key}",
                            hint="its weights contain NaN/Inf or overflow in float32 "
                            "(`gaugeport inspect` names the tensor)")
    if key == "last_hidden_state" and gauge is not None:  # a bare base model: its output is the stream
        ya = gauge.apply(ya, -1)
    if ya.shape != yb.shape:
        raise CheckpointError(f"outputs differ in shape: {tuple(ya.shape)} vs {tuple(yb.shape)}")
    diff = (ya - yb).abs().max().item()
    scale = max(ya.abs().max().item(), 1e-12)
    h_abs = h_rel = None
    if gauge is not None:
        diffs = [(gauge.apply(ha.cpu(), -1) - hb.cpu()).abs().max().item() for ha, hb in
                 zip(out_a.hidden_states, out_b.hidden_states, strict=True)]
        scales = [ha.abs().max().item() for ha in out_a.hidden_states]
        h_abs = max(diffs)
        h_rel = max(d / max(s, 1e-12) for d, s in zip(diffs, scales, strict=True))
    return Verification(key, diff, diff / scale, h_abs, h_rel, None, None, int(ids.numel()), tol)


def weight_difference(path_a: str | Path, path_b: str | Path, gauge: SignedPermutation) -> tuple[float, str, float]:
    """Max |W_B - G(W_A)| over all tensors (streamed), the tensor with the largest relative difference
    (``|W_B - G(W_A)| / max |W_A|``, tolerance-comparable like the logits), and that relative difference."""
    a, b = open_same_tensors(path_a, path_b)
    spec = a.spec
    check_gauge_fits(spec, gauge, a.d_model)
    rules = spec.classify_all(a.names)
    return streamed_weight_difference(a, b, lambda name, t: transform_tensor(name, t, rules[name], gauge))


def open_same_tensors(path_a: str | Path, path_b: str | Path) -> tuple[Checkpoint, Checkpoint]:
    """Open two checkpoints that must hold the same tensor names (a model and its gauged copy)."""
    a, b = Checkpoint.open(path_a), Checkpoint.open(path_b)
    if set(a.names) != set(b.names):
        extra = sorted(set(a.names) ^ set(b.names))[:5]
        raise CheckpointError(f"checkpoints hold different tensors (e.g. {', '.join(extra)})")
    return a, b


def streamed_weight_difference(a: Checkpoint, b: Checkpoint, transform: Any, *,
                               progress: bool = False) -> tuple[float, str, float]:
    """Max |W_B - T(W_A)| over all tensors, one pair in memory at a time, for ``transform(name, W_A)``;
    also the tensor with the largest relative difference (``/ max |W_A|``) and that difference."""
    from tqdm.auto import tqdm

    from gaugeport.core.allocator import release_freed_memory

    worst, worst_rel, worst_name = 0.0, 0.0, ""
    for name, tb in tqdm(b.iter_tensors(), total=len(b.names), desc="weights", disable=not progress):
        release_freed_memory()  # the previous pair's memory, else the heap keeps it (see the function)
        ta = transform(name, a.tensor(name))
        if tuple(ta.shape) != tuple(tb.shape):
            raise CheckpointError(f"tensor {name!r} has shape {tuple(ta.shape)} in A but {tuple(tb.shape)} in B",
                                  hint="A and B are different models; verify compares a model with its gauged copy")
        d, scale = _max_diff_and_scale(ta, tb)
        rel = d / max(scale, 1e-12) if ta.numel() else 0.0
        worst = max(worst, d)
        if rel >= worst_rel:
            worst_rel, worst_name = rel, name
    return worst, worst_name, worst_rel


_DIFF_CHUNK = 1 << 20  # elements per float64 step: the comparison's extra memory stays ~25 MB


def _max_diff_and_scale(ta: torch.Tensor, tb: torch.Tensor) -> tuple[float, float]:
    """``max |ta - tb|`` and ``max |ta|`` in float64, a chunk at a time (exact: a max of maxima)."""
    fa, fb = ta.reshape(-1), tb.reshape(-1)
    d = scale = 0.0
    for start in range(0, fa.numel(), _DIFF_CHUNK):
        a = fa[start:start + _DIFF_CHUNK].double()
        d = max(d, (a - fb[start:start + _DIFF_CHUNK].double()).abs().max().item())
        scale = max(scale, a.abs().max().item())
    return d, scale


def verify_checkpoints(path_a: str | Path, path_b: str | Path, gauge: SignedPermutation | None = None, *,
                       tol: float = DEFAULT_TOL, data: str | Path | None = None, n_seq: int = 4,
                       seq_len: int = 32, seed: int = 0, weights: bool = True,
                       device: str = "cpu") -> Verification:
    """Run both checkpoints on the same tokens, layer-streamed (:mod:`gaugeport.core.stream`: one block
    of a model in memory at a time, on ``device``), and compare outputs, hidden states and weights."""
    from gaugeport.core.stream import check_device, load_streamed

    tol = check_tolerance(tol)
    dev = check_device(device)
    a, b = Checkpoint.open(path_a), Checkpoint.open(path_b)
    if a.model_type != b.model_type:
        raise CheckpointError(f"different architectures: {a.model_type} vs {b.model_type}",
                              hint="verify compares a checkpoint with a gauged copy of itself")
    if a.d_model != b.d_model:
        raise GaugeError(f"width mismatch: A has d_model={a.d_model}, B has d_model={b.d_model}",
                         hint="verify compares a checkpoint with a gauged copy of itself")
    if gauge is not None:
        check_gauge_fits(get_spec(a.model_type), gauge, a.d_model)
    vocab = a.facts.vocab_size
    if not vocab:
        raise CheckpointError(f"{path_a}/config.json names no vocabulary size; probe tokens cannot be drawn")
    ids = load_token_ids(data, vocab) if data else probe_token_ids(vocab, n_seq, seq_len, seed)
    for ckpt in (a, b):
        check_sequence_length(int(ids.shape[1]), ckpt.position_limit, str(ckpt.path))
    result = compare_models(load_streamed(path_a, dev), load_streamed(path_b, dev), ids, gauge, tol)
    if gauge is not None and weights:
        result.weight_max_abs_diff, result.weight_worst_tensor, result.weight_max_rel_diff = weight_difference(
            path_a, path_b, gauge)
    return result
