"""The promises the sweep cannot state as one row: interrupts leave nothing behind, a failing write is a
clear error, outputs land together, bytes are deterministic, and nothing ever ends in a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gaugeport.core import fileio
from gaugeport.core.checkpoint import Checkpoint, SafetensorsStreamWriter
from gaugeport.core.errors import CheckpointError, GaugeError
from gaugeport.core.gauge import SignedPermutation


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _dead_pid() -> int:
    pid = 4_000_000
    while fileio._alive(pid):
        pid += 1
    return pid


def test_sigterm_during_apply_removes_the_partial_output(cli, tiny_dir, tmp_path, monkeypatch):
    for method in ("write", "write_part"):  # whole tensors, and apply's chunks
        real = getattr(SafetensorsStreamWriter, method)

        def write_then_get_terminated(self, name, tensor, real=real):
            real(self, name, tensor)
            os.kill(os.getpid(), signal.SIGTERM)

        monkeypatch.setattr(SafetensorsStreamWriter, method, write_then_get_terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out", "--quiet")
    assert code == 143 and "terminated" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no output, no temp folder
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back


def test_keyboard_interrupt_exits_130_quietly(cli, tiny_dir, tmp_path, monkeypatch):
    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(SafetensorsStreamWriter, "write", interrupted)
    monkeypatch.setattr(SafetensorsStreamWriter, "write_part", interrupted)  # apply's chunks
    code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out", "--quiet")
    assert code == 130 and "Traceback" not in err and "error" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_temp_folder_is_removed_by_the_next_run(cli, tiny_dir, tmp_path):
    litter = tmp_path / fileio.TMP_DIR_NAME / f"{_dead_pid()}-abc-out"
    (litter / "out").mkdir(parents=True)
    (litter / "out" / "model.safetensors").write_bytes(b"x" * 1000)
    alive = tmp_path / fileio.TMP_DIR_NAME / f"{os.getppid()}-def-other"  # a running process: kept
    alive.mkdir()
    code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert not litter.exists() and alive.exists()
    alive.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [fileio.TMP_DIR_NAME, "out"]
    code, _, _ = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out2", "--quiet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out2"]  # the empty temp folder goes too


@pytest.mark.parametrize(("err_no", "fragment"), [(errno.ENOSPC, "no space left on device"),
                                                  (errno.EACCES, "permission denied")])
def test_write_failures_are_bad_input_with_a_hint_and_leave_nothing(cli, tiny_dir, tmp_path, monkeypatch, err_no,
                                                                     fragment):
    def fail(*_a, **_k):
        raise OSError(err_no, os.strerror(err_no))

    monkeypatch.setattr(SafetensorsStreamWriter, "write", fail)
    monkeypatch.setattr(SafetensorsStreamWriter, "write_part", fail)  # apply's chunks
    code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out", "--quiet")
    assert code == 2 and fragment in err and "\nhint: " in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_save_gauge_lands_with_the_checkpoint_or_not_at_all(cli, tiny_dir, tmp_path, monkeypatch):
    def fail(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(SafetensorsStreamWriter, "write", fail)
        m.setattr(SafetensorsStreamWriter, "write_part", fail)  # apply's chunks
        code, _, _ = cli("apply", tiny_dir("llama"), "--random-seed", "3", "--save-gauge", tmp_path / "g.safetensors",
                         "--out", tmp_path / "out", "--quiet")
    assert code == 2 and list(tmp_path.iterdir()) == []  # the gauge is not left behind without its checkpoint
    code, _, _ = cli("apply", tiny_dir("llama"), "--random-seed", "3", "--save-gauge", tmp_path / "g.safetensors",
                     "--out", tmp_path / "out", "--quiet")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors", "out"]


def test_an_unexpected_exception_is_an_internal_error_not_a_traceback(cli, tiny_dir, monkeypatch):
    import gaugeport.core.inspection as inspection

    def broken(*_a, **_k):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(inspection, "inspect_checkpoint", broken)
    monkeypatch.delenv("GAUGEPORT_DEBUG", raising=False)
    code, _, err = cli("inspect", tiny_dir("llama"))
    assert code == 1 and "Traceback" not in err
    assert err.startswith("error: internal error: ZeroDivisionError: division by zero (please report)")
    assert "\nhint: " in err


def test_importing_the_cli_does_not_import_torch():
    """Ctrl-C during start-up lands in the handler: the heavy imports happen inside it."""
    code = "import sys, gaugeport.cli; print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_align_and_collect_write_identical_bytes_for_the_same_input(cli, tiny_dir, tmp_path):
    a, b = tiny_dir("llama"), tiny_dir("llama", 1)
    for run in ("1", "2"):
        code, _, err = cli("align", a, b, "--method", "weights", "--out", tmp_path / f"g{run}.safetensors",
                           "--report", tmp_path / f"r{run}.json", "--quiet")
        assert code == 0, err
        code, _, err = cli("collect", a, b, "--tokens", "64", "--seq-len", "16", "--out",
                           tmp_path / f"m{run}.safetensors", "--quiet")
        assert code == 0, err
    for stem, ext in (("g", "safetensors"), ("r", "json"), ("m", "safetensors")):
        assert (tmp_path / f"{stem}1.{ext}").read_bytes() == (tmp_path / f"{stem}2.{ext}").read_bytes(), stem


@pytest.mark.parametrize("value", [0, 2, 5])
@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.float32])
def test_signs_are_validated_on_construction_for_every_dtype(value, dtype):
    signs = np.ones(8, dtype=dtype)
    signs[3] = value
    with pytest.raises(GaugeError, match="signs must be"):
        SignedPermutation(np.arange(8), signs)


def test_a_crafted_shard_name_is_refused_before_anything_is_read(tiny_dir, tmp_path):
    a = _copy(tiny_dir("llama"), tmp_path / "a")
    (a / "model.safetensors").rename(tmp_path / "x.safetensors")
    names = Checkpoint.open(_copy(tiny_dir("llama"), tmp_path / "ref")).names
    (a / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(names, "../x.safetensors")}))
    with pytest.raises(CheckpointError, match="not a plain"):
        Checkpoint.open(a)


def test_outputs_are_checked_against_inputs_through_symlinks_and_hard_links(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(b"1")
    (tmp_path / "link").symlink_to(src)
    os.link(src, tmp_path / "hard")
    for out in ("link", "hard", "in.bin"):
        with pytest.raises(CheckpointError, match="overlaps the input"):
            fileio.check_outputs({"--out": tmp_path / out}, [src], force=True)
    with pytest.raises(CheckpointError, match="overwrite each other"):
        fileio.check_outputs({"--out": tmp_path / "o", "--report": tmp_path / "o" / "r.json"}, [], force=True)


def test_every_output_option_is_declared_so_it_is_checked_against_the_inputs():
    """An option that writes (named like --out, --save-*, --report, --emit-*) must be in OUTPUT_PARAMS,
    or the check that keeps outputs off inputs would treat it as an input."""
    import re

    from gaugeport.cli import build_command
    from gaugeport.cli._app import OUTPUT_PARAMS

    command = build_command()
    undeclared = [f"{verb} {p.opts[0]}" for verb, sub in command.commands.items() for p in sub.params
                  if re.search(r"out|save|report|dump|write", p.name) and p.name not in OUTPUT_PARAMS
                  and not getattr(p, "is_flag", False)]
    assert not undeclared, undeclared
