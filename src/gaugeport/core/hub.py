"""Hub model IDs wherever a checkpoint path is accepted: ``org/name`` or ``org/name@revision``.

:func:`resolve_checkpoint` turns a reference into a local directory. A path that exists is used as
it is (a local directory always wins over a hub ID of the same spelling). Otherwise a reference
shaped like ``org/name[@revision]`` is looked up in ``huggingface_hub``'s local cache (``HF_HUB_CACHE``,
else ``$HF_HOME/hub``, read when the call is made); ``revision`` is a branch, a tag or a commit hash
(default ``main``). gaugeport never downloads: a snapshot that is not cached is an error whose
hint is the download command (so a mistyped relative path never reaches the network either).

A resolved directory is a cache snapshot, ``.../models--org--name/snapshots/<commit>``, so the repo
and the exact commit can always be read back from the path: :func:`hub_provenance` does, and
outputs written from it record both (``gaugeport_hub_repo``, ``gaugeport_hub_revision``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from gaugeport.core.errors import CheckpointError

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
_SNAPSHOT = re.compile(r"models--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})/?$")
_TRUE = {"1", "true", "yes", "on"}


def parse_hub_id(ref: str) -> tuple[str, str] | None:
    """``("org/name", revision)`` for a hub-shaped reference, else None."""
    m = _HUB_ID.match(ref)
    if not m or ".." in ref:
        return None
    return m.group("repo"), m.group("rev") or "main"


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _check_revision(ref: str, rev: str) -> None:
    """A branch, tag or commit: relative segments only, never a path (``/abs``, ``..``, empty segments)."""
    if rev.startswith("/") or any(seg in ("", ".", "..") for seg in rev.split("/")):
        raise CheckpointError(f"{ref}: revision {rev!r} is not a branch, tag or commit name",
                              hint="a revision is a branch or tag (main, v1.0, refs/pr/1) or a 40-hex commit; "
                              "to use a local directory, give its path without @")


def _commit_of(ref: str, repo_dir: Path, rev: str) -> str | None:
    """The commit a branch or tag names in the cache (``refs/<rev>`` must hold a 40-hex commit), or None."""
    if _COMMIT.match(rev):
        return rev
    ref_file = repo_dir / "refs" / rev
    if not ref_file.is_file():
        return None
    try:
        text = ref_file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        text = "<unreadable>"
    if not _COMMIT.match(text):
        raise CheckpointError(f"{ref}: the hub cache's {ref_file} holds {text[:80]!r}, not a commit hash",
                              hint="the cache is damaged or was edited by hand; delete that refs file and "
                              "download the model again")
    return text


def cache_snapshot_match(path: str | Path) -> re.Match[str] | None:
    """The ``models--org--name/snapshots/<commit>`` match when ``path`` is a snapshot of the hub cache now in
    use: ``path`` itself, or any hop of the symlinks it leads through (a link to a snapshot, a snapshot that is
    a link to elsewhere). A folder merely named like one outside the cache is not."""
    hop = Path(os.path.abspath(Path(path).expanduser()))
    try:
        cache = hub_cache_dir().resolve()
        if not hop.is_dir():
            return None
        for _ in range(40):
            here = hop.parent.resolve() / hop.name  # the leaf as it is spelled, its folders resolved
            m = _SNAPSHOT.search(here.as_posix())
            if m is not None and here.parent.parent.parent == cache:
                return m
            if not hop.is_symlink():
                break
            hop = Path(os.path.abspath(hop.parent / os.readlink(hop)))
    except (OSError, RuntimeError):
        return None
    return None


def is_cache_snapshot(path: str | Path) -> bool:
    return cache_snapshot_match(path) is not None


def hub_cache_dir() -> Path:
    """``HF_HUB_CACHE``, else ``$HF_HOME/hub``, else huggingface_hub's default (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE")
    if flag is not None:
        return flag.strip().lower() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def resolve_checkpoint(ref: str | Path) -> Path:
    """A local checkpoint directory for a path or a hub ID (see the module docstring)."""
    path = Path(ref)
    if path.exists():
        return path
    parsed = parse_hub_id(str(ref))
    if parsed is None:
        return path  # neither: the caller reports the missing path
    first = Path(str(ref).split("/", 1)[0])
    if first.is_dir():  # a local-looking path (its folder is here): never read as a hub ID
        raise CheckpointError(f"checkpoint directory not found: {ref} ({first}/ exists here but holds no "
                              f"{path.relative_to(first)})",
                              hint=f"check the path; {ref} is read as a local path because the folder {first}/ "
                              "exists (a hub ID org/name is looked up only when no such folder is here)")
    repo, rev = parsed
    _check_revision(str(ref), rev)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    try:
        commit = _commit_of(str(ref), repo_dir, rev)
        found = Path(snapshot_download(repo, revision=commit or rev, cache_dir=cache, local_files_only=True))
        if not is_cache_snapshot(found):
            raise CheckpointError(f"{ref} resolved to {found}, which is not a snapshot inside the hub cache {cache}",
                                  hint="the cache is damaged or was edited by hand; download the model again")
        return found
    except LocalEntryNotFoundError as exc:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise CheckpointError(
            f"{ref} is neither a local path nor a snapshot cached in {cache}{offline}",
            hint=f"download it once (huggingface-cli download {repo}"
            + (f" --revision {rev}" if rev != "main" else "") + "), or point at a local directory") from exc
    except CheckpointError:
        raise
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resolve {ref} in the hub cache {cache}: {exc}") from exc


def hub_provenance(path: str | Path) -> dict[str, str]:
    """``{"gaugeport_hub_repo": "org/name", "gaugeport_hub_revision": <commit>}`` for a hub cache snapshot
    (``path`` or the snapshot a symlink points to); empty for any other folder, however it is named."""
    try:
        named = _SNAPSHOT.search(Path(path).resolve().as_posix()) or _SNAPSHOT.search(Path(path).absolute().as_posix())
    except (OSError, RuntimeError):
        return {}
    m = cache_snapshot_match(path) if named or Path(path).is_symlink() else None  # most paths: no cache lookup
    if m is None:
        return {}
    return {"gaugeport_hub_repo": f"{m.group('org')}/{m.group('name')}", "gaugeport_hub_revision": m.group("commit")}
