"""Hub model IDs (``org/name[@revision]``) resolve through huggingface_hub's local cache, offline.

The cache is laid out as the hub client writes it: ``models--org--name/blobs/<hash>`` holding the
files, ``snapshots/<commit>/<file>`` symlinks into ``blobs``, ``refs/<branch or tag>`` naming a commit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from safetensors import safe_open

from gaugeport.core.checkpoint import Checkpoint
from gaugeport.core.errors import CheckpointError
from gaugeport.core.hub import hub_provenance, parse_hub_id, resolve_checkpoint

COMMIT_MAIN, COMMIT_V1 = "a" * 40, "b" * 40


def add_snapshot(hub: Path, repo: str, src: Path, commit: str, refs: tuple[str, ...]) -> Path:
    root = hub / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    (root / "blobs").mkdir(exist_ok=True)
    for f in sorted(src.iterdir()):
        blob = root / "blobs" / hashlib.sha256(f.read_bytes()).hexdigest()
        if not blob.exists():
            shutil.copy2(f, blob)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture
def hub_home(tmp_path: Path, tiny_dir, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "hf_home"
    add_snapshot(home / "hub", "org/tiny", tiny_dir("llama", 0), COMMIT_MAIN, ("main",))
    add_snapshot(home / "hub", "org/tiny", tiny_dir("llama", 1), COMMIT_V1, ("v1",))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # no local directory named org/tiny
    return home


def test_hub_ids_resolve_by_branch_tag_and_commit(hub_home: Path) -> None:
    for ref, commit in (("org/tiny", COMMIT_MAIN), ("org/tiny@v1", COMMIT_V1), (f"org/tiny@{COMMIT_V1}", COMMIT_V1)):
        path = resolve_checkpoint(ref)
        assert path.name == commit and (path / "config.json").is_file()
        assert hub_provenance(path) == {"gaugeport_hub_repo": "org/tiny", "gaugeport_hub_revision": commit}
        assert Checkpoint.open(ref).hub["gaugeport_hub_revision"] == commit


def test_a_local_path_wins_over_a_hub_id(hub_home: Path, tiny_dir) -> None:
    shutil.copytree(tiny_dir("llama", 0), Path("org") / "tiny")
    assert resolve_checkpoint("org/tiny") == Path("org/tiny") and Checkpoint.open("org/tiny").hub == {}


def test_missing_hub_id_offline_is_a_clear_error(hub_home: Path, cli) -> None:
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE"):
        resolve_checkpoint("org/absent")
    code, _, err = cli("inspect", "org/tiny@v9")
    assert code == 2 and "error:" in err and "hint:" in err


def test_online_a_missing_hub_id_is_still_never_fetched(hub_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(CheckpointError, match="huggingface-cli download org/absent"):
        resolve_checkpoint("org/absent")


def test_apply_and_verify_take_a_hub_id_and_record_the_revision(hub_home: Path, cli, tmp_path: Path) -> None:
    code, _, err = cli("apply", "org/tiny@v1", "--random-seed", "3", "--save-gauge", tmp_path / "g.safetensors",
                       "--out", tmp_path / "b", "--quiet")
    assert code == 0, err
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["gaugeport_hub_repo"] == "org/tiny" and meta["gaugeport_hub_revision"] == COMMIT_V1
    code, out, err = cli("verify", "org/tiny@v1", tmp_path / "b", "--gauge", tmp_path / "g.safetensors")
    assert code == 0, err + out


@pytest.mark.parametrize(("ref", "parsed"), [("org/name", ("org/name", "main")),
                                             ("org/name@v1.2", ("org/name", "v1.2")),
                                             ("a/b/c", None), ("../x", None), ("name", None)])
def test_parse_hub_id(ref: str, parsed: tuple[str, str] | None) -> None:
    assert parse_hub_id(ref) == parsed


def test_a_folder_merely_named_like_a_snapshot_is_not_recorded_as_hub(hub_home: Path, tiny_dir, cli) -> None:
    fake = Path("elsewhere") / "models--org--fake" / "snapshots" / ("c" * 40)
    shutil.copytree(tiny_dir("llama", 0), fake)
    assert hub_provenance(fake) == {} and Checkpoint.open(fake).hub == {}
    code, _, err = cli("apply", fake, "--random-seed", "0", "--out", "b", "--quiet")
    assert code == 0, err
    with safe_open("b/model.safetensors", "pt") as f:
        assert "gaugeport_hub_repo" not in f.metadata()


def test_a_symlink_to_a_cached_snapshot_is_recorded(hub_home: Path) -> None:
    snap = resolve_checkpoint("org/tiny@v1")
    Path("mine").symlink_to(snap)
    assert hub_provenance("mine") == {"gaugeport_hub_repo": "org/tiny", "gaugeport_hub_revision": COMMIT_V1}


@pytest.mark.parametrize("content", ["../../../../elsewhere", "/abs/elsewhere", "v1", ""])
def test_a_ref_that_is_not_a_commit_is_refused(hub_home: Path, content: str) -> None:
    (hub_home / "hub" / "models--org--tiny" / "refs" / "main").write_text(content)
    with pytest.raises(CheckpointError, match="not a commit hash"):
        resolve_checkpoint("org/tiny")


@pytest.mark.parametrize("rev", ["/etc", "refs//main", "./main", "main/"])
def test_a_revision_that_is_a_path_is_refused(hub_home: Path, rev: str) -> None:
    with pytest.raises(CheckpointError, match="is not a branch, tag or commit name"):
        resolve_checkpoint(f"org/tiny@{rev}")


def test_a_snapshot_that_is_itself_a_symlink_is_recorded(hub_home: Path, tmp_path: Path) -> None:
    snap = hub_home / "hub" / "models--org--tiny" / "snapshots" / COMMIT_V1
    moved = tmp_path / "moved-snapshot"
    shutil.copytree(snap, moved, symlinks=False)
    shutil.rmtree(snap)
    snap.symlink_to(moved)
    path = resolve_checkpoint("org/tiny@v1")
    assert hub_provenance(path) == {"gaugeport_hub_repo": "org/tiny", "gaugeport_hub_revision": COMMIT_V1}
    assert Checkpoint.open("org/tiny@v1").hub["gaugeport_hub_revision"] == COMMIT_V1
