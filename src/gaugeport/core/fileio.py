"""Safe file I/O: atomic writes (temp, then rename), safe reads with clear errors, inputs never overwritten.

* Every output is written under ``.gaugeport-tmp/`` in its parent directory and renamed into place
  only when complete. That one clearly named folder is the only litter a killed run (``SIGKILL``,
  power loss) can leave; the next run that writes into the same folder removes the entries of
  processes that are no longer running, and the folder itself once it is empty.
* :func:`check_outputs` compares every output with every input and with each other (symlinks and
  hard links resolved), with or without ``force``, before anything is written.
* Inside :func:`io_session` (the CLI opens one per command) every file read through this module or
  :class:`~gaugeport.core.checkpoint.Checkpoint` is remembered, and :func:`atomic_path` refuses to
  replace any of them: a last line of defence for inputs that the command line did not name.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gaugeport.core.errors import CheckpointError

if TYPE_CHECKING:
    import torch

TMP_DIR_NAME = ".gaugeport-tmp"
SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
LOCK_PREFIX = "lock-"  # reservation files in the temp folder (see reserve_output)

_SESSION: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar("gaugeport_inputs", default=None)


# ------------------------------------------------------------------------------------ input tracking
@contextlib.contextmanager
def io_session() -> Iterator[set[Path]]:
    """Remember every input read inside the block; :func:`atomic_path` then refuses to replace one."""
    token = _SESSION.set(set())
    try:
        yield _SESSION.get()  # type: ignore[misc]
    finally:
        _SESSION.reset(token)


def note_input(path: str | Path) -> None:
    """Record ``path`` as an input of the current :func:`io_session` (no-op outside one)."""
    seen = _SESSION.get()
    if seen is not None:
        seen.add(_resolve(Path(path)))


def _resolve(path: Path) -> Path:
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare by its absolute spelling
        return Path(os.path.abspath(path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _overlap(out: Path, other: Path) -> str | None:
    """How ``out`` collides with ``other``: 'is', 'inside' (out within other), 'contains', or None."""
    o, s = _resolve(out), _resolve(other)
    if o == s or _same_file(out, other):
        return "is"
    if s in o.parents:
        return "inside"
    if o in s.parents:
        return "contains"
    return None


def check_outputs(outputs: Mapping[str, str | Path], inputs: Iterable[str | Path] = (), *,
                  force: bool = False) -> None:
    """Refuse, before anything is written, any output that is, contains or lies inside an input or another
    output (symlinks and hard links resolved), and an existing output unless ``force``.

    ``outputs`` maps a label (e.g. ``--out``) to a path; ``inputs`` are every path the command reads.
    """
    outs = [(label, Path(p)) for label, p in outputs.items() if p is not None]
    for label, out in outs:
        for src in inputs:
            how = _overlap(out, Path(src))
            if how is not None:
                detail = {"is": "it is the input itself", "inside": "it lies inside the input",
                          "contains": "it contains the input"}[how]
                raise CheckpointError(
                    f"{label} {out} overlaps the input {src}: {detail}",
                    hint="choose an output path outside every input; inputs are never overwritten, "
                    "not even with --force",
                )
    for i, (label, out) in enumerate(outs):
        for label2, out2 in outs[i + 1:]:
            if _overlap(out, out2) is not None:
                raise CheckpointError(f"{label} {out} and {label2} {out2} would overwrite each other",
                                      hint="give every output its own path")
    for label, out in outs:
        _check_writable_target(out, label)
        if _exists(out) and not force:
            raise CheckpointError(f"{label} {out} already exists",
                                  hint="pass --force to replace it, or pick a new path")


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _check_writable_target(path: Path, label: str = "output") -> None:
    """Refuse an output whose parent is an existing file (``--out some_file/x``)."""
    for parent in Path(path).absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise CheckpointError(f"cannot write {label} {path}: {parent} is a file, not a directory",
                                      hint="choose an output path inside a directory")
            return


def refuse_existing(path: Path, force: bool, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to write ``path`` when it exists (unless ``force``) or when it overlaps one of the inputs,
    or any file read so far in this :func:`io_session`."""
    path = Path(path)
    seen = _SESSION.get() or set()
    check_outputs({"output": path}, [*inputs, *sorted(seen)], force=force)


