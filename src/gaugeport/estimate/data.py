"""Token batches for activation collection: from .npy ids, text / jsonl, a saved dataset, or the built-in corpus.

Every source becomes rows of ``seq_len`` token ids, drawn in a seeded order until ``n_tokens``
positions are gathered, then cut into :class:`Batch` es. A batch carries two masks: the
``attention_mask`` the model sees (padding only), and the ``stats_mask`` that selects the
positions whose activations enter the statistics (padding *and* special tokens such as BOS/EOS
excluded: their activations are dominated by position, not by content, and would swamp the
cross-correlation of a few coordinates).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaugeport.core.errors import DataError

BUILTIN = "builtin"


@dataclass(frozen=True)
class Batch:
    """``input_ids`` ``[b, t]`` (int64); ``attention_mask`` ``[b, t]`` (1 = real token, 0 = padding);
    ``stats_mask`` ``[b, t]`` bool (positions counted in the statistics; default: the attention mask)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    stats_mask: torch.Tensor | None = None

    @property
    def token_mask(self) -> torch.Tensor:
        """Boolean ``[b, t]``: the positions whose activations are counted."""
        return (self.stats_mask if self.stats_mask is not None else self.attention_mask).bool()

    @property
    def n_tokens(self) -> int:
        return int(self.token_mask.sum())

    @classmethod
    def of(cls, x: Any, special_ids: Iterable[int] = ()) -> Batch:
        """Coerce a Batch, a ``[b, t]`` tensor / array of ids, or a dict with ``input_ids``."""
        if isinstance(x, Batch):
            return x
        if isinstance(x, dict):
            ids = torch.as_tensor(np.asarray(x["input_ids"]) if not isinstance(x["input_ids"], torch.Tensor)
                                  else x["input_ids"])
            mask = x.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else torch.as_tensor(mask)
        else:
            ids = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
            mask = torch.ones_like(ids)
        if ids.ndim == 1:
            ids, mask = ids[None], mask[None]
        if ids.ndim != 2 or ids.dtype.is_floating_point:
            raise DataError(f"token batches must be integer arrays [batch, seq], got {tuple(ids.shape)} {ids.dtype}")
        ids = ids.long()
        return cls(ids, mask.long(), mask.bool() & ~_special(ids, special_ids))


