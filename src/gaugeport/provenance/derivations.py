"""Shape-changing derivations of a Llama-style model, for the lineage tests and the provenance suite
(a healing run after pruning trains, so it lives with the training runs: ``study.provenance_runs.healed``).

Each takes a ``LlamaForCausalLM`` (or a subclass with the same tensor names) and returns a new
model; the input is never modified. These are the published recipes in miniature:

* :func:`drop_blocks`: depth pruning (Minitron's depth axis, Sheared-LLaMA): whole blocks removed;
* :func:`prune_mlp`: width pruning of the MLP units by importance (Minitron: activation-based; here
  the weight product ``|up_i| |down_i|`` unless ``importance`` is given);
* :func:`prune_residual`: width pruning of the residual stream (Minitron prunes the embedding
  channels too): every residual axis keeps the same coordinates, head_dim is kept;
* :func:`extend_vocab`: tokens appended (Chinese-LLaMA): new rows at the mean of the old ones plus noise;
* :func:`upcycle_to_mixtral`: sparse upcycling (Mixtral from Mistral): every expert a copy of the
  dense MLP, a fresh router; ``noise`` perturbs each expert independently;
* :func:`upcycle_to_qwen2_moe`: upcycling into a mixture with a shared expert (Qwen1.5-MoE from
  Qwen-1.8B, in miniature): the routed experts and the shared expert all copies of the dense MLP;
* :func:`upcycle_to_glm4_moe`: the same into DeepSeek-V3-style ``shared_experts`` (GLM-4.5's MoE);
* :func:`permute_experts`: the experts of a mixture re-ordered with their router rows (a symmetry);
* :func:`prune_heads`: attention heads removed by whole key/value groups (Minitron's head axis, GQA kept);
* :func:`prune_head_dim`: pruning inside the heads (head_dim shrunk by whole RoPE dimension pairs);
* :func:`wrap_in_llava`, :func:`wrap_in_qwen2_vl`: the model put inside a multimodal wrapper (fresh vision
  tower and projector), as LLaVA and Qwen2-VL start from their language model.

With no noise, the three upcycles and :func:`extend_vocab`
preserve the function (on the old vocabulary), as do :func:`permute_experts` and the wrappers (on
text); the tests compare logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import transformers


def _clone_with(model: torch.nn.Module, config_overrides: dict, state: dict[str, torch.Tensor],
                model_type: str | None = None) -> torch.nn.Module:
    cfg = model.config.to_dict()
    cfg.update(config_overrides)
    mt = model_type or cfg["model_type"]
    for k in ("model_type", "transformers_version", "architectures", "_name_or_path"):
        cfg.pop(k, None)
    config = transformers.AutoConfig.for_model(mt, **cfg)
    cls = transformers.AutoModelForCausalLM
    new = cls.from_config(config, dtype=torch.float32)
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [m for m in missing if not m.endswith("rotary_emb.inv_freq")]
    if missing or unexpected:
        raise ValueError(f"derived state does not fit: missing {missing[:4]}, unexpected {unexpected[:4]}")
    new.eval()
    return new


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _n_layers(model: torch.nn.Module) -> int:
    return int(model.config.num_hidden_layers)


@torch.no_grad()
def drop_blocks(model: torch.nn.Module, drop: Sequence[int]) -> torch.nn.Module:
    """Remove the blocks ``drop``; the others keep their order (renumbered)."""
    keep = [i for i in range(_n_layers(model)) if i not in set(drop)]
    if not keep:
        raise ValueError("cannot drop every block")
    state = {}
    for k, v in _state(model).items():
        parts = k.split(".")
        if len(parts) > 2 and parts[1] == "layers":
            old = int(parts[2])
            if old not in keep:
                continue
            parts[2] = str(keep.index(old))
            k = ".".join(parts)
        state[k] = v
    return _clone_with(model, {"num_hidden_layers": len(keep)}, state)


@torch.no_grad()
def prune_mlp(model: torch.nn.Module, keep: int, importance: Sequence[torch.Tensor] | None = None) -> torch.nn.Module:
    """Keep the ``keep`` most important MLP units of every block (their original order)."""
    state = _state(model)
    for layer in range(_n_layers(model)):
        p = f"model.layers.{layer}.mlp."
        up, gate, down = state[p + "up_proj.weight"], state[p + "gate_proj.weight"], state[p + "down_proj.weight"]
        score = importance[layer] if importance is not None else up.norm(dim=1) * down.norm(dim=0) * gate.norm(dim=1)
        idx = torch.sort(torch.topk(score, keep).indices).values
        state[p + "up_proj.weight"], state[p + "gate_proj.weight"] = up[idx], gate[idx]
        state[p + "down_proj.weight"] = down[:, idx]
    return _clone_with(model, {"intermediate_size": keep}, state)


@torch.no_grad()
def prune_residual(model: torch.nn.Module, keep: int) -> torch.nn.Module:
    """Keep ``keep`` residual coordinates (largest token-embedding column norms), on every residual axis."""
    from gaugeport.core.archspec import get_spec

    spec = get_spec(model.config.model_type)
    state = _state(model)
    emb = state["model.embed_tokens.weight"]
    idx = torch.sort(torch.topk(emb.norm(dim=0), keep).indices).values
    head_dim = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    out = {}
    for k, v in state.items():
        rule = spec.classify(k)
        for ax, mode in zip(rule.axes, rule.modes, strict=True):
            if mode != "none":
                v = v.index_select(ax, idx)
        out[k] = v
    return _clone_with(model, {"hidden_size": keep, "head_dim": head_dim}, out)


@torch.no_grad()
def extend_vocab(model: torch.nn.Module, n_new: int, seed: int = 0) -> torch.nn.Module:
    """Append ``n_new`` tokens: rows at the old rows' mean plus small noise (embedding and untied head)."""
    g = torch.Generator().manual_seed(seed)
    state = _state(model)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        if k in state:
            w = state[k]
            new = w.mean(0, keepdim=True) + 0.02 * w.std() * torch.randn(n_new, w.shape[1], generator=g)
            state[k] = torch.cat([w, new])
    return _clone_with(model, {"vocab_size": int(model.config.vocab_size) + n_new}, state)


