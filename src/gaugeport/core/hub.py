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
    repo, rev = parsed
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache = hub_cache_dir()
    try:
        return Path(snapshot_download(repo, revision=rev, cache_dir=cache, local_files_only=True))
    except LocalEntryNotFoundError as exc:
        offline = " (HF_HUB_OFFLINE is set)" if hub_offline() else ""
        raise CheckpointError(
            f"{ref} is neither a local path nor a snapshot cached in {cache}{offline}",
            hint=f"download it once (huggingface-cli download {repo}"
            + (f" --revision {rev}" if rev != "main" else "") + "), or point at a local directory") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resolve {ref} in the hub cache {cache}: {exc}") from exc


def hub_provenance(path: str | Path) -> dict[str, str]:
    """``{"gaugeport_hub_repo": "org/name", "gaugeport_hub_revision": <commit>}`` for a hub cache snapshot."""
    m = _SNAPSHOT.search(Path(path).resolve().as_posix() if Path(path).exists() else Path(path).as_posix())
    if not m:
        return {}
    return {"gaugeport_hub_repo": f"{m.group('org')}/{m.group('name')}", "gaugeport_hub_revision": m.group("commit")}