def batches_digest(batches: Iterable[Batch]) -> str:
    """A short hash of the token ids and masks: two collections of the same tokens get the same name."""
    h = hashlib.sha256()
    for b in batches:
        for t in (b.input_ids, b.token_mask):
            h.update(str(tuple(t.shape)).encode() + t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _special(ids: torch.Tensor, special_ids: Iterable[int]) -> torch.Tensor:
    specials = sorted({int(s) for s in special_ids if s is not None})
    if not specials:
        return torch.zeros_like(ids, dtype=torch.bool)
    return torch.isin(ids, torch.tensor(specials, dtype=ids.dtype))


# ----------------------------------------------------------------------------- public loader
def load_token_batches(source: str | Path, *, tokenizer: Any = None, n_tokens: int, batch_size: int,
                       seq_len: int, seed: int = 0, vocab_size: int | None = None,
                       special_ids: Iterable[int] = (), pad_id: int = 0) -> list[Batch]:
    """Seeded batches of token ids from ``source`` (see the module docstring).

    ``source``: a ``.npy`` of ids ``[n_seq, len]``, a ``.txt`` (one document per non-empty line) or
    ``.jsonl`` (objects with a ``text`` field, or strings) file, a ``datasets.save_to_disk`` directory
    (an ``input_ids`` or a ``text`` column), or ``"builtin"`` (the project's synthetic corpus).
    ``tokenizer``: a transformers tokenizer, a path to load one from, or any object with
    ``encode(text) -> list[int]``; needed for text sources. ``n_tokens`` counts positions fed to
    the models; ``special_ids`` (and the tokenizer's own special ids) are masked out of statistics.
    """
    if n_tokens <= 0 or batch_size <= 0 or seq_len < 2:
        raise DataError(f"need n_tokens > 0, batch_size > 0 and seq_len >= 2 "
                        f"(got {n_tokens}, {batch_size}, {seq_len})")
    n_rows = -(-n_tokens // seq_len)
    tok = _resolve_tokenizer(tokenizer)
    specials = set(special_ids) | _tokenizer_specials(tok)
    if str(source) == BUILTIN:
        rows = _builtin_rows(n_rows, seq_len, seed, vocab_size)
        specials |= _builtin_specials()
    else:
        path = Path(source)
        if not path.exists():
            raise DataError(f"data source not found: {path}",
                            hint="give a .npy of token ids, a .txt/.jsonl file, a saved dataset dir, or 'builtin'")
        rows = _select(_rows_from_path(path, tok, seq_len, pad_id), n_rows, seed)
    _check_ids(rows, vocab_size, source)
    return _to_batches(rows, batch_size, pad_id, specials)


def _select(rows: np.ndarray, n_rows: int, seed: int) -> np.ndarray:
    """A seeded choice of ``n_rows`` rows (all rows, shuffled, when there are fewer)."""
    if rows.shape[0] == 0:
        raise DataError("the data source holds no tokens", hint="check the file: it is empty")
    order = np.random.default_rng(seed).permutation(rows.shape[0])
    return rows[order[:n_rows]]


def _to_batches(rows: np.ndarray, batch_size: int, pad_id: int, specials: set[int]) -> list[Batch]:
    out = []
    for start in range(0, rows.shape[0], batch_size):
        chunk = torch.from_numpy(rows[start:start + batch_size])
        attn = (chunk >= 0).long()  # -1 marks padding in the row arrays
        ids = torch.where(chunk >= 0, chunk, torch.full_like(chunk, pad_id))
        stats = attn.bool() & ~_special(ids, specials)
        out.append(Batch(ids, attn, stats))
    if not out or sum(b.n_tokens for b in out) == 0:
        raise DataError("the data holds no countable tokens (everything is padding or special tokens)")
    return out


def _check_ids(rows: np.ndarray, vocab_size: int | None, source: Any) -> None:
    if rows.size == 0:
        raise DataError(f"no tokens in {source}")
    real = rows[rows >= 0]
    if real.size and vocab_size is not None and int(real.max()) >= vocab_size:
        raise DataError(f"token id {int(real.max())} in {source} is out of range for a vocabulary of {vocab_size}",
                        hint="these ids were made with another tokenizer; re-tokenize the text for this model")


# ----------------------------------------------------------------------------- sources
def _rows_from_path(path: Path, tok: Any, seq_len: int, pad_id: int) -> np.ndarray:
    if path.is_dir():
        return _rows_from_dataset(path, tok, seq_len)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _rows_from_npy(path, seq_len)
    if suffix in (".txt", ".text", ".md"):
        docs = [line for line in _read_utf8(path).splitlines() if line.strip()]
        return _pack(_encode_all(docs, tok, path), seq_len)
    if suffix in (".jsonl", ".json"):
        return _pack(_encode_all(_jsonl_texts(path), tok, path), seq_len)
    raise DataError(f"unsupported data file {path}",
                    hint="use a .npy of token ids, a .txt or .jsonl file, a saved dataset directory or 'builtin'")


def _rows_from_npy(path: Path, seq_len: int) -> np.ndarray:
    from gaugeport.core.fileio import check_npy_size

    check_npy_size(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"cannot read {path} as a numpy array: {exc}",
                        hint="give token ids saved with np.save (an integer array [n_seq, seq_len])") from exc
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: expected integer token ids of shape [n_seq, seq_len], got {arr.shape} {arr.dtype}",
                        hint="save token ids as an integer array (e.g. np.int64) of shape [n_seq, seq_len]")
    return _windows(token_ids(arr, str(path)), seq_len)


_ID_MAX = np.iinfo(np.int64).max


def token_ids(values: Any, where: str) -> np.ndarray:
    """``values`` as int64 token ids, refusing what is not one: floats, strings, negative ids and ids past
    int64 (which would otherwise be truncated, wrap around, or pass for the padding marker -1)."""
    if isinstance(values, list | tuple):  # Python ints (a dataset row): numpy would turn big ones into floats
        bad = next((v for v in values if isinstance(v, bool) or not isinstance(v, int | np.integer)), None)
        if bad is None and values and not 0 <= min(values) <= max(values) <= _ID_MAX:
            bad_id = max(values) if max(values) > _ID_MAX else min(values)
            values = np.asarray([bad_id], dtype=np.uint64 if bad_id > 0 else np.int64)  # reported below
        elif bad is None:
            return np.asarray(values, dtype=np.int64)
        else:
            values = np.asarray([bad], dtype=object)
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: token ids are not an array of integers ({exc})",
                        hint="token ids are non-negative integers") from exc
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        sample = arr.reshape(-1)[0]
        raise DataError(f"{where}: token ids must be integers, found {type(sample).__name__} {sample!r} "
                        f"(dtype {arr.dtype})",
                        hint="token ids are non-negative integers; re-tokenize the text (floats are never rounded "
                        "to ids)")
    if np.issubdtype(arr.dtype, np.unsignedinteger) and int(arr.max()) > _ID_MAX:
        raise DataError(f"{where}: token id {int(arr.max())} is too large for any vocabulary",
                        hint="token ids index the model's vocabulary; re-tokenize the text for this model")
    arr = arr.astype(np.int64)
    if int(arr.min()) < 0:
        raise DataError(f"{where}: negative token id {int(arr.min())}",
                        hint="token ids are non-negative; mark padding by shorter rows, not by negative ids")
    return arr


