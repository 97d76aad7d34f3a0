"""Residual-stream activations of two models on the same tokens, folded into cross-moments.

Site names are the same for every architecture:

=================  ==================================================================
``embed``          the stream entering the first block (token + position embeddings, scaled)
``resid_pre.L``    the stream entering block ``L`` (``resid_pre.0`` is ``embed``)
``resid_mid.L``    inside block ``L``, after attention has written (where the block has one)
``resid_post.L``   the stream leaving block ``L`` (``resid_pre.L+1``)
``final``          the stream entering the final norm (``resid_post`` of the last block)
=================  ==================================================================

Where each one hooks in comes from the architecture table's ``sites`` entry (``SiteSpec``), so no
architecture needs code here. Sites that name the same tensor are hooked once. By default every
*distinct* stream is collected (``embed``, every ``resid_mid``, every ``resid_post``); ``resid_pre``
and ``final`` are aliases, available by name.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from gaugeport.core.archspec import ArchSpec, spec_for_config
from gaugeport.core.errors import ArchitectureError, DataError
from gaugeport.core.facts import facts_of
from gaugeport.core.stream import model_device, stream_info
from gaugeport.estimate.data import Batch
from gaugeport.estimate.moments import CrossMoments, MomentSet, NonFiniteError, check_moment_memory

_SITE = re.compile(r"^(?:embed|final|resid_(pre|mid|post)\.(\d+))$")


@dataclass(frozen=True)
class HookTarget:
    """One place in a model's forward pass: a module's input (pre-hook) or its output."""

    module: torch.nn.Module
    kind: Literal["input", "output"]


class _Stop(Exception):
    """Raised by the last needed hook: the rest of the forward pass (final norm, lm_head) is skipped."""


# ----------------------------------------------------------------------------- model facts
def model_spec(model: torch.nn.Module) -> ArchSpec:
    config = getattr(model, "config", None)
    if config is None:
        raise ArchitectureError("activation collection needs a transformers model (with .config)")
    return spec_for_config(config)


def d_model(model: torch.nn.Module) -> int:
    return facts_of(model).d_model


def vocab_size(model: torch.nn.Module) -> int | None:
    return facts_of(model).vocab_size


def special_token_ids(model: torch.nn.Module) -> set[int]:
    """pad / bos / eos ids from the config (masked out of the statistics)."""
    return set(facts_of(model).special_ids)


FINGERPRINT_VALUES = 16


def model_fingerprint(model: torch.nn.Module) -> str:
    """Identity of a model for merging moments: config facts plus the first values of every tensor.

    Equal to :func:`checkpoint_fingerprint` of the directory the model was loaded from (tensors are
    hashed as a set of per-tensor digests, so tied weights, stored once on disk, count once).
    """
    info = stream_info(model)
    if info is not None and info.streamed:  # its weights are on disk, one block at a time
        return checkpoint_fingerprint(info.path)
    spec = model_spec(model)
    facts = {"model_type": spec.model_type, "d": d_model(model), "layers": len(_layers(model, spec)),
             "vocab": vocab_size(model)}
    digests = {_digest(t.shape, t.detach().reshape(-1)[:FINGERPRINT_VALUES])
               for t in model.state_dict().values() if t.is_floating_point()}
    return _fingerprint(facts, digests)


def checkpoint_fingerprint(path: str | Path) -> str:
    """:func:`model_fingerprint` of a checkpoint directory, reading only a slice of each tensor."""
    from safetensors import safe_open

    from gaugeport.core.checkpoint import Checkpoint

    ckpt = Checkpoint.open(path)
    mf = ckpt.facts
    facts = {"model_type": mf.spec.model_type, "d": mf.d_model, "layers": mf.n_layers, "vocab": mf.vocab_size}
    digests = set()
    for shard in ckpt.shards:
        with safe_open(str(ckpt.path / shard), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                sl = f.get_slice(name)
                shape = tuple(sl.get_shape())
                if sl.get_dtype() not in ("F64", "F32", "F16", "BF16") or not shape:
                    continue
                head = sl[:1] if len(shape) > 1 else sl[:FINGERPRINT_VALUES]
                digests.add(_digest(shape, head.reshape(-1)[:FINGERPRINT_VALUES]))
    return _fingerprint(facts, digests)


def _digest(shape: Sequence[int], head: torch.Tensor) -> str:
    return hashlib.sha256(str(tuple(shape)).encode() + head.float().cpu().numpy().tobytes()).hexdigest()


def _fingerprint(facts: dict[str, Any], digests: set[str]) -> str:
    h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
    for dg in sorted(digests):
        h.update(dg.encode())
    return f"{facts['model_type']}:{h.hexdigest()[:20]}"


def _get(model: torch.nn.Module, path: str, spec: ArchSpec) -> torch.nn.Module:
    """Resolve an attribute path in any layout the table's prefix aliases allow (``bert.`` in
    BertForMaskedLM, a bare base model without ``model.``, a multimodal wrapper's language model)."""
    for c in spec.module_paths(path):
        try:
            return model.get_submodule(c.rstrip("."))
        except AttributeError:
            continue
    raise ArchitectureError(f"{type(model).__name__} has no module {path!r} (named in the {spec.model_type} "
                            "table's sites)", hint="the architecture table's 'sites' entry does not fit this class")


