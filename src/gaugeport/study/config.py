"""Study configurations (micro / quick / full) and the hash that keys the cache.

Sizes were calibrated on a 2-core CPU: fine-tuning is *aggressive* (a large
learning rate after a short warm-up) so that the two runs drift far apart while consecutive
checkpoints, saved log-spaced early and densely later, stay close.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from gaugeport.core.errors import GaugeportError

CACHE_VERSION = "2"  # bump when a change to the training code makes cached models stale
Preset = Literal["micro", "quick", "full", "real", "real-micro"]


@dataclass(frozen=True)
class ModelConfig:
    d_model: int
    n_layers: int = 2
    n_heads: int = 4
    d_ff: int = 256
    seq_len: int = 64


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup: int
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Regime:
    """One pair of fine-tuning runs: ``steps`` AdamW steps at ``lr`` after ``warmup``, a local gauge
    estimated every ``every`` steps; ``seeds`` pairs in all (the study's seed, then seed + 1, ...: other
    data orders and hidden gauges), the first one the headline."""

    name: str
    steps: int
    lr: float
    warmup: int
    every: int
    seeds: int = 1

    @property
    def checkpoint_steps(self) -> tuple[int, ...]:
        return tuple(sorted({*range(self.every, self.steps + 1, self.every), self.steps}))


@dataclass(frozen=True)
class RealConfig:
    stand_in: bool = False  # tiny models from configs + byte tokenizer instead of SmolLM2 (tests)
    seq_len: int = 128  # probe / eval / SAE rows
    train_seq_len: int = 64
    train_batch: int = 2
    forward_batch: int = 8  # rows per forward pass when only activations are needed
    probe_rows: int = 8  # matching, transfer and audit gauges: 8 x 128 = 1,024 tokens
    traj_probe_rows: int = 4  # every gauge of the trajectory: 512 tokens
    eval_rows: int = 4
    regimes: tuple[Regime, ...] = (Regime("aggressive", 60, 3e-3, 10, 2, seeds=3),
                                   Regime("gentle", 4, 2e-5, 1, 2, seeds=5))
    adamw_step: int = 2  # gentle run-1 keeps its Trainer checkpoint here
    adamw_resume_steps: int = 5
    sae_layer: int = 15
    sae_rows: int = 16
    audit_layer: int = 15  # residual site of the audit's claims
    steering_layers: tuple[int, ...] = tuple(range(1, 29, 2))  # swept for the steering / refusal directions
    gauge_draws: int = 5  # hidden gauges per cheap row (function, matching)
    ceiling_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    audit_random_gauges: int = 8
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gentle(self) -> Regime:
        return self.regimes[-1]

    def key_dict(self) -> dict[str, Any]:
        """The fields trained stages depend on (``device`` only changes where they run)."""
        d = asdict(self)
        d.pop("device")
        return d


@dataclass(frozen=True)
class StudyConfig:
    preset: Preset
    seed: int
    model: ModelConfig
    base: TrainConfig  # the RMSNorm (Llama-style) base
    control: TrainConfig  # the LayerNorm (GPT-2-style) control
    finetune: TrainConfig  # each of the two fine-tuning runs
    checkpoint_steps: tuple[int, ...]  # where each run saves a checkpoint (in its own hidden gauge)
    probe_seqs: int = 24  # matching data: probe_seqs x probe_len tokens of the built-in corpus
    probe_len: int = 32
    ceiling_fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    curve_points: int = 16  # steps at which endpoint / via-base matching are compared with the chain
    site_layer: int = 1  # residual site (output of this block) of the SAE, steering and audit
    transfer_step: int = 4  # early run-1 checkpoint (1% of fine-tuning) that base artifacts are carried to
    merge_step: int = 50  # where the two runs are merged
    adamw_step: int = 10  # where run 1's optimizer state is saved and training resumed
    adamw_resume_steps: int = 5  # headline; the divergence curve goes on to 4x as many steps
    sae_expansion: int = 4
    sae_steps: int = 1000
    sae_l1: float = 3e-3
    steering_docs: int = 96  # documents per class for the steering directions
    steering_prompts: int = 64
    audit_random_gauges: int = 8
    gauge_draws: int = 5  # hidden gauges per cheap row (function, matching)
    extra: dict[str, Any] = field(default_factory=dict)
    real: RealConfig | None = None  # the real-model presets (pretrained LM, real text)

    def __post_init__(self) -> None:
        for what in ("transfer_step", "merge_step", "adamw_step"):
            if getattr(self, what) not in self.checkpoint_steps:
                raise GaugeportError(f"study config: {what}={getattr(self, what)} is not a checkpoint step",
                                     hint=f"checkpoint steps: {list(self.checkpoint_steps)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self, *parts: str) -> str:
        """Cache key of one stage: a hash of the fields that stage depends on."""
        blob = {"version": CACHE_VERSION, **{p: _field(self, p) for p in parts}}
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _field(cfg: StudyConfig, name: str) -> Any:
    value = getattr(cfg, name)
    return asdict(value) if hasattr(value, "__dataclass_fields__") else value


def _log_then_dense(last: int, every: int) -> tuple[int, ...]:
    """1, 2, 3, 4, 7, 10, ... (x1.5) up to ``every``, then every ``every`` steps up to ``last``."""
    steps, s = [], 1.0
    while s < 0.8 * every:
        steps.append(int(round(s)))
        s = max(s * 1.5, s + 1)
    steps += list(range(every, last + 1, every))
    return tuple(sorted(set(steps) | {last}))


def preset(name: Preset, seed: int = 0) -> StudyConfig:
    """The three sizes: ``micro`` (seconds, tests), ``quick`` (make demo, minutes), ``full``."""
    if name == "micro":
        return StudyConfig(
            preset="micro", seed=seed, model=ModelConfig(d_model=32, d_ff=64, seq_len=32),
            base=TrainConfig(steps=120, batch_size=8, lr=1e-2, warmup=20),
            control=TrainConfig(steps=20, batch_size=8, lr=1e-2, warmup=5),
            finetune=TrainConfig(steps=30, batch_size=8, lr=3e-2, warmup=10),
            checkpoint_steps=_log_then_dense(30, 10), probe_seqs=16, probe_len=32,
            transfer_step=3, merge_step=10, adamw_step=10, sae_steps=150,
            steering_docs=32, steering_prompts=16, audit_random_gauges=4, gauge_draws=2,
        )
    if name == "quick":
        return StudyConfig(
            preset="quick", seed=seed, model=ModelConfig(d_model=64, d_ff=128),
            base=TrainConfig(steps=1000, batch_size=32, lr=1e-2, warmup=50),
            control=TrainConfig(steps=100, batch_size=16, lr=1e-2, warmup=20),
            finetune=TrainConfig(steps=400, batch_size=16, lr=1.5e-1, warmup=50),
            checkpoint_steps=_log_then_dense(400, 10),
        )
    if name == "full":  # the quick model, trained and fine-tuned longer, measured on more data
        return StudyConfig(
            preset="full", seed=seed, model=ModelConfig(d_model=64, d_ff=128),
            base=TrainConfig(steps=2000, batch_size=32, lr=1e-2, warmup=50),
            control=TrainConfig(steps=300, batch_size=16, lr=1e-2, warmup=20),
            finetune=TrainConfig(steps=1500, batch_size=16, lr=1.5e-1, warmup=50),
            checkpoint_steps=_log_then_dense(1500, 10), probe_seqs=48, probe_len=64, curve_points=24,
            sae_steps=3000, steering_docs=192, steering_prompts=128, audit_random_gauges=16,
        )
    if name in ("real", "real-micro"):
        return real_preset(name == "real-micro", seed)
    raise GaugeportError(f"unknown study preset {name!r}", hint="use micro, quick, full, real or real-micro")


def real_preset(stand_in: bool = False, seed: int = 0, device: str = "cpu") -> StudyConfig:
    """SmolLM2-135M-Instruct on real text (``real``), or the same code path on a tiny stand-in model
    (``real-micro``, seconds: the test). Sizes: ~14 min cold on an idle 2-core CPU (budget 45)."""
    if stand_in:
        rc = RealConfig(stand_in=True, seq_len=32, train_seq_len=24, train_batch=2, forward_batch=8, probe_rows=32,
                        traj_probe_rows=16, eval_rows=4,
                        regimes=(Regime("aggressive", 6, 3e-2, 1, 2, seeds=2), Regime("gentle", 4, 1e-3, 1, 2)),
                        adamw_step=2, adamw_resume_steps=2, sae_layer=1, sae_rows=32, audit_layer=1,
                        steering_layers=(0, 1, 2), gauge_draws=2, ceiling_fractions=(0.0, 0.5, 1.0),
                        audit_random_gauges=3,
                        device=device, extra={"sae_steps": 100})
        model = ModelConfig(d_model=32, n_layers=3, n_heads=4, d_ff=64, seq_len=32)
    else:
        rc = RealConfig(device=device, sae_rows=128, ceiling_fractions=(0.0, 0.5, 1.0), extra={"sae_steps": 2000})
        model = ModelConfig(d_model=576, n_layers=30, n_heads=9, d_ff=1536, seq_len=rc.seq_len)
    g = rc.gentle
    pretrained = TrainConfig(steps=0, batch_size=0, lr=0.0, warmup=0)
    return StudyConfig(
        preset="real-micro" if stand_in else "real", seed=seed, model=model, base=pretrained, control=pretrained,
        finetune=TrainConfig(steps=g.steps, batch_size=rc.train_batch, lr=g.lr, warmup=g.warmup),
        checkpoint_steps=tuple(sorted({*g.checkpoint_steps, rc.adamw_step})), probe_seqs=rc.probe_rows,
        probe_len=rc.seq_len, ceiling_fractions=rc.ceiling_fractions, site_layer=rc.sae_layer,
        transfer_step=g.steps, merge_step=g.steps, adamw_step=rc.adamw_step,
        adamw_resume_steps=rc.adamw_resume_steps, audit_random_gauges=rc.audit_random_gauges, real=rc)


def with_seed(cfg: StudyConfig, seed: int) -> StudyConfig:
    return replace(cfg, seed=seed)


def with_device(cfg: StudyConfig, device: str) -> StudyConfig:
    """The same study run on ``device`` (cpu, cuda, cuda:1); only the real presets use it."""
    if device != "cpu" and cfg.real is None:
        raise GaugeportError(f"--device {device} is only supported by the real presets",
                             hint="the toy presets run on CPU in minutes")
    return replace(cfg, real=replace(cfg.real, device=device)) if cfg.real is not None else cfg
