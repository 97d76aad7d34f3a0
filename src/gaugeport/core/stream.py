"""Layer-streamed execution: run a checkpoint of any depth with one block's weights in memory.

:func:`load_streamed` builds the checkpoint's own ``transformers`` class with every parameter on the
``meta`` device (no storage; buffers such as rotary frequencies are computed on the CPU as usual),
loads the tensors that are not inside a block (embeddings, final norm, head, a vision tower) and
registers, on each block of the table's ``sites.layers`` list, a forward pre-hook that reads *that
block's* tensors from the safetensors files (float32, on the stream device) and a forward hook that
drops them again. The model's own ``forward`` does everything else (attention masks, rotary
embeddings, attention itself), so the streamed model computes what ``from_pretrained`` computes:
all tokens of a call pass through block 0, whose weights are then freed, then block 1, and so on.

The input and output embeddings are streamed the same way (read before their forward, dropped
after), so the peak is the largest block or embedding plus the small resident part (norms, buffers,
a vision tower) plus the activations, whatever the depth. Each forward call reads the blocks once:
callers that run many batches (activation collection) read the checkpoint once per batch, bounded
in memory, not in reads.

A checkpoint whose tensors do not map one to one onto the class's parameters (``transformers``
converts some layouts while loading, e.g. per-expert mixture-of-experts tensors into fused ones)
cannot be streamed tensor by tensor: :func:`load_streamed` then loads the whole model and says so
in :attr:`StreamInfo.note`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaugeport.core.allocator import release_freed_memory
from gaugeport.core.checkpoint import Checkpoint, _open
from gaugeport.core.errors import CheckpointError, GaugeportError

STREAM_ATTR = "_gaugeport_stream"


class StreamFallbackWarning(UserWarning):
    """A checkpoint runs as a whole model (its memory grows with depth): the note says why."""


@dataclass
class StreamInfo:
    """How a model returned by :func:`load_streamed` runs."""

    path: Path
    device: torch.device
    streamed: bool  # False: the whole model is in memory (the fallback)
    note: str = ""  # why the fallback was taken
    n_blocks: int = 0
    block_names: list[list[str]] = field(default_factory=list)  # per block: its parameters' model names
    blocks_loaded: int = 0  # block loads so far (a forward call loads every block once)


def check_device(device: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N``; an error (exit 2) when CUDA is asked for and absent."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise GaugeportError(f"unknown device {device!r}", hint="use cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise GaugeportError(f"unknown device {device!r}", hint="use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise GaugeportError(f"--device {device}: no CUDA device is available", hint="use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GaugeportError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)",
                                 hint="use cuda:0 ... or --device cpu")
    return dev


def stream_info(model: torch.nn.Module) -> StreamInfo | None:
    """The :class:`StreamInfo` of a model built by :func:`load_streamed`, else None."""
    return getattr(model, STREAM_ATTR, None)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where a model computes: the stream device of a streamed model, else its first parameter's."""
    info = stream_info(model)
    if info is not None:
        return info.device
    return next(model.parameters()).device


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Create parameters on ``meta`` (no storage) while buffers are created as usual, on the CPU."""
    original = torch.nn.Module.register_parameter

    def register(module: torch.nn.Module, name: str, param: torch.nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and param.device.type != "meta":
            p = module._parameters[name]
            module._parameters[name] = torch.nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    torch.nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]


def _blocks(model: torch.nn.Module, ckpt: Checkpoint) -> tuple[str, torch.nn.ModuleList] | None:
    """The block list named by the table's ``sites.layers`` (in any layout its prefix aliases allow)."""
    spec = ckpt.spec
    for path in spec.module_paths(spec.sites.layers):
        with contextlib.suppress(AttributeError):
            mod = model.get_submodule(path.rstrip("."))
            if isinstance(mod, torch.nn.ModuleList) and len(mod):
                return path.rstrip("."), mod
    return None