# ------------------------------------------------------------------------------------ atomic writes
def tmp_root(parent: Path) -> Path:
    """The one temp folder of ``parent`` (created; stale entries of dead processes removed)."""
    root = Path(parent) / TMP_DIR_NAME
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root)
    return root


def clean_stale(root: Path) -> list[str]:
    """Remove entries of ``root`` left by processes that are no longer running; returns their names."""
    removed = []
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(LOCK_PREFIX):  # a reservation: removed when the process holding it is gone
            holder = _lock_holder(entry)
            if holder is not None and holder != os.getpid() and not _alive(holder):
                with contextlib.suppress(OSError):
                    entry.unlink()
                removed.append(entry.name)
            continue
        pid_text = entry.name.split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry.name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_if_empty(root: Path) -> None:
    with contextlib.suppress(OSError):
        root.rmdir()


def _lock_name(name: str) -> str:
    """The reservation file of output ``name`` in its parent's temp folder (the same for every process)."""
    digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f"{LOCK_PREFIX}{digest}-{name[:64]}"


def _lock_holder(lock: Path) -> int | None:
    """The pid written in a reservation file, or None while it is being written / unreadable."""
    try:
        text = lock.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def reserve_output(path: Path, label: str = "output") -> Path:
    """Reserve ``path`` for this process: an exclusively created file ``.gaugeport-tmp/lock-...`` in its parent.

    Two runs that write the same output cannot both hold it; a reservation whose process is no longer
    running is taken over. Returns the reservation file (remove it with :func:`release_output`).
    """
    path = Path(path)
    for _ in range(8):
        try:
            root = tmp_root(path.parent)
            lock = root / _lock_name(path.name)
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _lock_holder(lock)
            if holder is not None and not _alive(holder):
                with contextlib.suppress(OSError):
                    lock.unlink()
                continue
            who = f"pid {holder}" if holder is not None else "a run that is starting"
            raise CheckpointError(
                f"{label} {path} is being written by another gaugeport run ({who})",
                hint=f"wait for that run to finish or choose another path; if no such run is going on, delete {lock}",
            ) from None
        except FileNotFoundError:  # the temp folder was just removed by a run that finished: make it again
            continue
        except OSError as exc:
            raise os_error_to_gaugeport(exc, path) from exc
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return lock
    raise CheckpointError(f"cannot reserve {label} {path}: its temp folder keeps changing",
                          hint="another program is writing in the same directory; try again")


_HELD: contextvars.ContextVar[dict[Path, Path] | None] = contextvars.ContextVar("gaugeport_held", default=None)


@contextlib.contextmanager
def reserved_outputs(outputs: Mapping[str, str | Path]) -> Iterator[None]:
    """Reserve every output (label -> path) for the whole block -- the CLI holds a verb's outputs from
    before its first step to its last write -- so that a second run cannot start writing them meanwhile.
    :func:`atomic_path` inside the block uses these reservations instead of taking its own. An output
    whose folder does not exist yet is reserved when it is written (nothing is created before the work)."""
    held = dict(_HELD.get() or {})
    taken: list[Path] = []
    try:
        for label, out in outputs.items():
            key = _resolve(Path(out))
            if key in held or not Path(out).parent.is_dir():
                continue
            lock = reserve_output(Path(out), label)
            held[key] = lock
            taken.append(lock)
        token = _HELD.set(held)
        try:
            yield
        finally:
            _HELD.reset(token)
    finally:
        for lock in taken:
            release_output(lock)


def release_output(lock: Path) -> None:
    with contextlib.suppress(OSError):
        lock.unlink()
    _remove_if_empty(lock.parent)


def _renameat2() -> Any:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError, ImportError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_AT_FDCWD, _RENAME_NOREPLACE = -100, 1


