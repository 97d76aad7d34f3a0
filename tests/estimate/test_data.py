"""Token batches from every supported source, seeded, with padding and special tokens masked."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gaugeport.core.errors import DataError
from gaugeport.estimate.data import Batch, load_token_batches

SPECIALS = {0, 1, 2}


class WordTok:
    """A stand-in tokenizer: one id per distinct word, BOS (1) first."""

    def __init__(self) -> None:
        self.ids: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [1] + [self.ids.setdefault(w, 3 + len(self.ids)) for w in text.split()]


def ids_of(batches: list[Batch]) -> np.ndarray:
    return torch.cat([b.input_ids for b in batches]).numpy()


def test_npy_rows_are_cut_into_windows_and_drawn_in_seeded_order(tmp_path) -> None:
    arr = np.arange(3, 3 + 4 * 20).reshape(4, 20)
    np.save(tmp_path / "ids.npy", arr)
    batches = load_token_batches(tmp_path / "ids.npy", n_tokens=40, batch_size=2, seq_len=10, seed=0)
    got = ids_of(batches)
    assert got.shape == (4, 10)
    windows = {tuple(w) for w in arr.reshape(8, 10)}
    assert all(tuple(row) in windows for row in got)
    again = ids_of(load_token_batches(tmp_path / "ids.npy", n_tokens=40, batch_size=2, seq_len=10, seed=0))
    other = ids_of(load_token_batches(tmp_path / "ids.npy", n_tokens=40, batch_size=2, seq_len=10, seed=1))
    assert np.array_equal(got, again) and not np.array_equal(got, other)


def test_special_tokens_and_padding_are_masked_out_of_statistics_but_padding_only_from_attention(tmp_path) -> None:
    arr = np.array([[1, 5, 6, 2, 7, 8, 9]])  # BOS ... EOS ...: 7 tokens, cut into windows of 4 -> tail padded
    np.save(tmp_path / "ids.npy", arr)
    (batch,) = load_token_batches(tmp_path / "ids.npy", n_tokens=8, batch_size=2, seq_len=4, seed=0,
                                  special_ids=SPECIALS)
    order = np.argsort(batch.input_ids[:, 0].numpy())  # the window starting with BOS first
    attn, stats = batch.attention_mask.numpy()[order], batch.token_mask.numpy()[order]
    assert attn.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    assert stats.tolist() == [[False, True, True, False], [True, True, True, False]]


def test_text_is_tokenized_and_packed(tmp_path) -> None:
    (tmp_path / "d.txt").write_text("the cat sat\n\nthe dog ran far\n")  # 4 + 5 tokens with BOS
    tok = WordTok()
    batches = load_token_batches(tmp_path / "d.txt", tokenizer=tok, n_tokens=100, batch_size=4, seq_len=5, seed=0)
    stream = sorted(int(i) for i in ids_of(batches).ravel())
    expected = sorted([1, *[tok.ids[w] for w in ["the", "cat", "sat"]], 1,
                       *[tok.ids[w] for w in ["the", "dog", "ran", "far"]], 0])  # one pad ends the second window
    assert stream == expected


def test_jsonl_text_fields_and_plain_strings_are_read(tmp_path) -> None:
    lines = [json.dumps({"text": "a b c"}), json.dumps("d e"), ""]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    batches = load_token_batches(tmp_path / "d.jsonl", tokenizer=WordTok(), n_tokens=64, batch_size=8,
                                 seq_len=8, seed=0, special_ids=SPECIALS)
    assert sum(b.n_tokens for b in batches) == 5  # the two BOS tokens are not counted


def test_saved_dataset_with_input_ids(tmp_path) -> None:
    import datasets

    datasets.Dataset.from_dict({"input_ids": [[1, 4, 5, 6], [1, 7, 8]]}).save_to_disk(str(tmp_path / "ds"))
    batches = load_token_batches(tmp_path / "ds", n_tokens=100, batch_size=4, seq_len=4, seed=0,
                                 special_ids=SPECIALS)
    assert sorted(int(i) for b in batches for i in b.input_ids[b.token_mask]) == [4, 5, 6, 7, 8]


def test_builtin_corpus_is_seeded_and_fits_the_vocabulary() -> None:
    a = load_token_batches("builtin", n_tokens=256, batch_size=4, seq_len=32, seed=3, vocab_size=50)
    b = load_token_batches("builtin", n_tokens=256, batch_size=4, seq_len=32, seed=3, vocab_size=50)
    assert np.array_equal(ids_of(a), ids_of(b))
    assert ids_of(a).shape == (8, 32) and ids_of(a).max() < 50
    assert not bool(a[0].token_mask[:, 0].any())  # each row starts with BOS, never counted


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: None, "not found"),
    (lambda p: np.save(p / "x.npy", np.zeros((0, 5), dtype=np.int64)), "no tokens"),
    (lambda p: np.save(p / "x.npy", np.zeros((2, 5), dtype=np.float32)), "integer token ids"),
    (lambda p: np.save(p / "x.npy", np.full((2, 5), 500)), "out of range"),
    (lambda p: (p / "x.txt").write_text("some words\n"), "no tokenizer"),
    (lambda p: (p / "x.csv").write_text("1,2\n"), "unsupported data file"),
])
def test_bad_sources_are_refused_with_a_reason(tmp_path, setup, message: str) -> None:
    setup(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "missing.npy")
    with pytest.raises(DataError, match=message):
        load_token_batches(tmp_path / name, n_tokens=10, batch_size=2, seq_len=5, seed=0, vocab_size=96)


def test_nonpositive_sizes_are_refused(tmp_path) -> None:
    with pytest.raises(DataError, match="n_tokens > 0"):
        load_token_batches("builtin", n_tokens=0, batch_size=2, seq_len=8, seed=0)


def test_batch_of_coerces_plain_id_tensors_masking_specials() -> None:
    b = Batch.of(torch.tensor([[1, 5, 2, 6]]), special_ids=SPECIALS)
    assert b.token_mask.tolist() == [[False, True, False, True]] and b.attention_mask.tolist() == [[1, 1, 1, 1]]
