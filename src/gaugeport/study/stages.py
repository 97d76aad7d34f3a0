"""The study's trained artifacts, each built once per config hash and cached on disk.

* ``base``: the RMSNorm (Llama-style) base model;
* ``control``: the LayerNorm (GPT-2-style) control;
* ``run-1`` / ``run-2``: fine-tuning runs from the base (different seeds and data order). Every
  checkpoint is saved **in its own hidden random gauge**; the gauges are kept apart under
  ``truth/`` and only used to score estimates. Run 1 also keeps its AdamW state (native
  coordinates) at ``adamw_step``;
* ``sae``: a standard SAE on the base's residual stream, in SAELens' format;
* ``base-2``: a second RMSNorm base from another initialisation and data order (merges of independent runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gaugeport.core.gauge import SignedPermutation, load_gauge, save_gauge
from gaugeport.study.cache import StageCache
from gaugeport.study.config import StudyConfig
from gaugeport.study.corpus import builtin_token_ids
from gaugeport.study.evaluate import site_activations
from gaugeport.study.models import build_model, in_gauge, load_model, make_optimizer, save_model, train_lm
from gaugeport.study.probes import site_name
from gaugeport.study.sae import save_saelens, train_sae

RUN_NAMES = ("run-1", "run-2")


def derived_seed(*parts: int) -> int:
    """A seed for one purpose (a hidden gauge, a data order) derived from the study seed."""
    return int(np.random.SeedSequence([abs(int(p)) for p in parts]).generate_state(1)[0])


@dataclass(frozen=True)
class Run:
    """One fine-tuning run on disk: checkpoints in hidden gauges, and those gauges (the truth)."""

    path: Path

    def checkpoint(self, step: int) -> Path:
        return self.path / f"step-{step:05d}"

    def truth(self, step: int) -> SignedPermutation:
        """The hidden gauge of ``step`` (native coordinates -> the coordinates it was saved in)."""
        return load_gauge(self.path / "truth" / f"step-{step:05d}.safetensors")

    @property
    def adamw(self) -> Path:
        return self.path / "adamw"


@dataclass(frozen=True)
class Artifacts:
    base: Path
    control: Path
    runs: tuple[Run, Run]
    sae: Path
    losses: dict[str, list[float]]
    base_2: Path | None = None  # a second RMSNorm base trained from another seed (merges of independent runs)


def build_all(cfg: StudyConfig, cache: StageCache, progress: bool = True) -> Artifacts:
    base = cache.stage("base", cfg.key("seed", "model", "base"), lambda p: _train(p, cfg, "llama", progress))
    control = cache.stage("control", cfg.key("seed", "model", "control"),
                          lambda p: _train(p, cfg, "gpt2", progress))
    runs = []
    for r, name in enumerate(RUN_NAMES):
        key = cfg.key("seed", "model", "base", "finetune", "checkpoint_steps", "adamw_step") + f"-{r}"
        runs.append(Run(cache.stage(name, key, lambda p, r=r: _finetune(p, cfg, base / "model", r, progress))))
    sae = cache.stage("sae", cfg.key("seed", "model", "base", "site_layer", "sae_expansion", "sae_steps", "sae_l1"),
                      lambda p: _sae(p, cfg, base / "model", progress))
    base_2 = cache.stage("base-2", cfg.key("seed", "model", "base") + "-independent",
                         lambda p: _train(p, cfg, "llama", progress, independent=True))
    dirs = {"base": base, "control": control, **{n: r.path for n, r in zip(RUN_NAMES, runs, strict=True)},
            "base-2": base_2}
    losses = {name: json.loads((path / "losses.json").read_text()) for name, path in dirs.items()}
    return Artifacts(base / "model", control / "model", (runs[0], runs[1]), sae / "sae", losses, base_2 / "model")


def _train(out: Path, cfg: StudyConfig, arch: str, progress: bool, independent: bool = False) -> None:
    """``independent``: another initialisation and data order (the second base of the independent-runs merge)."""
    torch.manual_seed(cfg.seed + (7919 if independent else 0))
    init = 3 if independent else 1 if arch == "llama" else 2
    model = build_model(arch, cfg.model, derived_seed(cfg.seed, init))  # type: ignore[arg-type]
    tc = cfg.base if arch == "llama" else cfg.control
    desc = "base 2 (independent seed)" if independent else "base (RMSNorm)" if arch == "llama" else \
        "control (LayerNorm)"
    losses = train_lm(model, tc, derived_seed(cfg.seed, 11 if independent else 10), cfg.model.seq_len,
                      desc=desc, progress=progress)
    save_model(model, out / "model")
    (out / "losses.json").write_text(json.dumps(losses))


def _finetune(out: Path, cfg: StudyConfig, base: Path, run: int, progress: bool) -> None:
    model = load_model(base)
    torch.manual_seed(derived_seed(cfg.seed, 20, run))
    optimizer, scheduler = make_optimizer(model, cfg.finetune)
    (out / "truth").mkdir()

    def on_checkpoint(step: int, m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
        hidden = SignedPermutation.random(m.config.hidden_size, seed=derived_seed(cfg.seed, 30, run, step))
        save_model(in_gauge(m, hidden), out / f"step-{step:05d}")
        save_gauge(hidden, out / "truth" / f"step-{step:05d}.safetensors", provenance={"role": "hidden truth"})
        if run == 0 and step == cfg.adamw_step:  # a Trainer-style checkpoint-N/ in native coordinates
            save_model(m, out / "adamw")
            torch.save(opt.state_dict(), out / "adamw" / "optimizer.pt")
            torch.save(scheduler.state_dict(), out / "adamw" / "scheduler.pt")

    losses = train_lm(model, cfg.finetune, derived_seed(cfg.seed, 40, run), cfg.model.seq_len,
                      checkpoint_steps=cfg.checkpoint_steps, on_checkpoint=on_checkpoint,
                      desc=f"fine-tune {RUN_NAMES[run]}", progress=progress, optimizer=optimizer, scheduler=scheduler)
    (out / "losses.json").write_text(json.dumps(losses))


def sae_training_ids(cfg: StudyConfig) -> np.ndarray:
    n_seq = max(64, 16_384 // cfg.model.seq_len)
    return builtin_token_ids(n_seq, cfg.model.seq_len, derived_seed(cfg.seed, 50))


def _sae(out: Path, cfg: StudyConfig, base: Path, progress: bool) -> None:
    model = load_model(base)
    acts = torch.cat([site_activations(model, site_name(cfg.site_layer), chunk)
                      for chunk in torch.from_numpy(sae_training_ids(cfg)).split(64)])
    weights = train_sae(acts, cfg.sae_expansion * cfg.model.d_model, cfg.sae_steps, cfg.sae_l1,
                        derived_seed(cfg.seed, 51), progress=progress)
    save_saelens(weights, out / "sae", hook_name=f"blocks.{cfg.site_layer}.hook_resid_post", model_name="study-base")
