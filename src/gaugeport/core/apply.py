"""Apply a gauge to weights: a tensor, a state dict, an ``nn.Module`` or a checkpoint on disk.

Every tensor is transformed by the one rule of its architecture table that claims it; the
transform of a tensor is ``gauge.apply`` along each residual axis that rule names.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gaugeport.core.archspec import ArchSpec, ParamRule
from gaugeport.core.checkpoint import INDEX_FILE, Checkpoint, SafetensorsStreamWriter, shard_layout
from gaugeport.core.errors import GaugeError, GaugeGroupError, GaugeportError
from gaugeport.core.facts import ModelFacts
from gaugeport.core.fileio import atomic_path, atomic_write_json
from gaugeport.core.gauge import SignedPermutation


def check_gauge_fits(spec: ArchSpec, gauge: SignedPermutation, d_model: int) -> None:
    """Refuse a gauge of the wrong width, or outside the architecture's gauge group."""
    if gauge.d != d_model:
        raise GaugeError(
            f"width mismatch: the gauge has d={gauge.d} but this {spec.model_type} model has d_model={d_model}",
            hint="estimate or generate a gauge for this model's hidden size",
        )
    if not spec.allows_coordinate_signs and not gauge.is_global_sign:
        n_neg = int((gauge.signs < 0).sum())
        raise GaugeGroupError(
            f"{spec.model_type} uses LayerNorm, whose gauge group is permutations plus one global sign; "
            f"this gauge flips {n_neg} of {gauge.d} coordinates individually",
            hint="LayerNorm subtracts the mean over coordinates, and flipping some coordinates changes that "
            "mean, so the function would change. Use --perm-only (or a gauge with all signs equal).",
        )


def transform_tensor(name: str, tensor: torch.Tensor, rule: ParamRule, gauge: SignedPermutation) -> torch.Tensor:
    """Apply ``gauge`` to one stored tensor along every residual axis its rule names (each with its mode).

    An axis holding ``k`` concatenated residual vectors (``rule.blocks``) is split into ``k`` blocks
    of size ``d`` and the gauge acts on each block.
    """
    out = tensor
    for i, (axis, mode) in enumerate(zip(rule.axes, rule.modes, strict=True)):
        k = rule.blocks_on(i)
        if axis >= tensor.ndim or tensor.shape[axis] != k * gauge.d:
            raise GaugeError(
                f"{name}: expected the residual axis {axis} to have size "
                f"{gauge.d if k == 1 else f'{k} x {gauge.d}'}, got shape {tuple(tensor.shape)}",
                hint="the checkpoint's hidden size does not match the gauge, or the table row is wrong",
            )
        if k == 1:
            out = gauge.apply(out, axis=axis, mode=mode)
        else:
            split = out.shape[:axis] + (k, gauge.d) + out.shape[axis + 1:]
            out = gauge.apply(out.reshape(split), axis=axis + 1, mode=mode).reshape(out.shape)
    return out


def apply_gauge_to_state_dict(
    state_dict: Mapping[str, torch.Tensor], gauge: SignedPermutation, spec: ArchSpec, d_model: int | None = None
) -> dict[str, torch.Tensor]:
    """A new state dict in the gauge's target coordinates (the input is not modified)."""
    check_gauge_fits(spec, gauge, gauge.d if d_model is None else d_model)
    rules = spec.classify_all(list(state_dict))
    return {n: transform_tensor(n, t, rules[n], gauge) for n, t in state_dict.items()}


@torch.no_grad()
def apply_gauge_to_model(model: torch.nn.Module, gauge: SignedPermutation) -> torch.nn.Module:
    """Rewrite a transformers model's weights in place; tied weights are transformed once."""
    config = getattr(model, "config", None)
    if config is None:
        raise GaugeError("apply_gauge_to_model needs a transformers model (with .config)",
                         hint="for a bare state dict use apply_gauge_to_state_dict(sd, gauge, get_spec(model_type))")
    facts = ModelFacts.from_config(config)
    spec = facts.spec
    check_gauge_fits(spec, gauge, facts.d_model)
    state = model.state_dict(keep_vars=True)
    rules = spec.classify_all(list(state))
    done: set[int] = set()
    for name, tensor in state.items():
        if id(tensor) in done:  # tied: one storage, one transform
            continue
        done.add(id(tensor))
        tensor.data.copy_(transform_tensor(name, tensor.data, rules[name], gauge))
    return model


def apply_gauge_to_checkpoint(
    src: str | Path,
    gauge: SignedPermutation,
    out: str | Path,
    *,
    force: bool = False,
    progress: bool = True,
    provenance: Mapping[str, str] | None = None,
    dequantize: str | None = None,
) -> Path:
    """Stream ``src`` tensor by tensor into a new checkpoint ``out`` in the gauge's coordinates.

    Peak memory is about the largest tensor. Config, tokenizer and generation files are copied;
    the index of a sharded checkpoint is kept. ``out`` appears only when everything succeeded.
    A quantized checkpoint is refused unless ``dequantize="bf16"`` (or ``"fp32"``): then a plain
    checkpoint of that dtype is written, each weight dequantized and then transformed.
    """
    if dequantize is not None:
        return _apply_dequantized(Path(src), gauge, Path(out), dequantize, force=force, progress=progress,
                                  provenance=provenance)
    ckpt = Checkpoint.open(src)
    spec = ckpt.spec
    check_gauge_fits(spec, gauge, ckpt.d_model)
    ckpt.check_widths(spec)
    rules = spec.classify_all(ckpt.names)
    stamp = {"gaugeport_gauge": gauge.fingerprint(), **ckpt.hub, **(provenance or {})}
    with atomic_path(Path(out), force, inputs=(ckpt.path,), kind="directory") as tmp:
        rewrite_checkpoint(ckpt, tmp, lambda name, t: transform_tensor(name, t, rules[name], gauge), stamp,
                           desc="apply", progress=progress)
    return Path(out)


