"""``reproduce --preset real``: the study's stages on a real pretrained LM (SmolLM2-135M-Instruct).

What differs from the toy presets is only where models and text come from and how the trajectory is
kept small:

* the base is *pretrained* (obtained and converted by :mod:`gaugeport.models.real`, cached); the
  LayerNorm control is the pretrained all-MiniLM-L6-v2 BERT; text is real English (:mod:`.text`);
* the two fine-tuning runs of each regime train **in lockstep**. At every checkpoint step each run is
  rewritten into a fresh hidden random gauge, its activations on the probe text are collected once,
  and every gauge the measurement needs is estimated right there: the local hop from the run's
  previous checkpoint, the endpoint match between the two runs, and the two matches via the base.
  Only the gauges' accuracies and the losses are kept, never the checkpoints; the gentle regime
  also keeps its two final checkpoints (in their hidden gauges: the targets of transport and merge)
  and run-1's Trainer-style checkpoint at ``adamw_step``.

``stand_in=True`` replaces SmolLM2 / MiniLM / its tokenizer by tiny models built from configs and a
byte tokenizer: the same code path at test size (no download).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gaugeport.core.gauge import SignedPermutation, compose, save_gauge
from gaugeport.estimate.activations import _Capture, default_sites
from gaugeport.estimate.align import Alignment, align_from_moments
from gaugeport.estimate.data import Batch
from gaugeport.estimate.moments import CrossMoments, MomentSet
from gaugeport.study.cache import StageCache
from gaugeport.study.config import RealConfig, Regime, TrainConfig
from gaugeport.study.models import in_gauge, make_optimizer, save_model, train_step
from gaugeport.study.text import token_rows

Acts = dict[str, torch.Tensor]


# ------------------------------------------------------------------------------------- tokenizers
class ByteTokenizer:
    """The stand-in's tokenizer: UTF-8 bytes shifted past pad / bos / eos (vocabulary 259)."""

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 259

    def encode(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode()]

    def chat(self, request: str) -> list[int]:
        return self.encode(f"User: {request}\nAssistant:")


class HFTokenizer:
    """A Hugging Face tokenizer loaded from the converted checkpoint directory (offline)."""

    def __init__(self, path: Path) -> None:
        import transformers

        self.tok = transformers.AutoTokenizer.from_pretrained(str(path))
        self.vocab_size = len(self.tok)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def chat(self, request: str) -> list[int]:
        text = self.tok.apply_chat_template([{"role": "user", "content": request}], tokenize=False,
                                            add_generation_prompt=True)
        return self.encode(text)


# ------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Sources:
    """Where the pretrained models are, and how to read text for them."""

    lm: Path
    control: Path
    tokenizer: Any
    model_name: str
    control_name: str
    provenance: dict[str, Any]


def sources(rc: RealConfig, cache: StageCache, seed: int) -> Sources:
    """SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (cached by :mod:`gaugeport.models.real`), or stand-ins."""
    if rc.stand_in:
        path = cache.stage("stand-in", f"{seed}-v1", lambda p: _stand_in(p, seed))
        return Sources(path / "lm", path / "control", ByteTokenizer(), "stand-in (tiny Llama, random init)",
                       "stand-in (tiny BERT, random init)", {"stand_in": True})
    from gaugeport.models.real import MINILM, SMOLLM2, minilm_checkpoint, smollm2_checkpoint

    lm, control = smollm2_checkpoint(), minilm_checkpoint()
    prov = {m.name: {"package": f"{m.package}=={m.version}", "license": m.license, "source": m.source}
            for m in (SMOLLM2, MINILM)}
    return Sources(Path(lm), Path(control), HFTokenizer(Path(lm)), "SmolLM2-135M-Instruct", "all-MiniLM-L6-v2", prov)


def _stand_in(out: Path, seed: int) -> None:
    from gaugeport.models.tiny import tiny_model

    lm = tiny_model("llama", seed, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8, num_hidden_layers=3, vocab_size=ByteTokenizer.vocab_size,
                    max_position_embeddings=256, tie_word_embeddings=True)
    save_model(lm, out / "lm")
    save_model(tiny_model("bert", seed + 1), out / "control")


def load(path: Path, device: str = "cpu") -> torch.nn.Module:
    from gaugeport.study.models import load_model

    return load_model(path).to(device).eval()


# ------------------------------------------------------------------------------------- activations
def batches(ids: torch.Tensor, size: int) -> list[Batch]:
    """Probe batches; position 0 (the attention sink, with massive activations) is not counted."""
    out = []
    for chunk in ids.split(size):
        stats = torch.ones_like(chunk, dtype=torch.bool)
        stats[:, 0] = False
        out.append(Batch(chunk, torch.ones_like(chunk), stats))
    return out


@torch.no_grad()
def activations(model: torch.nn.Module, probe: Sequence[Batch], sites: Sequence[str] | None = None) -> Acts:
    """Counted-token activations ``[n, d]`` at every site (default: the matching sites)."""
    sites = list(sites) if sites is not None else default_sites(model)
    parts: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
    with _Capture(model, sites) as cap:
        for b in probe:
            for s, rows in cap.run(model, b).items():
                parts[s].append(rows.float())
    return {s: torch.cat(v) for s, v in parts.items()}


