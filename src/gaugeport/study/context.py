"""What every measurement of the study shares: the config, the trained artifacts, loaded models."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gaugeport.estimate.data import BUILTIN, Batch, load_token_batches
from gaugeport.study.config import StudyConfig
from gaugeport.study.corpus import builtin_token_ids, tokenizer
from gaugeport.study.models import load_model
from gaugeport.study.stages import Artifacts, derived_seed
from gaugeport.study.stats import Interval


@dataclass
class Context:
    cfg: StudyConfig
    art: Artifacts
    work: Path  # scratch space for transported artifacts
    progress: bool = True
    _models: dict[Path, torch.nn.Module] = field(default_factory=dict)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # figure -> Interval.to_dict()

    def keep(self, name: str, iv: Interval | dict[str, Any]) -> float:
        """Record ``name``'s interval; returns its value (what the row prints beside it)."""
        d = iv.to_dict() if isinstance(iv, Interval) else iv
        self.intervals[name] = d
        return float(d["value"])

    def model(self, path: Path) -> torch.nn.Module:
        """A checkpoint loaded once per study (never modified: measurements work on copies)."""
        if path not in self._models:
            self._models[path] = load_model(path)
        return self._models[path]

    @property
    def d(self) -> int:
        return self.cfg.model.d_model

    def probe_ids(self) -> torch.Tensor:
        """Probe text: built-in corpus token ids, disjoint in seed from all training data."""
        return torch.cat([b.input_ids for b in self.batches()])

    def batches(self) -> list[Batch]:
        """The same probe tokens as matching batches (special tokens masked out of the statistics)."""
        return load_token_batches(BUILTIN, n_tokens=self.cfg.probe_seqs * self.cfg.probe_len, batch_size=8,
                                  seq_len=self.cfg.probe_len, seed=derived_seed(self.cfg.seed, 60),
                                  vocab_size=tokenizer().vocab_size)

    def eval_ids(self, n_seq: int = 64) -> torch.Tensor:
        """Held-out text for language-model losses."""
        return torch.from_numpy(builtin_token_ids(n_seq, self.cfg.model.seq_len, derived_seed(self.cfg.seed, 61)))

    def transfer_target(self) -> Path:
        """The run-1 checkpoint (in its hidden gauge) that base-trained artifacts are carried to."""
        return self.art.runs[0].checkpoint(self.cfg.transfer_step)

