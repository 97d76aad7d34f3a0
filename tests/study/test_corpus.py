"""The built-in corpus: seeded, labelled as stated, and readable by any model's vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from gaugeport.core.errors import DataError
from gaugeport.estimate.corpus import (
    NEGATIVE_WORDS,
    POSITIVE_WORDS,
    REFUSE_WORD,
    builtin_token_ids,
    encode_batch,
    request_prompts,
    sample_documents,
    tokenizer,
)


def test_token_streams_are_deterministic_for_a_seed_and_differ_across_seeds():
    a, b, c = builtin_token_ids(4, 32, seed=3), builtin_token_ids(4, 32, seed=3), builtin_token_ids(4, 32, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == (4, 32) and np.all(a[:, 0] == tokenizer().token_id("<bos>"))


def test_every_generated_word_is_in_the_vocabulary():
    assert not np.any(builtin_token_ids(64, 64, seed=0) == tokenizer().token_id("<unk>"))


@pytest.mark.parametrize("vocab", [5, 17, 96])
def test_ids_are_folded_into_a_smaller_vocabulary(vocab):
    ids = builtin_token_ids(8, 48, seed=1, vocab_size=vocab)
    assert ids.min() >= 0 and ids.max() < vocab


def test_a_vocabulary_without_room_for_words_is_refused():
    with pytest.raises(DataError):
        builtin_token_ids(2, 8, vocab_size=4)


@pytest.mark.parametrize("polarity, own, other", [(1, POSITIVE_WORDS, NEGATIVE_WORDS),
                                                  (-1, NEGATIVE_WORDS, POSITIVE_WORDS)])
def test_reviews_of_one_polarity_use_only_its_sentiment_words(polarity, own, other):
    docs = sample_documents(50, seed=2, kind="review", polarity=polarity)
    words = {w for d in docs for w in d.text.split()}
    assert words & set(own) and not words & set(other)
    assert {d.polarity for d in docs} == {polarity}


def test_forbidden_requests_are_mostly_refused_and_benign_ones_mostly_answered():
    bad = sample_documents(200, seed=3, kind="dialogue", forbidden=True)
    good = sample_documents(200, seed=3, kind="dialogue", forbidden=False)
    assert np.mean([d.style == "refuse" for d in bad]) > 0.8 > np.mean([d.style == "refuse" for d in good])
    assert all(d.text.split("assistant : ")[1].startswith(REFUSE_WORD) for d in bad if d.style == "refuse")


def test_prompts_encode_with_the_index_of_their_last_token():
    prompts = request_prompts(3, seed=0) + ["the soup was"]
    ids, last = encode_batch(prompts)
    tok = tokenizer()
    assert [tok.decode(ids[i, 1:last[i] + 1]) for i in range(len(prompts))] == prompts