def _layers(model: torch.nn.Module, spec: ArchSpec) -> torch.nn.ModuleList:
    layers = _get(model, spec.sites.layers, spec)
    if not isinstance(layers, torch.nn.ModuleList) or len(layers) == 0:
        raise ArchitectureError(f"{spec.sites.layers} is not a non-empty ModuleList of blocks")
    return layers


# ----------------------------------------------------------------------------- sites
def available_sites(model: torch.nn.Module) -> list[str]:
    """Every site name this model has, in forward order."""
    spec = model_spec(model)
    n = len(_layers(model, spec))
    out = ["embed"]
    for layer in range(n):
        out.append(f"resid_pre.{layer}")
        if spec.sites.mid is not None:
            out.append(f"resid_mid.{layer}")
        out.append(f"resid_post.{layer}")
    return [*out, "final"]


def default_sites(model: torch.nn.Module) -> list[str]:
    """The distinct streams: ``embed``, every ``resid_mid.L`` and every ``resid_post.L``."""
    return [s for s in available_sites(model) if not s.startswith("resid_pre.") and s != "final"]


def resolve_sites(model: torch.nn.Module, sites: Sequence[str] | None) -> list[str]:
    """Validate site names (``None``: the defaults); ``all`` expands to every site. TransformerLens hook
    names (``blocks.3.hook_resid_post``) and module paths (``model.layers.3``) are accepted too."""
    avail = available_sites(model)
    if sites is None or len(sites) == 0:
        return default_sites(model)
    from gaugeport.transport.sites import canonical_site  # TransformerLens hook names, module paths

    out: list[str] = []
    for s in map(canonical_site, sites):
        names = avail if s == "all" else [s]
        for name in names:
            if name not in avail:
                kind = "unknown site name" if not _SITE.match(name) else "site not in this model"
                raise DataError(f"{kind}: {name!r}", hint="available: " + ", ".join(_abbrev(avail)))
            if name not in out:
                out.append(name)
    return out


def _abbrev(names: list[str]) -> list[str]:
    return names if len(names) <= 12 else [*names[:6], "...", *names[-4:]]


def hook_targets(model: torch.nn.Module, sites: Sequence[str]) -> dict[str, HookTarget]:
    """Where each site is read, from the architecture table's ``SiteSpec``."""
    spec = model_spec(model)
    layers = _layers(model, spec)
    out: dict[str, HookTarget] = {}
    for site in sites:
        m = _SITE.match(site)
        if not m:
            raise DataError(f"unknown site name {site!r}")
        if site == "embed":
            out[site] = HookTarget(layers[0], "input")
        elif site == "final":
            f = spec.sites.final
            out[site] = (HookTarget(layers[-1], "output") if f is None
                         else HookTarget(_get(model, f.module, spec), f.hook))
        else:
            kind, layer = m.group(1), int(m.group(2))
            if layer >= len(layers):
                raise DataError(f"site {site!r}: the model has {len(layers)} blocks")
            block = layers[layer]
            if kind == "pre":
                out[site] = HookTarget(block, "input")
            elif kind == "post":
                out[site] = HookTarget(block, "output")
            else:
                mid = spec.sites.mid
                if mid is None:
                    raise DataError(f"site {site!r}: {spec.model_type} blocks have no mid-block residual "
                                    "(parallel attention and MLP)")
                out[site] = HookTarget(block.get_submodule(mid.module), mid.hook)
    return out