@torch.no_grad()
def upcycle_to_mixtral(model: torch.nn.Module, n_experts: int = 4, top_k: int = 2, noise: float = 0.0,
                       seed: int = 0) -> torch.nn.Module:
    """A Mixtral whose experts all start as the dense MLP (plus independent relative ``noise``); fresh router."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in _state(model).items():
        if ".mlp." not in k:
            state[k] = v
            continue
        layer = k.split(".")[2]
        proj = k.split(".")[-2]
        for e in range(n_experts):
            w = v + noise * v.std() * torch.randn(v.shape, generator=g) if noise else v.clone()
            state[f"model.layers.{layer}.mlp.experts.{e}.{proj}"] = w
    for layer in range(_n_layers(model)):
        d = int(model.config.hidden_size)
        state[f"model.layers.{layer}.mlp.gate.weight"] = 0.02 * torch.randn(n_experts, d, generator=g)
    fused = _fuse_experts(state, _n_layers(model), n_experts)
    return _clone_with(model, {"num_local_experts": n_experts, "num_experts_per_tok": top_k}, fused,
                       model_type="mixtral")


def _fuse_experts(state: dict[str, torch.Tensor], n_layers: int, n_experts: int,
                  dense: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
    """transformers' in-memory Mixtral keeps each block's experts fused: ``gate_up_proj [E, 2 ff, d]``
    (gate rows first) and ``down_proj [E, d, ff]`` (the blocks in ``dense`` have no experts)."""
    out = {k: v for k, v in state.items() if ".mlp.experts." not in k}
    for layer in sorted(set(range(n_layers)) - dense):
        p = f"model.layers.{layer}.mlp.experts."
        out[p + "gate_up_proj"] = torch.stack([torch.cat([state[f"{p}{e}.gate_proj"], state[f"{p}{e}.up_proj"]])
                                               for e in range(n_experts)])
        out[p + "down_proj"] = torch.stack([state[f"{p}{e}.down_proj"] for e in range(n_experts)])
    return out


def _upcycled_state(model: torch.nn.Module, n_experts: int, shared: str, shared_scale: float, noise: float,
                    seed: int, dense: frozenset[int] = frozenset()) -> tuple[dict[str, torch.Tensor], torch.Generator]:
    """Every routed expert (``down_proj`` halved) and the shared expert ``mlp.{shared}`` (``down_proj`` times
    ``shared_scale``) copies of the dense MLP plus independent relative ``noise``; a fresh router; experts fused.
    The blocks in ``dense`` keep their MLP as it is (no experts, no router)."""
    g = torch.Generator().manual_seed(seed)
    d = int(model.config.hidden_size)

    def noisy(v: torch.Tensor) -> torch.Tensor:
        return v + noise * v.std() * torch.randn(v.shape, generator=g) if noise else v.clone()

    state = {}
    for k, v in _state(model).items():
        if ".mlp." not in k or int(k.split(".")[2]) in dense:
            state[k] = v
            continue
        layer, proj = k.split(".")[2], k.split(".")[-2]
        half = proj == "down_proj"
        for e in range(n_experts):
            state[f"model.layers.{layer}.mlp.experts.{e}.{proj}"] = noisy(v) * (0.5 if half else 1.0)
        state[f"model.layers.{layer}.mlp.{shared}.{proj}.weight"] = noisy(v) * (shared_scale if half else 1.0)
    for layer in sorted(set(range(_n_layers(model))) - dense):
        state[f"model.layers.{layer}.mlp.gate.weight"] = 0.02 * torch.randn(n_experts, d, generator=g)
    return _fuse_experts(state, _n_layers(model), n_experts, dense), g


def _dense_blocks(model: torch.nn.Module, dense_blocks: Sequence[int]) -> frozenset[int]:
    out = frozenset(int(x) for x in dense_blocks)
    if any(not 0 <= x < _n_layers(model) for x in out):
        raise ValueError(f"dense_blocks must name blocks in 0..{_n_layers(model) - 1}, got {sorted(out)}")
    return out


@torch.no_grad()
def upcycle_to_qwen2_moe(model: torch.nn.Module, n_experts: int = 4, top_k: int = 2, noise: float = 0.0,
                         seed: int = 0, dense_blocks: Sequence[int] = ()) -> torch.nn.Module:
    """A Qwen2-MoE whose routed experts and shared expert all start as the dense MLP (plus independent relative
    ``noise``); fresh router. Function kept: the shared expert's gate is zero (``sigmoid(0) = 1/2``), the routed
    weights are renormalised over the top-k (``norm_topk_prob``) and every routed expert's ``down_proj`` is halved,
    so a block adds ``MLP(x) / 2 + MLP(x) / 2``. The blocks in ``dense_blocks`` keep their dense MLP
    (``mlp_only_layers``, as Qwen2-MoE's config allows)."""
    dense = _dense_blocks(model, dense_blocks)
    state, _ = _upcycled_state(model, n_experts, "shared_expert", 1.0, noise, seed, dense)
    for layer in sorted(set(range(_n_layers(model))) - dense):
        state[f"model.layers.{layer}.mlp.shared_expert_gate.weight"] = torch.zeros(1, int(model.config.hidden_size))
    ff = int(model.config.intermediate_size)
    return _clone_with(model, {"num_experts": n_experts, "num_experts_per_tok": top_k, "moe_intermediate_size": ff,
                               "shared_expert_intermediate_size": ff, "norm_topk_prob": True, "qkv_bias": False,
                               "decoder_sparse_step": 1, "mlp_only_layers": sorted(dense)}, state,
                       model_type="qwen2_moe")


@torch.no_grad()
def upcycle_to_glm4_moe(model: torch.nn.Module, n_experts: int = 4, top_k: int = 2, noise: float = 0.0,
                        seed: int = 0, first_dense: int = 0) -> torch.nn.Module:
    """A GLM-4.5-style mixture (DeepSeek-V3's MoE: ``shared_experts`` always on, a sigmoid router with a
    correction bias) whose routed and shared experts all start as the dense MLP. Function kept: top-k weights
    renormalised (``norm_topk_prob``, ``routed_scaling_factor`` 1), routed and shared ``down_proj`` halved;
    RoPE over the whole head (``partial_rotary_factor`` 1), no q/k norm. The first ``first_dense`` blocks keep
    their dense MLP (``first_k_dense_replace``, as GLM-4.5 and DeepSeek-V3 do); every other block is a mixture."""
    dense = _dense_blocks(model, range(first_dense))
    state, _ = _upcycled_state(model, n_experts, "shared_experts", 0.5, noise, seed, dense)
    for layer in sorted(set(range(_n_layers(model))) - dense):
        state[f"model.layers.{layer}.mlp.gate.e_score_correction_bias"] = torch.zeros(n_experts)
    rope = dict(getattr(model.config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})
    rope["partial_rotary_factor"] = 1.0
    ff = int(model.config.intermediate_size)
    return _clone_with(model, {"n_routed_experts": n_experts, "num_experts_per_tok": top_k, "n_shared_experts": 1,
                               "moe_intermediate_size": ff, "norm_topk_prob": True, "routed_scaling_factor": 1.0,
                               "n_group": 1, "topk_group": 1, "first_k_dense_replace": len(dense), "use_qk_norm": False,
                               "attention_bias": False, "rope_parameters": rope}, state, model_type="glm4_moe")


@torch.no_grad()
def permute_experts(model: torch.nn.Module, perm: Sequence[int]) -> torch.nn.Module:
    """The experts of every block re-ordered, new expert ``e`` = old expert ``perm[e]``, with the router's rows
    (a symmetry of a mixture: the same experts fire with the same weights)."""
    idx = torch.as_tensor(list(perm))
    state = _state(model)
    for k, v in state.items():
        if k.endswith((".mlp.experts.gate_up_proj", ".mlp.experts.down_proj", ".mlp.gate.weight")):
            if v.shape[0] != len(idx):
                raise ValueError(f"{k} has {v.shape[0]} experts, the permutation {len(idx)}")
            state[k] = v[idx]
    return _clone_with(model, {}, state)


@torch.no_grad()
def prune_heads(model: torch.nn.Module, keep_groups: Sequence[int]) -> torch.nn.Module:
    """Keep the key/value groups ``keep_groups`` (sorted) and the query heads they serve; head_dim is kept."""
    c = model.config
    n_heads, n_kv = int(c.num_attention_heads), int(c.num_key_value_heads)
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    groups = sorted(set(keep_groups))
    if not groups or groups[0] < 0 or groups[-1] >= n_kv:
        raise ValueError(f"keep_groups must name key/value groups in 0..{n_kv - 1}, got {list(keep_groups)}")
    g = n_heads // n_kv
    q_rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for k in groups for h in range(k * g, (k + 1) * g)])
    kv_rows = torch.cat([torch.arange(k * hd, (k + 1) * hd) for k in groups])
    state = _keep_attention_rows(model, q_rows, kv_rows)
    return _clone_with(model, {"num_attention_heads": len(groups) * g, "num_key_value_heads": len(groups),
                               "head_dim": hd}, state)


