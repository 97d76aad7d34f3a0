"""AdamW state of a real Hugging Face Trainer checkpoint: resuming in B's gauge retraces A's run."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from transformers import Trainer, TrainingArguments

from gaugeport.core.apply import apply_gauge_to_model
from gaugeport.core.errors import ArtifactError
from gaugeport.core.gauge import SignedPermutation, save_gauge
from gaugeport.models.tiny import tiny_model
from gaugeport.transport import transport_optimizer_state, transport_trainer_checkpoint

D, SAVE_AT, STEPS = 32, 3, 7
LOSS_TOL, WEIGHT_TOL = 1e-5, 1e-5  # float32: identical runs up to summation order


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 64, seq_len: int = 16) -> None:
        self.x = torch.randint(3, 96, (n, seq_len), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.x[i], "labels": self.x[i]}


def _trainer(model: torch.nn.Module, out: Path) -> Trainer:
    transformers.utils.logging.set_verbosity_error()
    args = TrainingArguments(output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=8, learning_rate=5e-3,
                             weight_decay=0.1, logging_steps=1, save_strategy="steps", save_steps=SAVE_AT,
                             report_to=[], use_cpu=True, disable_tqdm=True, seed=0, lr_scheduler_type="constant")
    return Trainer(model=model.train(), args=args, train_dataset=Tokens())


def _losses(trainer: Trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and h["step"] > SAVE_AT]


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """A tiny Llama trained by a real Trainer for STEPS steps, checkpointed at SAVE_AT."""
    root = tmp_path_factory.mktemp("trainer")
    trainer = _trainer(tiny_model("llama", seed=0), root / "a")
    trainer.train()
    return root, trainer, SignedPermutation.random(D, seed=5)


def _resume(ckpt: Path, out: Path) -> Trainer:
    trainer = _trainer(tiny_model("llama", seed=1), out)  # weights come from the checkpoint
    trainer.train(resume_from_checkpoint=str(ckpt))
    return trainer


def _mapped_back_diff(trainer_b: Trainer, trainer_a: Trainer, g: SignedPermutation) -> float:
    back = apply_gauge_to_model(copy.deepcopy(trainer_b.model).eval(), g.inverse()).state_dict()
    return max(float((back[n] - t).abs().max()) for n, t in trainer_a.model.state_dict().items())


def test_signed_transport_resumes_the_same_trajectory(run_a) -> None:
    root, trainer_a, g = run_a
    out = root / "b" / f"checkpoint-{SAVE_AT}"
    transport_trainer_checkpoint(root / "a" / f"checkpoint-{SAVE_AT}", g, out)
    trainer_b = _resume(out, root / "b")
    la, lb = _losses(trainer_a), _losses(trainer_b)
    assert len(la) == STEPS - SAVE_AT and len(lb) == len(la)
    assert max(abs(x - y) for x, y in zip(la, lb, strict=True)) <= LOSS_TOL
    assert _mapped_back_diff(trainer_b, trainer_a, g) <= WEIGHT_TOL


def test_perm_only_transport_visibly_diverges(run_a) -> None:
    root, trainer_a, g = run_a
    out = root / "p" / f"checkpoint-{SAVE_AT}"
    transport_trainer_checkpoint(root / "a" / f"checkpoint-{SAVE_AT}", g, out, perm_only=True)
    trainer_p = _resume(out, root / "p")
    la, lp = _losses(trainer_a), _losses(trainer_p)
    assert max(abs(x - y) for x, y in zip(la, lp, strict=True)) > 100 * LOSS_TOL
    assert _mapped_back_diff(trainer_p, trainer_a, g) > 1000 * WEIGHT_TOL


def test_everything_else_is_copied_and_weights_carry_provenance(run_a, tmp_path) -> None:
    root, _, g = run_a
    src = root / "a" / f"checkpoint-{SAVE_AT}"
    transport_trainer_checkpoint(src, g, tmp_path / "out")
    for name in ("scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin", "config.json"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "model.safetensors"), framework="pt") as f:
        assert f.metadata()["gaugeport_gauge"] == g.fingerprint()


def test_moments_follow_their_parameters(run_a) -> None:
    """exp_avg of a matrix is signed-permuted, exp_avg_sq only permuted, a gain's moments only permuted."""
    root, trainer_a, g = run_a
    state = torch.load(root / "a" / f"checkpoint-{SAVE_AT}" / "optimizer.pt", weights_only=True)
    moved = transport_optimizer_state(state, trainer_a.model, g)
    names = [n for n, _ in trainer_a.model.named_parameters()]
    idx = {n: i for i, n in enumerate(n for group in _groups(trainer_a) for n in group)}
    emb, gain = idx["model.embed_tokens.weight"], idx["model.norm.weight"]
    assert "model.embed_tokens.weight" in names
    torch.testing.assert_close(moved["state"][emb]["exp_avg"], g.apply(state["state"][emb]["exp_avg"], axis=1))
    torch.testing.assert_close(moved["state"][emb]["exp_avg_sq"],
                               g.apply(state["state"][emb]["exp_avg_sq"], axis=1, mode="abs"))
    torch.testing.assert_close(moved["state"][gain]["exp_avg"], g.apply(state["state"][gain]["exp_avg"], mode="abs"))
    assert moved["state"][emb]["step"] == state["state"][emb]["step"]


def _groups(trainer: Trainer) -> tuple[list[str], list[str]]:
    from gaugeport.transport.adamw import trainer_param_groups

    decay, rest = trainer_param_groups(trainer.model)
    return [n for n, _ in decay], [n for n, _ in rest]


def test_custom_optimizer_layout_is_refused_without_output(run_a, tmp_path) -> None:
    root, trainer_a, g = run_a
    src = tmp_path / "ckpt"
    shutil.copytree(root / "a" / f"checkpoint-{SAVE_AT}", src)
    one_group = torch.optim.AdamW(trainer_a.model.parameters()).state_dict()  # a single parameter group
    torch.save(one_group, src / "optimizer.pt")
    with pytest.raises(ArtifactError, match="custom optimizer"):
        transport_trainer_checkpoint(src, g, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sharded_optimizer_layout_is_refused(run_a, tmp_path) -> None:
    root, _, g = run_a
    src = tmp_path / "ckpt"
    shutil.copytree(root / "a" / f"checkpoint-{SAVE_AT}", src)
    shutil.copy(src / "optimizer.pt", src / "rank1-of-2-optimizer.pt")
    with pytest.raises(ArtifactError, match="rank1-of-2-optimizer.pt"):
        transport_trainer_checkpoint(src, g, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_detects_a_trainer_checkpoint_and_reads_the_gauge_file_once(run_a, tmp_path, cli, monkeypatch) -> None:
    from gaugeport.core import gauge

    root, _, g = run_a
    gpath = save_gauge(g, tmp_path / "g.safetensors")
    reads = []
    real = gauge.read_gauge_file
    monkeypatch.setattr(gauge, "read_gauge_file", lambda path: reads.append(path) or real(path))
    code, out, _ = cli("transport", root / "a" / f"checkpoint-{SAVE_AT}", "--gauge", gpath, "--out", tmp_path / "o")
    assert code == 0 and "trainer-checkpoint" in out
    assert reads == [gpath]
    assert (tmp_path / "o" / "optimizer.pt").is_file() and (tmp_path / "o" / "model.safetensors").is_file()