# ----------------------------------------------------------------------------- capture
class _Capture:
    """Hooks that copy the counted positions of each site's stream during one forward pass."""

    def __init__(self, model: torch.nn.Module, sites: Sequence[str]) -> None:
        targets = hook_targets(model, sites)
        self.groups: dict[tuple[int, str], tuple[HookTarget, list[str]]] = {}
        for site, tgt in targets.items():  # sites naming one tensor share one hook
            key = (id(tgt.module), tgt.kind)
            self.groups.setdefault(key, (tgt, []))[1].append(site)
        self.flat_mask: torch.Tensor | None = None
        self.out: dict[str, torch.Tensor] = {}
        self.seen: set[str] = set()  # sites captured in this run
        self.consume: Callable[[str, torch.Tensor], None] | None = None
        self.handles: list[Any] = []
        self.active = False  # hooks stay silent outside run(): A and B may be one module object

    def __enter__(self) -> _Capture:
        for tgt, names in self.groups.values():
            if tgt.kind == "input":
                # before any other pre-hook: a streamed block is not read when the capture stops here
                h = tgt.module.register_forward_pre_hook(self._pre(names), with_kwargs=True, prepend=True)
            else:
                h = tgt.module.register_forward_hook(self._post(names))
            self.handles.append(h)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()

    def _store(self, names: list[str], x: Any) -> None:
        if not self.active:
            return
        t = x[0] if isinstance(x, tuple | list) else x
        if not isinstance(t, torch.Tensor):
            raise ArchitectureError(f"site {names[0]}: the hooked module passed {type(t).__name__}, not a tensor")
        rows = t.detach().reshape(-1, t.shape[-1])[self.flat_mask]  # a copy: later in-place ops cannot touch it
        for n in names:
            self.out[n] = rows
        if self.consume is not None:  # handed over now, not kept until the end of the forward pass
            for n in names:
                if n in self.seen:  # the rows kept would be the last call's; handed over, the first's
                    raise ArchitectureError(f"site {n} was reached twice in one forward pass",
                                            hint="the architecture table's 'sites' entry does not fit this model")
                self.consume(n, self.out.pop(n))
        self.seen.update(names)
        if len(self.seen) == sum(len(v[1]) for v in self.groups.values()):
            raise _Stop

    def _pre(self, names: list[str]) -> Any:
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            self._store(names, args[0] if args else kwargs["hidden_states"])
        return hook

    def _post(self, names: list[str]) -> Any:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            self._store(names, output)
        return hook

    @torch.no_grad()
    def run(self, model: torch.nn.Module, batch: Batch,
            consume: Callable[[str, torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
        """Each site's counted rows for ``batch``; with ``consume``, each site's rows are handed to
        ``consume(site, rows)`` as soon as the forward pass reaches the site, and not returned."""
        device = model_device(model)
        self.flat_mask = batch.token_mask.reshape(-1).to(device)
        self.out = {}
        self.seen = set()
        self.consume = consume
        self.active = True
        try:
            model(**_forward_kwargs(model, batch.input_ids.to(device), batch.attention_mask.to(device)))
        except _Stop:
            pass
        finally:
            self.active = False
        missing = [s for _, names in self.groups.values() for s in names if s not in self.seen]
        if missing:
            raise ArchitectureError(f"sites {', '.join(missing)} were never reached in the forward pass",
                                    hint="the architecture table's 'sites' entry does not fit this model class")
        return self.out


def _forward_kwargs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
    kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if "use_cache" in inspect.signature(model.forward).parameters:
        kw["use_cache"] = False  # no KV cache: nothing is generated
    return kw


# ----------------------------------------------------------------------------- collection
def check_pair(model_a: torch.nn.Module, model_b: torch.nn.Module) -> None:
    """Refuse pairs no gauge can relate: other architectures, other widths."""
    sa, sb = model_spec(model_a), model_spec(model_b)
    if sa.model_type != sb.model_type:
        raise ArchitectureError(f"different architectures: A is {sa.model_type}, B is {sb.model_type}",
                                hint="a gauge relates two checkpoints of one architecture (same model_type)")
    da, db = d_model(model_a), d_model(model_b)
    if da != db:
        raise DataError(f"width mismatch: A has d_model={da}, B has d_model={db}",
                        hint="a signed permutation needs residual streams of the same width")


def collect_moments(model_a: torch.nn.Module, model_b: torch.nn.Module, batches: Iterable[Any],
                    sites: Sequence[str] | None = None, progress: bool = True, shard_id: str = "0",
                    batch_dtype: torch.dtype = torch.float32, info: dict[str, Any] | None = None) -> MomentSet:
    """Run A and B on the same batches and accumulate per-site cross-moments.

    ``batches``: :class:`~gaugeport.estimate.data.Batch` es, or ``[b, t]`` id tensors / arrays (special ids
    from the configs are then masked out). ``batch_dtype``: precision of each batch's centred
    product (float64 accumulation either way; see :mod:`gaugeport.estimate.moments`).
    """
    check_pair(model_a, model_b)
    sites_a, sites_b = resolve_sites(model_a, sites), resolve_sites(model_b, sites)
    if sites_a != sites_b:
        raise DataError(f"A and B have different sites ({len(sites_a)} vs {len(sites_b)}): different depths",
                        hint="restrict to sites both models have with --site")
    specials = special_token_ids(model_a) | special_token_ids(model_b)
    vocab = min(v for v in (vocab_size(model_a), vocab_size(model_b), 2**62) if v)
    d = d_model(model_a)
    if model_device(model_a).type == "cpu":  # on an accelerator the moments live in its memory
        check_moment_memory(len(sites_a), d)
    moments = {s: CrossMoments(d, d, batch_dtype=batch_dtype, device=model_device(model_a))
               for s in sites_a}
    items = [Batch.of(b, specials) for b in batches]
    from gaugeport.core.checkpoint import check_sequence_length, learned_position_limit

    for model in (model_a, model_b):
        limit = learned_position_limit((n, tuple(p.shape)) for n, p in model.named_parameters())
        check_sequence_length(max((int(b.input_ids.shape[-1]) for b in items), default=0), limit)
    if not items or sum(b.n_tokens for b in items) == 0:
        raise DataError("no data: the batches hold no countable tokens",
                        hint="give more tokens (--tokens) or a data source that is not empty")
    bar = tqdm(total=sum(b.n_tokens for b in items), desc="collect", unit="tok", unit_scale=True,
               disable=not progress)
    with _Capture(model_a, sites_a) as cap_a, _Capture(model_b, sites_b) as cap_b:
        for batch in items:
            _check_vocab(batch, vocab)
            # B's rows are absorbed as B reaches each site (with A's, then dropped): one site of B alive
            cap_b.run(model_b, batch, _absorber(moments, cap_a.run(model_a, batch)))
            bar.update(batch.n_tokens)
    bar.close()
    meta = {"model_type": model_spec(model_a).model_type, "d_model": d, "norm": model_spec(model_a).norm,
            "batch_dtype": str(batch_dtype).removeprefix("torch."), **(info or {})}
    return MomentSet(moments, model_fingerprint(model_a), model_fingerprint(model_b), [str(shard_id)], meta)


def _absorber(moments: dict[str, CrossMoments], acts_a: dict[str, torch.Tensor]) -> Callable[[str, torch.Tensor], None]:
    def update(s: str, rows_b: torch.Tensor) -> None:
        try:
            moments[s].update(acts_a.pop(s), rows_b)
        except NonFiniteError as exc:
            raise DataError(f"model {exc.which.upper()} produced NaN or infinite activations at site {s}",
                            hint="a weight is NaN/inf or the model overflows in this dtype; "
                            "check the checkpoint") from exc
    return update


def _check_vocab(batch: Batch, vocab: int) -> None:
    top = int(batch.input_ids.max()) if batch.input_ids.numel() else 0
    if top >= vocab or int(batch.input_ids.min()) < 0:
        raise DataError(f"token id {top} is out of range for a vocabulary of {vocab}",
                        hint="the data was tokenized for another model; re-tokenize it")
