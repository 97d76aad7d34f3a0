"""AdamW state in a Hugging Face Trainer checkpoint (``checkpoint-N/``); docs/transport.md.

Adam is elementwise, so it commutes with a signed permutation applied to parameters, gradients and
moments together: ``exp_avg`` (a running mean of gradients) transforms like its parameter (signed;
a norm gain's moment is permuted only, like the gain), ``exp_avg_sq`` (of squared gradients) is
permuted only, since squares carry no sign; step counts are kept.

The optimizer state dict names parameters by index. The Trainer numbers them through its two
parameter groups: the weight-decay names in ``named_parameters()`` order, then the others (tied
weights appear once). gaugeport rebuilds that list from the checkpoint's config with the installed
Trainer's own rule and refuses a state whose group sizes or shapes don't fit it (a custom optimizer,
a sharded layout), rather than guess.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.apply import apply_gauge_to_checkpoint, check_gauge_fits
from gaugeport.core.archspec import spec_for_config
from gaugeport.core.checkpoint import INDEX_FILE, WEIGHT_SUFFIXES, Checkpoint
from gaugeport.core.errors import ArtifactError
from gaugeport.core.fileio import atomic_path
from gaugeport.core.gauge import Mode, SignedPermutation
from gaugeport.transport._common import as_applied, check_finite, load_torch, provenance
from gaugeport.transport.rules import moment_rules

OPTIMIZER = "optimizer.pt"
# Trainer files that carry no residual coordinates: copied as they are
COPIED = re.compile(r"scheduler\.pt|scaler\.pt|training_args\.bin|rng_state(_\d+)?\.pth")


# ------------------------------------------------------------------------------------- one parameter
def transport_param_state(state: Mapping[str, Any], shape: tuple[int, ...], axes: tuple[int, ...],
                          mode: Mode | tuple[Mode, ...], g: SignedPermutation, name: str) -> dict[str, Any]:
    """Adam state of one parameter whose residual ``axes`` transform with ``mode`` (one, or one per axis)."""
    modes = mode if isinstance(mode, tuple) else (mode,) * len(axes)
    rules = moment_rules()  # what each Adam moment is, relative to its parameter
    out: dict[str, Any] = {}
    for key, value in state.items():
        if key not in rules:
            raise ArtifactError(f"optimizer state {key!r} of {name} is not an Adam/AdamW moment",
                                hint="gaugeport transports Adam/AdamW state (exp_avg, exp_avg_sq, step); "
                                "other optimizers keep other statistics")
        if rules[key].mode("none") is None:  # kept as it is (the step count)
            out[key] = value
            continue
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ArtifactError(f"optimizer {key} for {name} has shape {got}, the parameter has {tuple(shape)}",
                                hint="the optimizer's parameter order does not match the Trainer's groups "
                                "(a custom optimizer or a sharded layout?)")
        check_finite(value, f"optimizer {key} of {name}")
        for axis, md in zip(axes, modes, strict=True):
            m = rules[key].mode(md)
            value = g.apply(value, axis=axis, mode=m)
        out[key] = value
    return out


# ------------------------------------------------------------------------------------- the Trainer's mapping
def trainer_param_groups(model: torch.nn.Module) -> tuple[list[tuple[str, tuple[int, ...]]], ...]:
    """(decay, no-decay) lists of (name, shape), in the order ``Trainer.create_optimizer`` numbers them."""
    from transformers import Trainer

    # the installed Trainer's own rule (it uses no instance state), so a new transformers can't drift from us
    decay = set(Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    params = [(n, tuple(p.shape)) for n, p in model.named_parameters() if p.requires_grad]
    return [p for p in params if p[0] in decay], [p for p in params if p[0] not in decay]


def meta_model(config: Mapping[str, Any]) -> torch.nn.Module:
    """The checkpoint's model class built on the meta device (names and shapes only, no memory)."""
    import transformers

    cfg = transformers.AutoConfig.for_model(**dict(config))
    arch = (config.get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    with torch.device("meta"):
        if cls is not None:
            return cls(cfg)
        return getattr(transformers, spec_for_config(config).task_class).from_config(cfg)


def transport_optimizer_state(opt_state: Mapping[str, Any], model_or_config: torch.nn.Module | Mapping[str, Any],
                              gauge: SignedPermutation, perm_only: bool = False) -> dict[str, Any]:
    """A Trainer AdamW ``optimizer.state_dict()`` in the gauge's coordinates (the input is not modified)."""
    g = as_applied(gauge, perm_only)
    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else meta_model(model_or_config)
    spec = spec_for_config(model.config)
    names = _match_groups(opt_state, trainer_param_groups(model))
    new_state = dict(opt_state["state"])
    for idx, (name, shape) in names.items():
        if idx in new_state:
            rule = spec.classify(name)
            new_state[idx] = transport_param_state(new_state[idx], shape, rule.axes, rule.modes, g, name)
    return {**opt_state, "state": new_state}


def _match_groups(opt_state: Mapping[str, Any], groups: tuple[list[tuple[str, tuple[int, ...]]], ...]
                  ) -> dict[int, tuple[str, tuple[int, ...]]]:
    if not isinstance(opt_state, Mapping) or "param_groups" not in opt_state or "state" not in opt_state:
        raise ArtifactError("not an optimizer state dict (needs 'state' and 'param_groups')")
    got = [list(group["params"]) for group in opt_state["param_groups"]]
    want = [len(gr) for gr in groups]
    if [len(x) for x in got] != want:
        raise ArtifactError(
            f"optimizer parameter groups have sizes {[len(x) for x in got]}; the Trainer's default AdamW "
            f"for this model has {want} (weight decay, no weight decay)",
            hint="a custom optimizer, custom parameter groups or a sharded/FSDP layout: gaugeport cannot tell "
            "which tensor is which, so it refuses rather than guess",
        )
    return {idx: p for ids, group in zip(got, groups, strict=True) for idx, p in zip(ids, group, strict=True)}


# ------------------------------------------------------------------------------------- checkpoint-N/
def transport_trainer_checkpoint(src_dir: str | Path, gauge: SignedPermutation, out_dir: str | Path,
                                 perm_only: bool = False, force: bool = False, progress: bool = False) -> Path:
    """Transport a Trainer ``checkpoint-N/`` so that training resumes in the gauge's coordinates.

    Model weights go through the core apply with the full gauge, so the output holds checkpoint B;
    ``optimizer.pt`` is transformed as the module docstring says; scheduler, RNG, scaler and
    trainer state are copied. ``perm_only`` (the S_d baseline) drops the signs for the optimizer
    state only, i.e. what a permutation-only tool would hand to B.
    """
    src, out = Path(src_dir), Path(out_dir)
    ckpt = Checkpoint.open(src)
    g = as_applied(gauge)
    check_gauge_fits(ckpt.spec, g, ckpt.d_model)
    if not (src / OPTIMIZER).is_file():
        raise ArtifactError(f"{src} has no {OPTIMIZER}: not a Trainer checkpoint with optimizer state",
                            hint="for model weights alone use `gaugeport apply`")
    copied = _plan_trainer_files(src, ckpt)
    state = load_torch(src / OPTIMIZER, "optimizer state", hint="the Trainer saves optimizer.pt with torch.save of "
                       "optimizer.state_dict(); anything else is not a Trainer checkpoint")
    moved = transport_optimizer_state(state, ckpt.config, g, perm_only)
    stamp = provenance(g, src, perm_only, "trainer-checkpoint")
    with atomic_path(out, force, inputs=(src,), kind="directory") as tmp:
        apply_gauge_to_checkpoint(src, g, tmp, progress=progress, provenance=stamp)
        torch.save(moved, tmp / OPTIMIZER)
        for name in copied:
            shutil.copy2(src / name, tmp / name)
    return out


def _plan_trainer_files(src: Path, ckpt: Checkpoint) -> list[str]:
    """Trainer files to copy; anything holding tensors gaugeport can't place is refused up front."""
    weights = set(ckpt.shards) | {INDEX_FILE}
    copied = []
    for p in sorted(src.iterdir()):
        if p.name in weights or p.name == OPTIMIZER:
            continue
        if p.is_dir():
            raise ArtifactError(f"{src} contains the directory {p.name}/, which gaugeport does not know",
                                hint="e.g. an FSDP/DeepSpeed shard folder: those layouts are not supported")
        if COPIED.fullmatch(p.name):
            copied.append(p.name)
        elif p.suffix in WEIGHT_SUFFIXES or p.name.startswith(OPTIMIZER):
            raise ArtifactError(f"{src} contains {p.name}, which may hold tensors gaugeport cannot place",
                                hint="sharded optimizer states (optimizer.pt_*, rank*-of-*-optimizer.pt) and extra "
                                "weight files are not supported; copying them untransformed would corrupt resuming")
    return copied