def _key_map(model: torch.nn.Module, names: list[str]) -> dict[str, str] | str:
    """Model parameter name -> stored tensor name, renamed exactly as ``from_pretrained`` renames (the
    class's registered renamings, the base-model prefix added or stripped); or why a tensor cannot be
    loaded alone (``transformers`` merges or splits it while loading, e.g. per-expert MoE weights)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    mapping = get_model_conversion_mapping(model)
    renamings = [m for m in mapping if isinstance(m, WeightRenaming)]
    converters = [m for m in mapping if isinstance(m, WeightConverter)]
    meta_sd = model.state_dict()
    base = getattr(model, "base_model_prefix", None)
    out: dict[str, str] = {}
    for key in names:
        renamed, pattern = rename_source_key(key, renamings, converters, base, meta_sd)
        if renamed not in meta_sd and key in meta_sd:
            renamed, pattern = rename_source_key(key, [], [], base_model_prefix=base, meta_state_dict=meta_sd)
        if renamed not in meta_sd:
            continue  # an extra stored tensor (from_pretrained ignores it too)
        if pattern is not None:
            return f"transformers converts {key} while loading (it merges or splits stored tensors)"
        out[renamed] = key
    return out


class _Slots:
    """Every (module, attribute) holding one parameter object (tied weights share one)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.groups: dict[int, list[tuple[str, torch.nn.Module, str]]] = {}
        for mod_name, mod in model.named_modules(remove_duplicate=False):
            for leaf, p in mod._parameters.items():
                if p is not None:
                    full = f"{mod_name}.{leaf}" if mod_name else leaf
                    self.groups.setdefault(id(p), []).append((full, mod, leaf))

    def assign(self, members: list[tuple[str, torch.nn.Module, str]], tensor: torch.Tensor) -> None:
        p = torch.nn.Parameter(tensor, requires_grad=False)
        for _, mod, leaf in members:
            mod._parameters[leaf] = p


# ---------------------------------------------------------------------- whole-model loading
def model_class_for(config: Any) -> type:
    """The class a checkpoint was saved from (``config.architectures``), else the table's task head."""
    import transformers

    from gaugeport.core.facts import ModelFacts

    facts = ModelFacts.from_config(config)
    for name in facts.architectures:
        cls = getattr(transformers, name, None) if name.isidentifier() else None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    return getattr(transformers, facts.spec.task_class)


def load_model(path: str | Path) -> torch.nn.Module:
    """Load a checkpoint as its own class, in float32, eval mode; refuse if any tensor would be random."""
    import transformers

    ckpt = Checkpoint.open(path)
    cls = model_class_for(ckpt.config)
    transformers.utils.logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(str(ckpt.path), dtype=torch.float32,  # ckpt.path: a hub ID resolved
                                          output_loading_info=True)
    except Exception as exc:
        raise CheckpointError(f"transformers could not load {path}: {exc}") from exc
    missing = sorted(info.get("missing_keys") or []) + sorted(str(k) for k in info.get("mismatched_keys") or [])
    if missing:
        raise CheckpointError(
            f"loading {path} as {getattr(cls, '__name__', cls)} would randomly initialise {len(missing)} tensor(s): "
            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""),
            hint="a comparison through random weights proves nothing; fix config.json's 'architectures' to "
            "name the class these weights were saved from",
        )
    return model.eval()