def moments(a: Acts, b: Acts, norm: str = "rms") -> MomentSet:
    sites = {}
    for s in a:
        cm = CrossMoments(a[s].shape[1], b[s].shape[1], batch_dtype=torch.float32, device=a[s].device)
        sites[s] = cm.update(a[s], b[s])
    return MomentSet(sites, "a", "b", ["0"], {"norm": norm})


def match(a: Acts, b: Acts, method: str = "signed") -> Alignment:
    """The gauge A -> B estimated from two activation sets on the same tokens."""
    return align_from_moments(moments(a, b), method)


def gauged_acts(model: torch.nn.Module, gauge: SignedPermutation, probe: Sequence[Batch]) -> Acts:
    """Activations of ``model`` rewritten into ``gauge`` (the rewritten copy is dropped after)."""
    return activations(in_gauge(model, gauge), probe)


# ------------------------------------------------------------------------------------- training
def lm_step(model: torch.nn.Module, opt: torch.optim.Optimizer, sched: Any, ids: torch.Tensor) -> float:
    """One training step, then back to eval mode (activations are read between steps)."""
    loss = train_step(model, opt, sched, ids)
    model.eval()
    return loss


def train_rows(tok: Any, rc: RealConfig, n_steps: int, seed: int) -> torch.Tensor:
    return token_rows(tok.encode, "train", n_steps * rc.train_batch, rc.train_seq_len, seed)


def derived(*parts: int) -> int:
    from gaugeport.study.stages import derived_seed

    return derived_seed(*parts)


def _regime_train_config(reg: Regime) -> TrainConfig:
    return TrainConfig(steps=reg.steps, batch_size=0, lr=reg.lr, warmup=reg.warmup)


def build_trajectory(out: Path, src: Sources, rc: RealConfig, reg: Regime, seed: int, progress: bool,
                     keep: bool) -> None:
    """Two fine-tuning runs of the base in lockstep, with every gauge the measurement needs estimated
    while training (see the module docstring). ``keep``: save the final checkpoints (hidden gauges),
    their truths, and run-1's Trainer checkpoint at ``rc.adamw_step``."""
    dev = rc.device
    base = load(src.lm, dev)
    probe = [b for b in batches(token_rows(src.tokenizer.encode, "probe", rc.traj_probe_rows, rc.seq_len,
                                           derived(seed, 200)).to(dev), rc.forward_batch)]
    base_acts = activations(base, probe)
    eval_ids = token_rows(src.tokenizer.encode, "eval", rc.eval_rows, rc.seq_len, derived(seed, 201)).to(dev)
    runs = [copy.deepcopy(base) for _ in range(2)]
    del base
    tc = _regime_train_config(reg)
    opts = [make_optimizer(m, tc) for m in runs]
    data = [train_rows(src.tokenizer, rc, reg.steps, derived(seed, 210, r)).to(dev).split(rc.train_batch)
            for r in range(2)]
    prev: list[Acts] = [base_acts, base_acts]
    chains: list[list[SignedPermutation]] = [[], []]  # base -> run-r@step, hop by hop
    hop_conf: list[list[float]] = [[], []]
    losses: list[list[float]] = [[], []]
    curve: list[dict[str, float]] = []
    ckpts = reg.checkpoint_steps
    bar = tqdm(range(1, reg.steps + 1), desc=f"fine-tune x2 ({reg.name})", unit="step", disable=not progress,
               leave=False)
    for step in bar:
        for r in range(2):
            losses[r].append(lm_step(runs[r], *opts[r], data[r][step - 1]))
        bar.set_postfix(loss=f"{losses[0][-1]:.2f}/{losses[1][-1]:.2f}")
        if keep and step == rc.adamw_step:  # a Trainer-style checkpoint-N/ in native coordinates
            save_model(runs[0], out / "adamw")
            torch.save(opts[0][0].state_dict(), out / "adamw" / "optimizer.pt")
            torch.save(opts[0][1].state_dict(), out / "adamw" / "scheduler.pt")
        if step not in ckpts:
            continue
        truths = [SignedPermutation.random(runs[0].config.hidden_size, seed=derived(seed, 220, r, step))
                  for r in range(2)]
        cur = [gauged_acts(runs[r], truths[r], probe) for r in range(2)]
        for r in range(2):
            hop = match(prev[r], cur[r])
            chains[r].append(hop.gauge)
            hop_conf[r].append(float(np.mean(hop.confidence)))
        truth = truths[1] @ truths[0].inverse()
        composed = compose(*chains[0]).inverse().then(compose(*chains[1]))
        endpoint = match(cur[0], cur[1]).gauge
        via = match(cur[0], base_acts).gauge.then(match(base_acts, cur[1]).gauge)
        curve.append({"step": step, "composed": composed.accuracy(truth)["full"],
                      "endpoint": endpoint.accuracy(truth)["full"], "via_base": via.accuracy(truth)["full"],
                      "weakest_hop_confidence": min(min(c) for c in hop_conf),
                      "loss_run_1": float(np.mean(losses[0][-reg.every:])),
                      "loss_run_2": float(np.mean(losses[1][-reg.every:]))})
        prev = cur
        if keep and step == reg.steps:
            for r in range(2):
                save_model(in_gauge(runs[r], truths[r]), out / f"run-{r + 1}")
                save_gauge(truths[r], out / f"run-{r + 1}-truth.safetensors", provenance={"role": "hidden truth"})
            save_gauge(composed, out / "run-1-to-run-2.safetensors", provenance={"role": "composed chain estimate"})
    bar.close()
    from gaugeport.study.evaluate import lm_loss

    record = {"regime": asdict(reg), "curve": curve, "losses": losses,
              "eval_loss": {f"run-{r + 1}": lm_loss(runs[r], eval_ids) for r in range(2)},
              "hop_confidence": hop_conf, "n_hops": 2 * len(ckpts)}
    (out / "trajectory.json").write_text(json.dumps(record))


