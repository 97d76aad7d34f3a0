"""An optional package that is missing is bad input: `error:` naming it, `hint:` naming the extra, exit 2.

The packages are hidden from the import system here (``sys.modules[name] = None``); the wheel test
(tests/test_wheel.py) does the same with a venv where they are really absent.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from gaugeport.core.errors import GaugeportError, MissingExtraError, require


def _hide(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, mod)
        monkeypatch.setitem(sys.modules, name, None)


def test_require_returns_an_installed_module():
    assert require("json", "study", "anything") is sys.modules["json"]


def test_require_names_the_package_and_the_extra(monkeypatch):
    _hide(monkeypatch, "matplotlib")
    with pytest.raises(MissingExtraError) as err:
        require("matplotlib", "study", "the study's plots")
    assert isinstance(err.value, GaugeportError)
    assert err.value.message == "the study's plots needs matplotlib, which is not installed (an optional part of " \
                                "gaugeport)"
    assert err.value.hint == "pip install 'gaugeport[study]'"


def test_reproduce_without_matplotlib_stops_before_it_runs(cli, monkeypatch, tmp_path):
    _hide(monkeypatch, "matplotlib")
    code, _, err = cli("reproduce", "--micro", "--out", tmp_path / "r")
    assert code == 2
    assert err.splitlines() == ["error: gaugeport reproduce (its plots) needs matplotlib, which is not installed "
                                "(an optional part of gaugeport)", "hint: pip install 'gaugeport[study]'"]
    assert not (tmp_path / "r").exists()


def test_a_saved_dataset_without_datasets_names_the_data_extra(monkeypatch, tmp_path):
    from gaugeport.estimate.data import load_token_batches

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset_info.json").write_text("{}")
    _hide(monkeypatch, "datasets")
    with pytest.raises(MissingExtraError) as err:
        load_token_batches(tmp_path / "ds", n_tokens=64, batch_size=2, seq_len=8, tokenizer=_Tok())
    assert err.value.hint == "pip install 'gaugeport[data]'"
    assert "needs datasets" in err.value.message


def test_ray_without_ray_names_the_ray_extra(monkeypatch):
    from gaugeport.estimate.distributed import connect

    _hide(monkeypatch, "ray")
    with pytest.raises(MissingExtraError) as err:
        connect("local", workers=1)
    assert err.value.hint == "pip install 'gaugeport[ray]'"


def test_a_plot_beside_a_provenance_report_is_skipped_without_matplotlib(monkeypatch, tmp_path):
    from gaugeport.provenance.batch import plot_roc

    docs = [{"label": 1, "effect": 0.9}, {"label": 0, "effect": 0.1}]
    _hide(monkeypatch, "matplotlib")
    assert plot_roc(docs, tmp_path / "roc.png") is None
    assert not (tmp_path / "roc.png").exists()


class _Tok:
    vocab_size = 16
    all_special_ids: list[int] = []

    def encode(self, text: str) -> list[int]:
        return list(np.arange(len(text)) % 16)
