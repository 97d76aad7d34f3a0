"""One output-ownership rule for every verb (core.fileio.atomic_path).

An output is reserved before any work, so two runs writing it cannot both succeed; it is created
without replacing anything, or with --force replaces only what was there when the run started and
only by the same kind; something that appears at the path meanwhile is never replaced.
"""

from __future__ import annotations

import os

import pytest

from gaugeport.core import fileio
from gaugeport.core.checkpoint import SafetensorsStreamWriter
from gaugeport.core.errors import CheckpointError


def _dead_pid() -> int:
    pid = 4_000_000
    while fileio._alive(pid):
        pid += 1
    return pid


@pytest.mark.parametrize("force", [False, True])
def test_two_writers_of_one_output_cannot_both_succeed(tmp_path, force):
    """The second writer starts while the first is between its reservation and its publish."""
    out = tmp_path / "out.txt"
    with fileio.atomic_path(out, force, kind="file") as first:
        first.write_text("first")
        with pytest.raises(CheckpointError, match="being written by another gaugeport run"), \
                fileio.atomic_path(out, True, kind="file") as second:
            second.write_text("second")
    assert out.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("force", [False, True])
def test_an_output_that_appears_meanwhile_is_never_replaced(cli, tiny_dir, tmp_path, monkeypatch, force):
    out = tmp_path / "out"
    if force:
        out.mkdir()  # an earlier output, replaced by --force only if it is still the same one at the end
        (out / "old.txt").write_text("old")
    for method in ("write", "write_part"):  # whole tensors, and apply's chunks
        real = getattr(SafetensorsStreamWriter, method)

        def another_program_writes_there(self, name, tensor, real=real):
            real(self, name, tensor)
            if not (out / "theirs.txt").exists():
                if force:
                    os.rename(out, tmp_path / "moved")
                out.mkdir(exist_ok=True)
                (out / "theirs.txt").write_text("theirs")

        monkeypatch.setattr(SafetensorsStreamWriter, method, another_program_writes_there)
    args = ["apply", tiny_dir("llama"), "--random-seed", "0", "--out", out, "--quiet"]
    code, _, err = cli(*args, *(["--force"] if force else []))
    assert code == 2 and "was not replaced" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert fileio.TMP_DIR_NAME not in {p.name for p in tmp_path.iterdir()}


def test_a_reservation_left_by_a_dead_run_is_taken_over(cli, tiny_dir, tmp_path):
    lock = tmp_path / fileio.TMP_DIR_NAME / fileio._lock_name("out")
    lock.parent.mkdir()
    lock.write_text(f"{_dead_pid()}\n")
    code, _, err = cli("apply", tiny_dir("llama"), "--random-seed", "0", "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("there", ["file", "empty dir", "full dir", "symlink"])
def test_rename_noreplace_never_replaces(tmp_path, monkeypatch, native, there):
    if not native:
        monkeypatch.setattr(fileio, "_renameat2", lambda: None)
    dst = tmp_path / "dst"
    {"file": lambda: dst.write_text("theirs"), "empty dir": dst.mkdir,
     "full dir": lambda: (dst.mkdir(), (dst / "x").write_text("theirs")),
     "symlink": lambda: dst.symlink_to(tmp_path / "nowhere")}[there]()
    for kind in ("file", "dir"):
        src = tmp_path / f"src-{kind}"
        src.mkdir() if kind == "dir" else src.write_text("mine")
        if there == "empty dir" and kind == "dir" and not native:
            continue  # rename(2) without RENAME_NOREPLACE replaces an empty directory: nothing is lost
        with pytest.raises(OSError):
            fileio.rename_noreplace(src, dst)
        assert src.exists()
    assert os.path.lexists(dst) and (there != "file" or dst.read_text() == "theirs")


def test_rename_noreplace_moves_onto_a_free_path(tmp_path):
    (tmp_path / "a").write_text("x")
    fileio.rename_noreplace(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_text() == "x" and not (tmp_path / "a").exists()


def test_force_replaces_a_file_only_with_a_file_and_a_directory_only_with_a_directory(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="never replaces a directory with a file"):
        fileio.check_replaceable(tmp_path / "d", "file")
    with pytest.raises(CheckpointError, match="never replaces a file with a directory"):
        fileio.check_replaceable(tmp_path / "f", "directory")
    fileio.check_replaceable(tmp_path / "d", "directory")
    fileio.check_replaceable(tmp_path / "f", "file")
    with fileio.atomic_path(tmp_path / "f", force=True, kind="file") as tmp:
        tmp.write_text("new")
    assert (tmp_path / "f").read_text() == "new"


def test_a_verb_holds_its_outputs_from_its_first_step(cli, tiny_dir, tmp_path, monkeypatch):
    """align writes its gauge file at the very end; the file is reserved before the estimation starts."""
    from gaugeport.estimate import pipeline

    real, seen = pipeline.align_checkpoints, []

    def estimate_while_another_run_tries_the_output(*args, **kwargs):
        for out in (tmp_path / "g.safetensors", tmp_path / "r.json"):
            with pytest.raises(CheckpointError, match="being written by another gaugeport run"):
                fileio.reserve_output(out)
            seen.append(out.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "align_checkpoints", estimate_while_another_run_tries_the_output)
    code, _, err = cli("align", tiny_dir("llama"), tiny_dir("llama", 1), "--method", "weights",
                       "--out", tmp_path / "g.safetensors", "--report", tmp_path / "r.json", "--quiet")
    assert code == 0, err
    assert seen == ["g.safetensors", "r.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.safetensors", "r.json"]


def test_force_replaces_a_symlink_itself_never_what_it_points_to(tmp_path):
    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "keep.txt").write_text("kept")
    (tmp_path / "out").symlink_to(tmp_path / "target")
    with fileio.atomic_path(tmp_path / "out", force=True, kind="file") as tmp:
        tmp.write_text("new")
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out").read_text() == "new"
    assert (tmp_path / "target" / "keep.txt").read_text() == "kept"