def _read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})",
                        hint="save the text as UTF-8, or give token ids as a .npy") from exc


def _windows(arr: np.ndarray, seq_len: int) -> np.ndarray:
    """Rows longer than ``seq_len`` are cut into consecutive windows (the tail padded with -1)."""
    n, length = arr.shape
    if length <= seq_len:
        return np.pad(arr, ((0, 0), (0, seq_len - length)), constant_values=-1)
    n_win = -(-length // seq_len)
    padded = np.pad(arr, ((0, 0), (0, n_win * seq_len - length)), constant_values=-1)
    out = padded.reshape(n * n_win, seq_len)
    return out[(out >= 0).sum(1) >= 2]  # a window of one token has nothing to say


def _jsonl_texts(path: Path) -> list[str]:
    texts = []
    for k, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{k} is not valid JSON ({exc})") from exc
        text = obj if isinstance(obj, str) else obj.get("text") if isinstance(obj, dict) else None
        if not isinstance(text, str):
            raise DataError(f"{path}:{k}: expected a string or an object with a 'text' field")
        texts.append(text)
    return texts


def _rows_from_dataset(path: Path, tok: Any, seq_len: int) -> np.ndarray:
    from gaugeport.core.errors import require

    datasets: Any = require("datasets", "data", f"reading the saved dataset {path}")
    _check_dataset_files(path)
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path} is not a dataset saved with datasets.save_to_disk ({exc})") from exc
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        ds = ds[split]
    if "input_ids" in ds.column_names:
        seqs = [token_ids(r, f"{path}: input_ids row {i}") for i, r in enumerate(ds["input_ids"])]
        return _pack(seqs, seq_len)
    if "text" in ds.column_names:
        return _pack(_encode_all(list(ds["text"]), tok, path), seq_len)
    raise DataError(f"dataset {path} has neither an 'input_ids' nor a 'text' column (has {ds.column_names})")


