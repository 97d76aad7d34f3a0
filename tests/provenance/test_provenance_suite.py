"""The provenance suite's own bookkeeping (benchmarks/provenance_suite.py): merging a run into an earlier
run's rows, the per-method summary table, and the step-driven training run behind its real derivations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import provenance_suite as S  # noqa: E402


def _row(lineage: str, score: float, label: int = 1, set_: str = "real", **extra) -> dict:
    row = {"set": set_, "lineage": lineage, "label": label, **extra}
    for m in S.METHODS:
        row[m] = {"score": score, "seconds": 1.0, "z": 9.9}
    row["gaugeport"]["verdict"] = "derived" if label else "independent"
    row["best_z"] = "awm"
    return row


def test_merging_keeps_the_earlier_rows_in_order_replaces_re_run_ones_and_appends_the_new():
    prev = [_row("a", 1.0), _row("b", 2.0), _row("c", 3.0)]
    mine = [_row("new", 5.0), _row("b", 7.0)]
    merged = S.merge_rows(prev, mine, lambda r: {**r, "carried": True}, listed={("real", "b"), ("real", "new")})
    assert [r["lineage"] for r in merged] == ["a", "b", "c", "new"]
    assert merged[1]["gaugeport"]["score"] == 7.0 and "carried" not in merged[1]  # this run's row, not the old
    assert merged[0]["carried"] and merged[2]["carried"]


def test_merging_drops_an_earlier_row_whose_pair_this_run_lists_but_did_not_reach():
    merged = S.merge_rows([_row("a", 1.0), _row("b", 2.0)], [], lambda r: r, listed={("real", "b")})
    assert [r["lineage"] for r in merged] == ["a"]


def test_a_carried_row_keeps_its_measurements_drops_its_z_and_names_the_run_that_measured_it():
    prev = {"pairs": [_row("old", 1.0, carried_from="/x/first.json"), _row("fresh", 2.0, peak_rss_mb=1700.0)],
            "seconds_total": 10.0}
    runs = S.earlier_runs(prev, Path("suite.json"))
    assert [r.get("carried_from") for r in runs] == ["/x/first.json", None]  # the older run, then prev itself
    old, fresh = (S.carry_row(r, prev, runs) for r in prev["pairs"])
    assert (old["run"], fresh["run"]) == (1, 2)
    assert fresh["peak_rss_mb"] == 1700.0 and fresh["gaugeport"]["score"] == 2.0
    assert "best_z" not in fresh and all("z" not in fresh[m] for m in S.METHODS)
    assert S.carry_row({**fresh, "run": 5}, prev, runs)["run"] == 5  # a row that already names its run keeps it


def test_the_methods_table_counts_what_a_method_reads_and_ranks_only_those_pairs():
    rows = [_row("p1", 0.9), _row("p2", 0.2), _row("n1", 0.5, label=0), _row("n2", 0.1, label=0)]
    rows[1]["awm"]["score"] = None  # awm cannot read p2
    for r, secs in zip(rows, (1.0, 2.0, 3.0, 10.0), strict=True):
        r["gaugeport"]["seconds"] = secs
    summ = S.summary(rows, S.METHODS)
    lines = {ln.split(" | ")[0].strip("| "): ln.split(" | ") for ln in S.methods_table(rows, summ, S.METHODS)
             .splitlines()[2:]}
    assert lines["awm"][3] == "3 of 4" and lines["awm"][4] == "1.000"  # p1 above both negatives
    assert lines["gaugeport"][3] == "4 of 4" and lines["gaugeport"][4] == "0.750"  # p2 below n1 only
    assert lines["gaugeport"][5] == "2.5"  # median of 1, 2, 3, 10 seconds
    assert float(lines["gaugeport"][1]) == pytest.approx(summ["gaugeport"]["auc"])


class _Recorder(torch.nn.Module):
    """A tiny causal LM that records every training batch it sees (class attribute: survives deepcopy)."""

    seen: list[torch.Tensor] = []

    def __init__(self, vocab: int = 32) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, vocab)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        if self.training:
            _Recorder.seen.append(input_ids.clone())
        logits = self.head(self.emb(input_ids))
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1))
        return type("Out", (), {"loss": loss})()


def test_the_training_run_never_trains_on_its_held_out_windows_and_scores_them_before_and_after():
    torch.manual_seed(0)
    seq, n_win, held = 8, 40, 4
    ids = torch.arange(n_win * seq + 1) % 7  # a periodic text: learnable
    ids[-held * seq - 1:] += 20  # the held-out windows carry their own tokens (20..26)
    start = _Recorder()
    _Recorder.seen.clear()
    model, info = S.train_steps(start, ids, steps=30, lr=3e-2, seq=seq, bs=2, eval_windows=held)
    assert info["steps"] == 30 and info["tokens"] == 30 * 2 * seq and info["heldout_tokens"] == held * seq
    assert len(_Recorder.seen) == 30 and all(int(b.max()) < 20 for b in _Recorder.seen)
    assert info["loss_last_10"] < 0.5 * info["loss_first"]
    windows = torch.arange(n_win - held, n_win)
    assert info["heldout_loss_before"] == pytest.approx(S.heldout_loss(start.eval(), ids, windows, seq))  # untouched
    assert info["heldout_loss_after"] == pytest.approx(S.heldout_loss(model, ids, windows, seq))
    assert info["heldout_loss_after"] != pytest.approx(info["heldout_loss_before"])
    assert model is not start
    same, _ = S.train_steps(start, ids, steps=1, lr=1e-3, seq=seq, bs=2, copy=False)
    assert same is start  # copy=False trains the model itself (one copy in memory)


def _periodic(n_win: int = 20, seq: int = 8) -> torch.Tensor:
    return torch.arange(n_win * seq + 1) % 7


def test_a_training_run_runs_exactly_the_steps_asked_for_and_says_the_steps_stopped_it():
    _, info = S.train_steps(_Recorder(), _periodic(), steps=7, lr=1e-3, seq=8, bs=2, eval_windows=2)
    assert (info["steps"], info["steps_planned"], info["stopped_by"]) == (7, 7, "steps")
    assert info["tokens"] == 7 * 2 * 8
    assert info["seconds_per_step"] == pytest.approx(info["seconds"] / 7)


def test_a_training_run_the_safety_cap_stops_records_how_far_it_got():
    _, info = S.train_steps(_Recorder(), _periodic(), steps=50, lr=1e-3, seq=8, bs=2, cap_s=0.0, eval_windows=2)
    assert (info["steps"], info["steps_planned"], info["stopped_by"]) == (0, 50, "wall-clock cap")
    assert info["cap_s"] == 0.0 and info["tokens"] == 0 and info["loss_first"] is None


def test_a_training_run_of_no_steps_is_refused():
    with pytest.raises(ValueError, match="at least one step"):
        S.train_steps(_Recorder(), _periodic(), steps=0, lr=1e-3, seq=8, bs=2)


def test_train_steps_option_overrides_the_named_kinds_and_keeps_the_defaults_of_the_rest():
    got = S.parse_train_steps("finetune=120, moe=40", pytest.fail)
    assert got == {**S.TRAIN_STEPS, "finetune": 120, "moe": 40}


@pytest.mark.parametrize("bad", ["finetun=10", "cpt=0", "cpt=ten", "cpt"])
def test_train_steps_option_refuses_an_unknown_kind_or_a_count_that_is_not_positive(bad):
    errors = []
    S.parse_train_steps(bad, errors.append)
    assert errors and "kind=steps" in errors[0]


def test_dropping_superseded_lineages_removes_their_rows_and_not_run_entries():
    prev = {"pairs": [_row("ft 18 steps", 1.0), _row("depth", 2.0)], "not_run": ["cpt 18 steps + gauge", "x"]}
    got = S.drop_lineages(prev, {"ft 18 steps", "cpt 18 steps + gauge"})
    assert [r["lineage"] for r in got["pairs"]] == ["depth"] and got["not_run"] == ["x"]
    assert got["dropped"] == ["cpt 18 steps + gauge", "ft 18 steps"]
    assert len(prev["pairs"]) == 2  # the earlier document itself is untouched


def test_dropping_a_lineage_the_earlier_run_does_not_have_is_an_error():
    with pytest.raises(ValueError, match="does not have"):
        S.drop_lineages({"pairs": [_row("depth", 2.0)]}, {"ft 18 step"})


def test_the_recipes_table_lists_each_training_run_once_with_its_losses():
    recipe = {"steps": 50, "tokens": 12800, "seconds": 600.4, "lr": 5e-5, "loss_first": 3.0, "loss_last_10": 2.5,
              "heldout_tokens": 1024, "heldout_loss_before": 2.9, "heldout_loss_after": 2.7}
    rows = [_row("SmolLM2 fine-tune 50 steps", 1.0, derivation=recipe),
            _row("SmolLM2 fine-tune 50 steps + full gauge", 1.0, derivation=recipe),
            _row("SmolLM2 fine-tune 50 steps + residual gauge", 1.0, derivation=recipe),
            _row("SmolLM2 fine-tune 50 steps + disguise (rotation)", 1.0, derivation=recipe),
            _row("SmolLM2 depth 24/30", 1.0), _row("SmolLM2 Minitron", 1.0, derivation={"importance": "x"})]
    lines = S.recipes_table(rows).splitlines()[2:]
    assert lines == ["| SmolLM2 fine-tune 50 steps | 50 | 12800 | 600 | 5e-05 | 3.000 -> 2.500 | "
                     "2.900 -> 2.700 (1024) |"]


def test_the_recipes_table_says_when_the_safety_cap_stopped_a_run_and_its_seconds_per_step():
    recipe = {"steps": 40, "steps_planned": 150, "stopped_by": "wall-clock cap", "cap_s": 2400.0, "tokens": 10240,
              "seconds": 2401.0, "seconds_per_step": 60.025, "lr": 5e-5, "loss_first": 3.0, "loss_last_10": 2.5,
              "heldout_tokens": 1024, "heldout_loss_before": 2.9, "heldout_loss_after": 2.7}
    line = S.recipes_table([_row("SmolLM2 fine-tune 40 steps", 1.0, derivation=recipe)]).splitlines()[2]
    assert line.startswith("| SmolLM2 fine-tune 40 steps | 40 of 150 (stopped by the 2400 s cap) | 10240 | "
                           "2401 (60.0) |")


def test_a_pair_under_the_lock_is_timed_from_when_it_holds_the_lock(monkeypatch, tmp_path):
    seen = {}

    def fake_run(cmd, **kw):
        seen.update(cmd=cmd, timeout=kw.get("timeout"))
        return type("P", (), {"returncode": 124, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(S.subprocess, "run", fake_run)
    row = S.run_pair_isolated({"a": "x", "b": "y", "lineage": "l"}, ("awm",), threads=1, lock=tmp_path / "lock",
                              timeout_s=30)
    assert seen["cmd"][:6] == ["flock", str(tmp_path / "lock"), "timeout", "-s", "KILL", "30"]
    assert seen["timeout"] is None  # no limit on waiting for the lock
    assert "timed out after 30 s" in row["error"]
