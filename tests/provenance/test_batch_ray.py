"""``same --pairs ... --ray ADDRESS``: pairs spread over Ray, each line written as its pair finishes, resumable.

The dispatch is tested with a fake executor (order, interruption) and once on a local Ray instance (when ray
is installed) with a cheap comparison, so the test checks the plumbing, not the statistics."""

from __future__ import annotations

import json
import os

import pytest

from gaugeport.core.errors import GaugeportError
from gaugeport.provenance.batch import compare_row, ray_executor, run_pairs, serial_executor


def _csv(tmp_path, n=4):
    p = tmp_path / "pairs.csv"
    p.write_text("a,b,label\n" + "".join(f"a{i},b{i},{i % 2}\n" for i in range(n)))
    return p


def _fake_compare(a, b, alpha):
    i = int(a[1:])
    return {"verdict": "derived" if i % 2 else "independent", "p_value": 0.5, "log10_p_value": -0.3,
            "effect": float(i % 2) + 0.01 * i, "seconds": 0.0, "pid": os.getpid()}


def test_lines_are_written_in_completion_order_and_an_interrupted_batch_resumes(tmp_path):
    csv, out = _csv(tmp_path), tmp_path / "r.jsonl"

    def reversed_then_crash(rows, compare, alpha):  # a cluster finishing pairs out of order, then dying
        for k, row in enumerate(reversed(rows)):
            if k == 2:
                raise RuntimeError("cluster lost")
            yield row, compare_row(row, compare, alpha)

    with pytest.raises(RuntimeError):
        run_pairs(csv, out, compare=_fake_compare, executor=reversed_then_crash)
    assert [json.loads(x)["a"] for x in out.read_text().splitlines()] == ["a3", "a2"]  # kept, as finished
    calls = []

    def counting(a, b, alpha):
        calls.append(a)
        return _fake_compare(a, b, alpha)

    summary = run_pairs(csv, out, compare=counting, executor=serial_executor)
    assert calls == ["a0", "a1"]  # only the pairs the crash left undone
    assert summary["pairs"] == 4 and summary["auc"] == 1.0


def test_a_failing_pair_records_its_error_and_the_batch_goes_on(tmp_path):
    def broken(a, b, alpha):
        if a == "a1":
            raise GaugeportError("cannot open a1", hint="check the path")
        return _fake_compare(a, b, alpha)

    summary = run_pairs(_csv(tmp_path), tmp_path / "r.jsonl", compare=broken)
    assert summary["pairs"] == 4 and summary["errors"] == 1


def test_ray_executor_spreads_pairs_over_a_local_ray_instance_and_resumes(tmp_path):
    pytest.importorskip("ray")  # the optional extra gaugeport[ray]; installed in the project's dev venv
    csv, out = _csv(tmp_path), tmp_path / "r.jsonl"
    out.write_text(json.dumps({"a": "a0", "b": "b0", "label": 0, "verdict": "independent", "effect": 0.0}) + "\n")

    def compare(a, b, alpha):  # nested: Ray pickles it by value for its worker processes
        import os

        if a == "a3":
            raise RuntimeError("not a gaugeport error")  # a worker-side crash becomes that pair's error line
        i = int(a[1:])
        return {"verdict": "derived" if i % 2 else "independent", "effect": float(i % 2), "seconds": 0.0,
                "pid": os.getpid()}

    summary = run_pairs(csv, out, compare=compare, executor=ray_executor("local", 2))
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["a"] for x in lines) == ["a0", "a1", "a2", "a3"]  # a0 resumed, not recomputed
    assert "pid" not in lines[0]
    assert all(x["pid"] != os.getpid() for x in lines[1:] if "pid" in x)  # ran in Ray worker processes
    errors = {x["a"]: x["error"] for x in lines if "error" in x}
    assert list(errors) == ["a3"] and errors["a3"].startswith("ray task failed")
    assert summary["pairs"] == 4 and summary["errors"] == 1


def test_ray_missing_says_which_extra_installs_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(GaugeportError, match=r"gaugeport\[ray\]"):
        run_pairs(_csv(tmp_path), tmp_path / "r.jsonl", compare=_fake_compare, executor=ray_executor("local"))


def test_cli_ray_needs_a_batch_and_positive_workers(cli, tmp_path):
    code, _, err = cli("same", "x", "y", "--ray", "local")
    assert code == 2 and "--pairs" in err and "hint:" in err
    code, _, err = cli("same", "--pairs", _csv(tmp_path), "--out", tmp_path / "o.jsonl", "--ray", "local",
                       "--workers", "0")
    assert code == 2 and "--workers" in err and not (tmp_path / "o.jsonl").exists()