DEQUANTIZE_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _apply_dequantized(src: Path, gauge: SignedPermutation, out: Path, dtype_name: str, *, force: bool,
                       progress: bool, provenance: Mapping[str, str] | None) -> Path:
    from gaugeport.core.quant import plan_dequantized, refuse_quantized, write_dequantized

    if dtype_name not in DEQUANTIZE_DTYPES:
        raise GaugeportError(f"--dequantize {dtype_name!r} is not an output dtype gaugeport writes",
                             hint=f"--dequantize takes {' or '.join(DEQUANTIZE_DTYPES)} (float16's narrow range "
                             "would overflow large dequantized weights)")
    ckpt = Checkpoint.open(src, allow_quantized=True)
    q = ckpt.quantization
    if q is None:
        raise GaugeError(f"{src} is not quantized: --dequantize has nothing to do",
                         hint="drop --dequantize; plain checkpoints keep their dtype")
    if not q.dequantizable:
        raise refuse_quantized(q, src)
    spec = ckpt.spec
    check_gauge_fits(spec, gauge, ckpt.d_model)
    rules = spec.classify_all([p.name for p in plan_dequantized(q, ckpt.names)])
    stamp = {"gaugeport_gauge": gauge.fingerprint(), "gaugeport_dequantized_from": q.scheme, **(provenance or {})}
    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        write_dequantized(ckpt, q, tmp, lambda name, t: transform_tensor(name, t, rules[name], gauge),
                          DEQUANTIZE_DTYPES[dtype_name], stamp, progress=progress)
    return out


def rewrite_checkpoint(ckpt: Checkpoint, dest: Path, rewrite: Callable[[str, torch.Tensor], torch.Tensor],
                       stamp: Mapping[str, str], *, desc: str, progress: bool = True) -> None:
    """Write ``rewrite(name, tensor)`` of every tensor of ``ckpt`` into a new directory ``dest``.

    Same shards, dtypes, shapes and index as the source; side files (config, tokenizer, generation
    config) copied; ``stamp`` added to every shard's metadata. Each tensor is read with plain file
    reads; reading the next tensor and writing the previous one overlap the rewrite of the current
    one (two helper threads), within a budget of :data:`PIPELINE_BUDGET` x the largest tensor of
    tensors alive at once, so the peak stays near a few of the largest tensor.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    from gaugeport.core.checkpoint import ShardReader

    dest.mkdir()
    readers = {shard: ShardReader(ckpt, shard) for shard in ckpt.shards}
    try:
        largest = max((r.nbytes(n) for r in readers.values() for n in r.entries), default=0)
        budget = max(PIPELINE_BUDGET * largest, 64 * 2**20)
        with tqdm(total=len(ckpt.names), desc=desc, unit="tensor", disable=not progress) as bar, \
                ThreadPoolExecutor(max_workers=2, thread_name_prefix="gaugeport-io") as pool:
            for shard, reader in readers.items():
                meta = {**ckpt.shard_metadata(shard), **stamp}
                with SafetensorsStreamWriter(dest / shard, shard_layout(ckpt, shard), meta) as writer:
                    names = list(writer.order)
                    pending: Future | None = None  # the previous tensor's write
                    pending_bytes = 0
                    nxt: Future = pool.submit(reader.read, names[0]) if names else Future()
                    for k, name in enumerate(names):
                        t = nxt.result()
                        size = reader.nbytes(name)
                        if pending is not None and pending_bytes + 2 * size > budget:
                            pending.result()
                            pending, pending_bytes = None, 0
                        following = names[k + 1] if k + 1 < len(names) else None
                        ahead = following is not None and \
                            pending_bytes + 2 * size + reader.nbytes(following) <= budget
                        if ahead:
                            nxt = pool.submit(reader.read, following)
                        out = rewrite(name, t)
                        del t
                        if pending is not None:
                            pending.result()
                        pending, pending_bytes = pool.submit(writer.write, name, out), reader.nbytes(name)
                        del out
                        if following is not None and not ahead:
                            nxt = pool.submit(reader.read, following)
                        bar.update()
                    if pending is not None:
                        pending.result()
    finally:
        for r in readers.values():
            r.close()
    copy_side_files(ckpt, dest)


PIPELINE_BUDGET = 2.5  # bytes alive at once in rewrite_checkpoint, in units of the largest tensor


def copy_side_files(ckpt: Checkpoint, dest: Path) -> None:
    """Config, tokenizer, generation config and the shard index of ``ckpt``, into a new checkpoint ``dest``."""
    for side in ckpt.side_files():
        shutil.copy2(side, dest / side.name)
    if ckpt.index is not None:
        atomic_write_json(dest / INDEX_FILE, ckpt.index)