@torch.no_grad()
def wrap_in_llava(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A ``LlavaForConditionalGeneration`` whose language model is ``model`` (a tiny CLIP vision tower and a
    projector drawn fresh, as LLaVA starts): on text alone it computes what ``model`` computes."""
    text = model.config.to_dict()
    for k in ("transformers_version", "architectures", "_name_or_path"):
        text.pop(k, None)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=2, image_size=16, patch_size=8)
    config = transformers.LlavaConfig(text_config=text, vision_config=vision.to_dict(),
                                      image_token_index=int(model.config.vocab_size) - 1,
                                      tie_word_embeddings=bool(model.config.tie_word_embeddings))
    torch.manual_seed(seed)
    return _wrapped(transformers.LlavaForConditionalGeneration(config), model)


def _wrapped(wrapper: torch.nn.Module, model: torch.nn.Module) -> torch.nn.Module:
    """``wrapper`` with ``model``'s weights in its ``model.language_model.*`` and ``lm_head.*`` (transformers'
    in-memory layout of LLaVA and Qwen2-VL); language-model tensors ``model`` lacks (Qwen2's q/k/v biases)
    are zeroed, which is what they are in a model without them."""
    wrapper = wrapper.to(torch.float32)
    state = {k if k.startswith("lm_head.") else "model.language_model." + k[len("model."):]: v
             for k, v in _state(model).items()}
    missing, unexpected = wrapper.load_state_dict(state, strict=False)
    params = dict(wrapper.named_parameters())
    lm_missing = [m for m in missing if ("language_model" in m or m.startswith("lm_head")) and m in params]
    if unexpected or any(not m.endswith("_proj.bias") for m in lm_missing):
        raise ValueError(f"language model does not fit the wrapper: missing {lm_missing[:4]}, "
                         f"unexpected {unexpected[:4]}")
    with torch.no_grad():
        for m in lm_missing:
            params[m].zero_()
    wrapper.eval()
    return wrapper


@torch.no_grad()
def wrap_in_qwen2_vl(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """A ``Qwen2VLForConditionalGeneration`` whose language model is ``model`` (a one-block vision tower drawn
    fresh). On text alone its multimodal RoPE gives every section the same positions, which is ``model``'s RoPE
    (same theta; the sections split head_dim / 2), so it computes what ``model`` computes."""
    c = model.config
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads)
    half = hd // 2
    theta = float((getattr(c, "rope_parameters", None) or {}).get("rope_theta", getattr(c, "rope_theta", 10000.0)))
    text = {"vocab_size": int(c.vocab_size), "hidden_size": int(c.hidden_size),
            "intermediate_size": int(c.intermediate_size), "num_hidden_layers": _n_layers(model),
            "num_attention_heads": int(c.num_attention_heads), "num_key_value_heads": int(c.num_key_value_heads),
            "rms_norm_eps": float(c.rms_norm_eps), "max_position_embeddings": int(c.max_position_embeddings),
            "hidden_act": c.hidden_act, "tie_word_embeddings": bool(c.tie_word_embeddings),
            "bos_token_id": None, "eos_token_id": None, "pad_token_id": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": theta, "type": "mrope",
                                "mrope_section": [half // 4, half // 4, half - 2 * (half // 4)]}}
    vision = {"depth": 1, "embed_dim": 16, "hidden_size": int(c.hidden_size), "num_heads": 2, "mlp_ratio": 2,
              "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
    config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision,
                                        image_token_id=int(c.vocab_size) - 1, video_token_id=int(c.vocab_size) - 2,
                                        vision_start_token_id=int(c.vocab_size) - 3,
                                        vision_end_token_id=int(c.vocab_size) - 4,
                                        tie_word_embeddings=bool(c.tie_word_embeddings))
    torch.manual_seed(seed)
    return _wrapped(transformers.Qwen2VLForConditionalGeneration(config), model)


@torch.no_grad()
def prune_head_dim(model: torch.nn.Module, keep_pairs: int) -> torch.nn.Module:
    """Prune inside every head: keep the first ``keep_pairs`` RoPE dimension pairs ``(i, i + head_dim / 2)`` of
    each query/key head and the same dimensions of each value head (head_dim becomes ``2 * keep_pairs``).
    Not function-preserving: RoPE's frequencies follow head_dim."""
    c = model.config
    n_heads, n_kv = int(c.num_attention_heads), int(c.num_key_value_heads)
    hd = int(getattr(c, "head_dim", None) or c.hidden_size // n_heads)
    if not 0 < keep_pairs < hd // 2:
        raise ValueError(f"keep_pairs must lie in 1..{hd // 2 - 1}, got {keep_pairs}")
    dims = torch.cat([torch.arange(keep_pairs), hd // 2 + torch.arange(keep_pairs)])

    def rows(n: int) -> torch.Tensor:
        return torch.cat([h * hd + dims for h in range(n)])

    state = _keep_attention_rows(model, rows(n_heads), rows(n_kv))
    return _clone_with(model, {"head_dim": 2 * keep_pairs}, state)


def _keep_attention_rows(model: torch.nn.Module, q_rows: torch.Tensor,
                         kv_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state with only ``q_rows`` of every layer's queries (and output columns) and ``kv_rows`` of its
    keys and values (weights and biases where present)."""
    state = _state(model)
    for layer in range(_n_layers(model)):
        p = f"model.layers.{layer}.self_attn."
        for proj, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
            for kind in ("weight", "bias"):
                if p + f"{proj}.{kind}" in state:
                    state[p + f"{proj}.{kind}"] = state[p + f"{proj}.{kind}"][rows]
        state[p + "o_proj.weight"] = state[p + "o_proj.weight"][:, q_rows]
    return state