def _check_dataset_files(path: Path) -> None:
    """Every data file a saved dataset's ``state.json`` names is a plain file name inside its own directory
    (``datasets`` would open whatever path it names); splits of a ``DatasetDict`` are checked the same way."""
    from gaugeport.core.fileio import is_plain_file_name

    def load(p: Path) -> Any:
        try:
            return json.loads(_read_utf8(p))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p} is not valid JSON ({exc})", hint="the saved dataset is damaged; save it again") \
                from exc

    dict_file = path / "dataset_dict.json"
    if dict_file.is_file():
        info = load(dict_file)
        splits = info.get("splits") if isinstance(info, dict) else None
        if not isinstance(splits, list) or not all(is_plain_file_name(s) for s in splits):
            raise DataError(f"{dict_file}: 'splits' must list the split folders by plain name, got {splits!r}",
                            hint="the saved dataset is damaged or crafted; save it again with save_to_disk")
        for split in splits:
            _check_dataset_files(path / split)
        return
    state_file = path / "state.json"
    if not state_file.is_file():
        return  # datasets reports what is missing
    state = load(state_file)
    files = state.get("_data_files") if isinstance(state, dict) else None
    if not isinstance(files, list):
        raise DataError(f"{state_file}: '_data_files' must be a list, got {type(files).__name__}",
                        hint="the saved dataset is damaged; save it again with save_to_disk")
    for entry in files:
        name = entry.get("filename") if isinstance(entry, dict) else None
        if not is_plain_file_name(name) or not (path / name).is_file() or (path / name).is_symlink():
            raise DataError(f"{state_file} names the data file {name!r}, which is not a plain file of {path}",
                            hint="a saved dataset's data files live in its own directory; the dataset is damaged "
                            "or crafted, save it again with save_to_disk")


def _pack(seqs: Sequence[np.ndarray], seq_len: int) -> np.ndarray:
    """Documents packed back to back into rows of ``seq_len`` (each document keeps its own BOS/EOS)."""
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs if len(s)]
    if not seqs:
        raise DataError("the data source holds no tokens", hint="check the file: it is empty")
    stream = np.concatenate(seqs)
    return _windows(stream[None], seq_len)


def _builtin_rows(n_rows: int, seq_len: int, seed: int, vocab_size: int | None) -> np.ndarray:
    from gaugeport.estimate.corpus import builtin_token_ids

    return np.asarray(builtin_token_ids(n_rows, seq_len, seed=seed, vocab_size=vocab_size), dtype=np.int64)


def _builtin_specials() -> set[int]:
    from gaugeport.estimate import corpus

    tok = corpus.tokenizer()
    return {tok.token_id(s) for s in corpus.SPECIALS}


# ----------------------------------------------------------------------------- tokenizers
def _resolve_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None or hasattr(tokenizer, "encode"):
        return tokenizer
    from gaugeport.core.hub import resolve_checkpoint

    path = resolve_checkpoint(tokenizer)  # a hub ID resolves to its cached snapshot
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise DataError(f"cannot load a tokenizer from {path}: {exc}",
                        hint="point --tokenizer at a directory with tokenizer files (tokenizer.json ...)") from exc


def _tokenizer_specials(tok: Any) -> set[int]:
    ids = getattr(tok, "all_special_ids", None)
    return {int(i) for i in ids} if ids else set()


def _encode_all(texts: Sequence[str], tok: Any, source: Path) -> list[np.ndarray]:
    if tok is None:
        raise DataError(f"{source} is text and no tokenizer was found",
                        hint="the checkpoint has no tokenizer files: pass --tokenizer DIR (or token ids as .npy)")
    out = []
    for text in texts:
        ids = tok.encode(text)
        out.append(np.asarray(ids.ids if hasattr(ids, "ids") else ids, dtype=np.int64))
    return out


def tokenizer_for(checkpoint: str | Path) -> Any:
    """The tokenizer saved with a checkpoint, or None when it has no tokenizer files."""
    path = Path(checkpoint)
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "vocab.txt")
    if not path.is_dir() or not any((path / n).exists() for n in names):
        return None
    return _resolve_tokenizer(path)