def base_eval_loss(src: Sources, rc: RealConfig, seed: int) -> float:
    from gaugeport.study.evaluate import lm_loss

    ids = token_rows(src.tokenizer.encode, "eval", rc.eval_rows, rc.seq_len, derived(seed, 201)).to(rc.device)
    return lm_loss(load(src.lm, rc.device), ids)


# ------------------------------------------------------------------------------------- SAE
def build_sae(out: Path, src: Sources, rc: RealConfig, seed: int, progress: bool) -> None:
    from gaugeport.study.probes import site_name
    from gaugeport.study.sae import save_saelens, train_sae

    model = load(src.lm, rc.device)
    ids = token_rows(src.tokenizer.encode, "train", rc.sae_rows, rc.seq_len, derived(seed, 230)).to(rc.device)
    site = site_name(rc.sae_layer)
    acts = activations(model, batches(ids, rc.forward_batch), [site])[site]
    weights = train_sae(acts.cpu(), 4 * acts.shape[1], int(rc.extra.get("sae_steps", 1000)),
                        float(rc.extra.get("sae_l1", 3e-3)), derived(seed, 231), progress=progress)
    save_saelens(weights, out / "sae", hook_name=f"blocks.{rc.sae_layer}.hook_resid_post",
                 model_name="SmolLM2-135M-Instruct" if not rc.stand_in else "stand-in")


# ------------------------------------------------------------------------------------- all stages
@dataclass(frozen=True)
class RealArtifacts:
    src: Sources
    trajectories: dict[str, Path]  # regime name -> stage dir (the study's seed)
    sae: Path
    replicates: dict[str, dict[int, Path]] = field(default_factory=dict)  # regime -> {seed: stage dir}, all seeds

    @property
    def gentle(self) -> Path:
        return self.trajectories[list(self.trajectories)[-1]]


def build_real(rc: RealConfig, seed: int, cache: StageCache, progress: bool = True,
               timer: Callable[[str], Any] | None = None, only: set[str] | None = None) -> RealArtifacts:
    """Every stage (cached). ``only``: build just these stages (``trajectory-<regime>``, ``sae``), e.g.
    from separate processes sharing one cache; the returned artifacts then name unbuilt paths."""
    import hashlib

    def key(*parts: Any) -> str:
        blob = json.dumps({"v": 1, "seed": seed, "model": rc.stand_in, "parts": parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        if timer is None:
            return fn()
        with timer(name):
            return fn()

    src = timed("acquire-models", lambda: sources(rc, cache, seed))
    common = {k: v for k, v in rc.key_dict().items() if k in ("seq_len", "train_seq_len", "train_batch",
                                                              "traj_probe_rows", "eval_rows", "adamw_step")}

    def stage(name: str, k: str, build: Callable[[Path], None]) -> Path:
        if only is not None and name.removeprefix("real-") not in only:
            return cache.root / f"{name}-{k}"
        return timed(f"train-{name.removeprefix('real-')}", lambda: cache.stage(name, k, build))

    trajs, reps = {}, {}
    for reg in rc.regimes:
        keep = reg is rc.gentle
        reps[reg.name] = {}
        for s in range(seed, seed + reg.seeds):  # the study's seed first: the headline, and what is kept
            reg_key = {k: v for k, v in asdict(reg).items() if k != "seeds"}
            name = f"real-trajectory-{reg.name}" + (f"-seed{s}" if s != seed else "")
            stage_key = key(reg_key, common, keep) if s == seed else key(reg_key, common, False, s)
            reps[reg.name][s] = stage(name, stage_key,
                                      lambda p, reg=reg, s=s, keep=keep and s == seed:
                                      build_trajectory(p, src, rc, reg, s, progress, keep))
        trajs[reg.name] = reps[reg.name][seed]
    sae = stage("real-sae", key(rc.sae_layer, rc.sae_rows, rc.seq_len, rc.extra.get("sae_steps"),
                                rc.extra.get("sae_l1")), lambda p: build_sae(p, src, rc, seed, progress))
    return RealArtifacts(src, trajs, sae / "sae", reps)