def load_streamed(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The checkpoint's model in float32 and eval mode, its blocks streamed from disk (see the module doc).

    Refuses, like :func:`load_model`, to run with any randomly initialised
    tensor. ``device``: where the blocks run (``cuda`` streams each block to the GPU)."""
    import transformers

    dev = check_device(device)
    ckpt = Checkpoint.open(path)
    cls = model_class_for(ckpt.config)
    transformers.utils.logging.disable_progress_bar()
    try:
        config = transformers.AutoConfig.from_pretrained(str(ckpt.path))
        with _parameters_on_meta():
            model = cls._from_config(config, dtype=torch.float32)
    except Exception as exc:
        raise CheckpointError(f"transformers could not build {path}: {exc}") from exc
    model.eval()
    plan = _plan(model, ckpt)
    if isinstance(plan, str):  # cannot stream tensor by tensor: the whole model, with a note
        del model
        warnings.warn(f"{ckpt.path}: loaded whole, not layer-streamed: {plan}", StreamFallbackWarning, stacklevel=2)
        whole = load_model(path).to(dev)
        setattr(whole, STREAM_ATTR, StreamInfo(ckpt.path, dev, False, plan))
        return whole
    slots, resident, units = plan
    for _, buf_owner in model.named_modules():
        for bname, buf in list(buf_owner._buffers.items()):
            if buf is not None and buf.device != dev:
                buf_owner._buffers[bname] = buf.to(dev)
    _load_into(ckpt, slots, resident, dev)
    n_blocks = sum(1 for u in units if u.block)
    info = StreamInfo(ckpt.path, dev, True, "", n_blocks,
                      [[m[0][0] for m, _ in u.groups] for u in units if u.block])
    arena = _Arena() if dev.type == "cpu" else None  # the streamed units' float32 weights, one unit at a time
    for unit in units:
        for members, _ in unit.groups:
            slots.assign(members, placeholder(members[0][1]._parameters[members[0][2]].shape, dev))
        unit.module.register_forward_pre_hook(_loader(ckpt, slots, unit, dev, info, arena))
        unit.module.register_forward_hook(_dropper(slots, unit.groups, dev, None if unit.block else arena))
    if arena is not None:  # given back after each forward of the whole model, also one a hook stopped early:
        # two models run one after the other (verify, same) never hold two areas at once, and no parameter is
        # left viewing an area the next forward reuses
        model.register_forward_hook(_releaser(slots, units, dev, arena), always_call=True)
    setattr(model, STREAM_ATTR, info)
    return model


_Members = list[tuple[str, torch.nn.Module, str]]
_Group = tuple[_Members, str]  # the modules sharing one parameter, and the stored tensor it loads from


@dataclass
class _Unit:
    """A module whose parameters are read just before its forward and dropped just after."""

    module: torch.nn.Module
    prefix: str  # its name in the model, with a trailing dot
    block: bool  # one of the blocks (else an input / output embedding)
    groups: list[_Group] = field(default_factory=list)


def _units(model: torch.nn.Module, ckpt: Checkpoint) -> list[_Unit] | str:
    """The blocks (the table's ``sites.layers``), then the input and output embeddings: the parts of a
    model that grow with its depth or its vocabulary. Everything else (norms, a vision tower) stays."""
    found = _blocks(model, ckpt)
    if found is None:
        return f"no block list at {ckpt.spec.sites.layers!r} in {type(model).__name__}"
    block_path, blocks = found
    units = [_Unit(b, f"{block_path}.{i}.", True) for i, b in enumerate(blocks)]
    names = {id(m): n for n, m in model.named_modules()}
    for get in ("get_input_embeddings", "get_output_embeddings"):
        with contextlib.suppress(AttributeError, NotImplementedError):
            mod = getattr(model, get)()
            inside = isinstance(mod, torch.nn.Module) and id(mod) in names and \
                not names[id(mod)].startswith(block_path + ".")
            if inside and all(u.module is not mod for u in units):
                units.append(_Unit(mod, names[id(mod)] + ".", False))
    return units


def _plan(model: torch.nn.Module, ckpt: Checkpoint) -> str | tuple[_Slots, list[_Group], list[_Unit]]:
    """Which stored tensor fills each parameter, and which unit loads it; or why streaming is off."""
    units = _units(model, ckpt)
    if isinstance(units, str):
        return units
    keys = _key_map(model, ckpt.names)
    if isinstance(keys, str):
        return keys
    slots = _Slots(model)
    header = _shapes(ckpt)
    resident: list[_Group] = []
    missing = []
    for members in slots.groups.values():
        key = next((keys[full] for full, _, _ in members if full in keys), None)
        if key is None:
            missing.append(members[0][0])
            continue
        meta = members[0][1]._parameters[members[0][2]]
        if tuple(header[key]) != tuple(meta.shape):
            return (f"tensor {key} is stored as {tuple(header[key])} but {type(model).__name__} holds "
                    f"{tuple(meta.shape)} (transformers converts it while loading)")
        owners = [u for u in units if any(full.startswith(u.prefix) for full, _, _ in members)]
        blocks = {id(u) for u in owners if u.block}
        # a parameter shared across blocks, or between a block and the rest, stays resident
        if not owners or len(blocks) > 1 or (blocks and len(owners) > 1) or \
                any(not any(full.startswith(u.prefix) for u in owners) for full, _, _ in members):
            resident.append((members, key))
        else:
            for u in owners:
                u.groups.append((members, key))
    if missing:
        return (f"{len(missing)} parameter(s) of {type(model).__name__} have no tensor of the same name in "
                f"the checkpoint (e.g. {missing[0]}; transformers renames or converts them while loading)")
    return slots, resident, units


def _shapes(ckpt: Checkpoint) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for shard in ckpt.shards:
        with _open(ckpt.path / shard) as f:
            for name in f.keys():  # noqa: SIM118
                out[name] = tuple(f.get_slice(name).get_shape())
    return out


class _Arena:
    """One float32 area that a streamed model's units (blocks, embeddings) convert their weights into as
    they load, each over the one before (a unit's weights are dropped before the next unit loads).

    Without it every unit's weights went into freshly allocated memory: on a machine that hands freed
    pages back to its host, a fresh page costs 1 to 2.5 s per GB, more than reading the checkpoint. The
    area is allocated for the largest unit met since it was last given back (2 MB pages where the kernel
    offers them, :func:`gaugeport.core.buffers.reusable_buffer`), outside the C heap, so trimming the heap
    after a block works as before. It is given back (:meth:`release`) after an embedding's forward (the
    blocks then share a block-sized area, not one the size of the vocabulary) and after each forward of
    the whole model: the peak stays one unit of one model, as without it."""

    ALIGN = 64

    def __init__(self) -> None:
        self.area: Any = None  # numpy uint8 array, or None

    def tensors(self, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        """Float32 tensors of these shapes, side by side in the area (contents undefined); they stay valid
        until the next call or :meth:`release`."""
        from gaugeport.core.buffers import reusable_buffer

        sizes = [-(-4 * math.prod(s) // self.ALIGN) * self.ALIGN for s in shapes]
        if self.area is None or self.area.nbytes < sum(sizes):
            self.area = None  # the smaller area goes first: never two at once
            self.area = reusable_buffer(max(sum(sizes), self.ALIGN))
        out, offset = [], 0
        for shape, size in zip(shapes, sizes, strict=True):
            n = 4 * math.prod(shape)
            out.append(torch.from_numpy(self.area[offset:offset + n]).view(torch.float32).reshape(shape))
            offset += size
        return out

    def release(self) -> None:
        self.area = None


def _load_into(ckpt: Checkpoint, slots: _Slots, groups: list[_Group], dev: torch.device,
               arena: _Arena | None = None) -> None:
    """Read each group's tensor (one open per shard), float32 on ``dev``, into every slot sharing it; with
    ``arena`` (CPU), converted from the file's pages (mapped, populated at once) into the arena."""
    if arena is not None:
        _load_into_arena(ckpt, slots, groups, arena)
        return
    by_shard: dict[str, list[_Group]] = {}
    for g in groups:
        by_shard.setdefault(ckpt.shard_of[g[1]], []).append(g)
    for shard, gs in by_shard.items():
        file = ckpt.path / shard
        with _open(file) as f:
            for members, key in gs:
                try:
                    t = f.get_tensor(key)
                except Exception as exc:
                    raise CheckpointError(f"cannot read tensor {key!r} from {file}: {exc}",
                                          hint="the file is truncated or corrupt") from exc
                slots.assign(members, t.to(device=dev, dtype=torch.float32))


def _load_into_arena(ckpt: Checkpoint, slots: _Slots, groups: list[_Group], arena: _Arena) -> None:
    from gaugeport.core.checkpoint import ShardReader
    from gaugeport.core.fileio import _name_to_dtype

    readers: dict[str, ShardReader] = {}
    try:
        entries = []
        for members, key in groups:
            shard = ckpt.shard_of[key]
            if shard not in readers:
                readers[shard] = ShardReader(ckpt, shard)
            entries.append((members, key, readers[shard]))
        targets = arena.tensors([tuple(r.entries[key][1]) for _, key, r in entries])
        for (members, key, r), dst in zip(entries, targets, strict=True):
            if r.entries[key][0].upper() not in _name_to_dtype() or r.nbytes(key) == 0:
                _load_into(ckpt, slots, [(members, key)], torch.device("cpu"))  # no plain view: as stored
                continue
            try:
                stored = r.map(key, checked=False, populate=True)
            except Exception as exc:
                raise CheckpointError(f"cannot read tensor {key!r} from {r.file}: {exc}",
                                      hint="the file is truncated or corrupt") from exc
            dst.copy_(stored)
            del stored  # the mapping goes with it
            slots.assign(members, dst)
    finally:
        for r in readers.values():
            r.close()


def _loader(ckpt: Checkpoint, slots: _Slots, unit: _Unit, dev: torch.device, info: StreamInfo,
            arena: _Arena | None = None) -> Any:
    def hook(module: torch.nn.Module, args: Any) -> None:
        _load_into(ckpt, slots, unit.groups, dev, arena)
        info.blocks_loaded += unit.block
    return hook


def placeholder(shape: torch.Size, dev: torch.device) -> torch.Tensor:
    """What a dropped parameter becomes: its shape, dtype and device (model code reads
    ``weight.device`` outside the module's forward) over one NaN, so a stray use cannot go unseen."""
    return torch.full((1,), float("nan"), dtype=torch.float32, device=dev).expand(shape)


def is_dropped(p: torch.Tensor) -> bool:
    """A parameter holding no weights now (not yet read, or dropped after its forward)."""
    return p.device.type == "meta" or (p.numel() > 1 and p.untyped_storage().nbytes() <= p.element_size())


def _releaser(slots: _Slots, units: list[_Unit], dev: torch.device, arena: _Arena) -> Any:
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        for unit in units:
            for members, _ in unit.groups:
                p = members[0][1]._parameters[members[0][2]]
                if not is_dropped(p):
                    slots.assign(members, placeholder(p.shape, dev))
        arena.release()
    return hook


def _dropper(slots: _Slots, groups: list[_Group], dev: torch.device, arena: _Arena | None = None) -> Any:
    """``arena`` (an embedding's unit): given back too, so the blocks after it hold a block-sized area, not
    one the size of the vocabulary."""
    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        for members, _ in groups:
            p = members[0][1]._parameters[members[0][2]]
            slots.assign(members, placeholder(p.shape, dev))
        if arena is not None:
            arena.release()
        release_freed_memory()
    return hook