def rename_noreplace(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst`` only if nothing is there (``FileExistsError`` otherwise), atomically where the
    system allows (``renameat2(RENAME_NOREPLACE)``; else a hard link for files, a rename for directories)."""
    fn = _renameat2()
    if fn is not None:
        import ctypes

        if fn(_AT_FDCWD, os.fsencode(str(src)), _AT_FDCWD, os.fsencode(str(dst)), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(dst))
    if _exists(Path(dst)):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    if Path(src).is_dir() and not Path(src).is_symlink():
        os.rename(src, dst)  # fails on a file or a non-empty directory at dst
        return
    try:
        os.link(src, dst)  # fails on anything at dst
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
        os.rename(src, dst)
        return
    os.unlink(src)


def _kind(st: os.stat_result) -> str:
    import stat

    return "directory" if stat.S_ISDIR(st.st_mode) else "file"


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def check_replaceable(path: Path, kind: str | None, label: str = "output") -> None:
    """``--force`` replaces a file with a file and a directory with a directory, never one kind by the other."""
    import stat

    st = _lstat(path)
    if st is None or kind is None or stat.S_ISLNK(st.st_mode):  # a link is only a name: replacing it loses nothing
        return
    have = _kind(st)
    if have != kind:
        raise CheckpointError(
            f"{label} {path} is a {have}; this command writes a {kind} there and --force never replaces "
            f"a {have} with a {kind}",
            hint=f"choose a new path for the {kind} (or remove the {have} yourself if you mean to)",
        )


@contextlib.contextmanager
def atomic_path(path: Path, force: bool = False, inputs: tuple[Path, ...] = (), *, kind: str | None = None,
                exclusive: bool = True) -> Iterator[Path]:
    """Yield a temp path for ``path``; on success move it to ``path``, on failure delete it.

    Works for files and directories alike (the caller creates whatever it wants at the temp path;
    ``kind`` -- "file" or "directory" -- says which, so a mismatch is refused before any work).
    The temp path lives in ``<parent>/.gaugeport-tmp/``, removed again when empty.

    The output-ownership rule (``exclusive``, the default): the output is reserved before any work
    (:func:`reserve_output`), so two runs writing one output cannot both succeed; it is then created
    without replacing anything, or -- with ``force`` -- replaces only what was there when the run
    started, and only by the same kind (a directory is never deleted to make room for a file).
    Something that appears or changes at ``path`` meanwhile is never replaced: the run fails instead.
    ``exclusive=False`` is for content-addressed caches, where concurrent builders write identical
    copies and the last complete one wins.
    """
    path = Path(path)
    refuse_existing(path, force, inputs)
    if exclusive:
        check_replaceable(path, kind)
    lock = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if exclusive and _resolve(path) not in (_HELD.get() or {}):  # else held by reserved_outputs
            lock = reserve_output(path)
        root = tmp_root(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", suffix=f"-{path.name[:64]}", dir=root))
    except OSError as exc:
        if lock is not None:
            release_output(lock)
        if isinstance(exc, CheckpointError):
            raise
        raise os_error_to_gaugeport(exc, path) from exc
    start = _lstat(path)
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise CheckpointError(f"internal error: nothing was written for {path}")
        # inputs read meanwhile (e.g. shards named by an index) are checked again
        refuse_existing(path, True, inputs)
        if exclusive:
            _publish_exclusive(target, path, start, kind or ("directory" if target.is_dir() else "file"), root)
        elif _exists(path):  # a cache entry a concurrent builder finished first: the last complete copy wins
            _replace(target, path, root)
        else:
            os.replace(target, path)
    except OSError as exc:
        if isinstance(exc, CheckpointError) or exc.errno not in _WRITE_ERRNOS:
            raise
        raise os_error_to_gaugeport(exc, path) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if lock is not None:
            release_output(lock)
        _remove_if_empty(root)


def _replace(target: Path, path: Path, root: Path) -> None:
    """Move the old ``path`` aside, put ``target`` in its place (without replacing anything), delete the old."""
    trash = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", suffix="-old", dir=root))
    os.replace(path, trash / path.name)
    try:
        rename_noreplace(target, path)
    except FileExistsError:
        shutil.rmtree(trash, ignore_errors=True)
        raise
    shutil.rmtree(trash, ignore_errors=True)


def _publish_exclusive(target: Path, path: Path, start: os.stat_result | None, kind: str, root: Path) -> None:
    now = _lstat(path)
    changed = CheckpointError(
        f"{path} was created or changed by another program while this run was writing it; it was not replaced "
        "and this run's output was discarded",
        hint="make sure nothing else writes to that path, then run again (or choose another path)")
    try:
        if now is None:
            rename_noreplace(target, path)
            return
        if start is None or (now.st_dev, now.st_ino, now.st_mtime_ns) != (start.st_dev, start.st_ino,
                                                                             start.st_mtime_ns):
            raise changed
        check_replaceable(path, kind)
        _replace(target, path, root)
    except FileExistsError:
        raise changed from None


_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def os_error_to_gaugeport(exc: OSError, path: Path | None = None) -> CheckpointError:
    """A clear error for the OS failures a user can fix (permissions, disk full, read-only disk)."""
    where = f" {path}" if path is not None else (f" {exc.filename}" if exc.filename else "")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return CheckpointError(f"cannot write{where}: permission denied",
                               hint="choose an output in a directory you can write to")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return CheckpointError(f"cannot write{where}: no space left on device",
                               hint="free some space or write to another disk; nothing partial was kept")
    if exc.errno == errno.EROFS:
        return CheckpointError(f"cannot write{where}: read-only file system",
                               hint="choose an output on a writable disk")
    if exc.errno in (errno.ENOTDIR, errno.EEXIST, errno.EISDIR):
        return CheckpointError(f"cannot write{where}: {exc.strerror}",
                               hint="choose an output path inside a directory, not under a file")
    return CheckpointError(f"cannot write{where}: {exc.strerror or exc}", hint="check the output path and the disk")


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None, *, force: bool = False
) -> Path:
    """Write a safetensors file atomically with deterministic bytes (tensors and metadata in sorted order:
    the same content always gives the same file, which ``safetensors.save_file`` does not promise)."""
    with atomic_path(path, force, kind="file") as tmp:
        layout = {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()}
        meta = {str(k): str(v) for k, v in sorted((metadata or {}).items())}
        with SafetensorsStreamWriter(tmp, layout, meta) as writer:
            for name in sorted(tensors):
                writer.write(name, tensors[name])
    return Path(path)


def atomic_write_text(path: Path, text: str, *, force: bool = True) -> Path:
    with atomic_path(path, force, kind="file") as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: Path, obj: object, *, force: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", force=force)


# ------------------------------------------------------------------------------------ safe reads
def require_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as an existing regular file, or a message that says what it is instead."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what} {path} is a directory, not a file", hint=f"give the path of the {what} itself")
    if not path.exists():
        raise CheckpointError(f"{what} not found: {path}", hint="check the path (relative paths start from the "
                              "current directory)")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a regular file", hint=f"give the path of the {what} itself")
    note_input(path)
    return path


def read_safetensors(path: Path, what: str = "safetensors file") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the metadata; truncated or corrupt files raise :class:`CheckpointError`."""
    from safetensors import safe_open

    path = require_file(path, what)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(
            f"cannot read {what} {path}: {exc}", hint="the file is truncated or not a safetensors file"
        ) from exc
    return tensors, metadata


def check_npy_size(path: str | Path) -> None:
    """Refuse a ``.npy`` whose header promises more data than the file holds, before ``np.load`` would
    allocate it (a crafted header can ask for terabytes). Unreadable headers are left to ``np.load``."""
    import numpy as np

    path = Path(path)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version not in readers:
                return
            shape, _, dtype = readers[version](f)
            start = f.tell()
        held = path.stat().st_size - start
    except (OSError, ValueError, EOFError):
        return
    if dtype.hasobject:
        return  # refused by np.load (no unpickling)
    want = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if held < want:
        raise CheckpointError(
            f"{path}: its header says shape {tuple(shape)} of {dtype} ({want:,} bytes), but the file holds {held:,} "
            "bytes of data",
            hint="the .npy file is truncated or its header was edited; save the array again with np.save")


def is_plain_file_name(name: object) -> bool:
    """True for a bare file name (no directory part, not '.', '..', absolute or a drive)."""
    if not isinstance(name, str) or not name or name in (".", ".."):
        return False
    if "/" in name or "\\" in name or "\x00" in name or ":" in name:
        return False
    return Path(name).name == name and not Path(name).is_absolute()


def pickle_globals(path: str | Path) -> list[str] | None:
    """The callables and classes a pickle (or a ``torch.save`` zip) names, read without unpickling anything.

    None when the bytes are not a readable pickle (truncated or corrupt). Used to tell a file that
    ``torch.load(weights_only=True)`` refused because it holds code objects from one that is damaged.
    """
    import io
    import pickletools
    import zipfile

    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return None
                raw = zf.read(member)
        else:
            raw = path.read_bytes()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return None
    names: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(io.BytesIO(raw)):
            if op.name == "GLOBAL" or op.name == "INST":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
    except Exception:  # pickletools raises ValueError / struct errors / others on damaged bytes
        return None
    return names


# ------------------------------------------------------------------------------------ safetensors writer
class SafetensorsStreamWriter:
    """Write a safetensors file one tensor at a time (header first, then each tensor's bytes).

    The caller declares every tensor's name, dtype and shape up front (known from the source's
    header), so nothing needs to be held in memory beyond the tensor being written.
    """

    def __init__(self, path: Path, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str] | None = None) -> None:
        import torch

        names = _dtype_names()
        self.path = Path(path)
        self.layout = dict(layout)
        self.order = sorted(self.layout)
        header: dict[str, Any] = {}
        self.nbytes: dict[str, int] = {}
        offset = 0
        for name in self.order:
            dtype, shape = self.layout[name]
            if dtype not in names:
                raise CheckpointError(f"tensor {name!r} has dtype {dtype}, which gaugeport cannot stream")
            nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
            header[name] = {"dtype": names[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + nbytes]}
            self.nbytes[name] = nbytes
            offset += nbytes
        if metadata:
            header["__metadata__"] = dict(metadata)
        raw = json.dumps(header, separators=(",", ":")).encode()
        from gaugeport.core.directio import BLOCK, AppendFile

        # spaces (which the format allows) so that the data start on a block boundary of the file: parts of
        # whole blocks, gathered into aligned memory, are then written directly with no staging copy
        raw += b" " * (-(8 + len(raw)) % BLOCK)

        self._file = AppendFile(self.path)  # page cache bypassed where the file system allows (core/directio.py)
        self._file.write(struct.pack("<Q", len(raw)) + raw)
        self._next = 0
        self._part = 0  # bytes of the current tensor written so far by write_part

    def write(self, name: str, tensor: torch.Tensor) -> None:
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected or self._part:
            raise CheckpointError(f"internal error: wrote {name!r} but the layout expects {expected!r} next")
        dtype, shape = self.layout[name]
        if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"internal error: {name!r} changed dtype/shape while transforming")
        import torch

        t = tensor.detach().contiguous().cpu()
        if t.numel():  # write the tensor's own buffer: a bytes copy would double the peak memory
            self._file.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        self._next += 1

    def write_part(self, name: str, data: memoryview | bytes) -> None:
        """The next ``len(data)`` bytes of tensor ``name`` (the tensor is done once all its bytes came)."""
        expected = self.order[self._next] if self._next < len(self.order) else None
        if name != expected or self._part + len(data) > self.nbytes[name]:
            raise CheckpointError(f"internal error: wrote {len(data)} bytes of {name!r} at byte {self._part}; "
                                  f"the layout expects {expected!r} ({self.nbytes.get(expected or '', 0)} bytes)")
        self._file.write(data)
        self._part += len(data)
        if self._part == self.nbytes[name]:
            self._next, self._part = self._next + 1, 0

    def close(self) -> None:
        self._file.close()
        if self._next != len(self.order):
            raise CheckpointError(f"internal error: {self.path} closed after {self._next}/{len(self.order)} tensors")

    def __enter__(self) -> SafetensorsStreamWriter:
        return self

    def abort(self) -> None:
        """Close the file as it is (a failed write: the caller discards the incomplete output)."""
        self._file.abort()

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


@cache
def _dtype_names() -> dict[Any, str]:
    """torch dtype -> safetensors dtype name (torch imported on first use: this module loads without it)."""
    import torch

    return {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
            torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
            torch.bool: "BOOL"}


@cache
def _name_to_dtype() -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {v: k for k, v in _dtype_names().items()}
    out.update({"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16})
    return out


def dtype_from_name(name: str) -> torch.dtype:
    """The torch dtype of a safetensors header's dtype name (``"BF16"``, also ``"bfloat16"``)."""
    table = _name_to_dtype()
    key = name.upper() if name.upper() in table else name
    if key not in table:
        raise CheckpointError(f"unsupported tensor dtype {name!r} in checkpoint",
                              hint="gaugeport streams float, int and bool tensors; convert the checkpoint first")
    return table[key]
