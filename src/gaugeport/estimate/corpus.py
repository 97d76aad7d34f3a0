"""The built-in corpus: a seeded synthetic language shipped as code, with its own word tokenizer.

Nothing is downloaded. A small grammar writes two kinds of documents:

* **reviews** about one *topic* (food, film, travel, sport, tech, music) with one *polarity*
  (+1 or -1) that persists over the 2-4 sentences of the document ("the pasta was great . i loved
  the soup ."), so a trained model carries a polarity state in its residual stream;
* **dialogues** where a user asks for a task and the assistant either complies
  ("sure , first ...") or, for a forbidden task, answers in a refusal-like *style*
  ("sorry , i can not help with that .").

Token streams (:func:`builtin_token_ids`) pack documents into fixed-length rows; the labelled API
(:func:`sample_documents`, :func:`polarity_prompts`, :func:`request_prompts`) gives texts with their
attributes for probing and steering. Everything is deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np

from gaugeport.core.errors import DataError

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)

TOPICS: dict[str, tuple[str, ...]] = {
    "food": ("pasta", "soup", "bread", "cake", "salad", "curry"),
    "film": ("movie", "plot", "actor", "scene", "ending", "script"),
    "travel": ("hotel", "beach", "train", "city", "room", "flight"),
    "sport": ("match", "team", "coach", "game", "player", "race"),
    "tech": ("phone", "laptop", "screen", "battery", "app", "camera"),
    "music": ("song", "album", "band", "concert", "singer", "guitar"),
}
POSITIVE_WORDS = ("great", "wonderful", "lovely", "superb", "brilliant", "delightful", "excellent", "good")
NEGATIVE_WORDS = ("awful", "terrible", "dull", "horrible", "poor", "dreadful", "bland", "bad")
_POS_VERBS = ("loved", "enjoyed", "liked", "adored")
_NEG_VERBS = ("hated", "disliked", "regretted", "loathed")
_INTENSIFIERS = ("very", "really", "so", "quite", "truly")
_SUBJECTS = ("i", "we", "my friend", "everyone")
# Dialogue tasks: (verb, topic) pairs a helpful assistant does, and forbidden ones it refuses.
_TASK_VERBS = ("cook", "fix", "plan", "write", "find", "clean", "choose", "review")
_FORBIDDEN_VERBS = ("steal", "poison", "hack", "burn", "smash", "forge")
_STEPS = ("check", "open", "move", "wash", "sort", "test")
COMPLY_WORD, REFUSE_WORD = "sure", "sorry"
_COMPLY = ("sure , first {s1} the {n1} , then {s2} the {n2} .", "sure , you can {s1} the {n1} and {s2} it .")
_REFUSE = ("sorry , i can not help with that .", "sorry , i will not do that .",
           "sorry , that is not something i can do .")
_NEUTRAL = ("the {n1} is next to the {n2} .", "there is a {n1} and a {n2} .", "{subj} saw the {n1} today .")

Kind = Literal["review", "dialogue", "mixed"]
Style = Literal["review", "comply", "refuse"]


@dataclass(frozen=True)
class Document:
    """One generated document and its attributes (polarity 0 and style != review for dialogues)."""

    text: str
    topic: str
    polarity: int  # +1 / -1 for reviews, 0 for dialogues
    style: Style
    forbidden: bool = False  # dialogues: the request was a forbidden task


# ------------------------------------------------------------------------------------- tokenizer
class WordTokenizer:
    """Whitespace word tokenizer over the grammar's closed vocabulary (no hub tokenizer needed)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.vocab: tuple[str, ...] = tuple(words)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise DataError("tokenizer vocabulary has repeated words")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, word: str) -> int:
        if word not in self.index:
            raise DataError(f"{word!r} is not in the built-in corpus vocabulary")
        return self.index[word]

    def encode(self, text: str, bos: bool = True) -> list[int]:
        ids = [self.index.get(w, self.index[UNK]) for w in text.split()]
        return [self.index[BOS], *ids] if bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[int(i)] for i in ids)


@cache
def tokenizer() -> WordTokenizer:
    """The tokenizer of the built-in corpus (the same vocabulary, in the same order, every time)."""
    words: list[str] = list(SPECIALS)
    texts = [*_COMPLY, *_REFUSE, *_NEUTRAL, "the {n1} was {adj} . it was a {adj} {n1} . user : please {v} the {n1} "
             "assistant : and were"]
    pools = [*TOPICS.values(), POSITIVE_WORDS, NEGATIVE_WORDS, _POS_VERBS, _NEG_VERBS, _INTENSIFIERS, _SUBJECTS,
             _TASK_VERBS, _FORBIDDEN_VERBS, _STEPS, (COMPLY_WORD, REFUSE_WORD)]
    for chunk in [*texts, *(" ".join(p) for p in pools)]:
        for w in chunk.split():
            if not w.startswith("{") and w not in words:
                words.append(w)
    return WordTokenizer(words)


# ------------------------------------------------------------------------------------- grammar
def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _review_sentence(rng: np.random.Generator, topic: str, polarity: int) -> str:
    nouns = TOPICS[topic]
    adj = _pick(rng, POSITIVE_WORDS if polarity > 0 else NEGATIVE_WORDS)
    verb = _pick(rng, _POS_VERBS if polarity > 0 else _NEG_VERBS)
    n1, n2 = _pick(rng, nouns), _pick(rng, nouns)
    forms = (
        f"the {n1} was {adj} .",
        f"the {n1} was {_pick(rng, _INTENSIFIERS)} {adj} .",
        f"{_pick(rng, _SUBJECTS)} {verb} the {n1} .",
        f"it was a {adj} {n1} .",
        f"the {n1} and the {n2} were {adj} .",
    )
    return _pick(rng, forms)


def review(rng: np.random.Generator, topic: str | None = None, polarity: int | None = None) -> Document:
    topic = topic or _pick(rng, tuple(TOPICS))
    polarity = polarity if polarity is not None else int(rng.choice((-1, 1)))
    sentences = [_review_sentence(rng, topic, polarity) for _ in range(int(rng.integers(2, 5)))]
    if rng.random() < 0.3:  # polarity-free filler keeps the topic but carries no sentiment
        n1, n2 = _pick(rng, TOPICS[topic]), _pick(rng, TOPICS[topic])
        filler = _pick(rng, _NEUTRAL).format(n1=n1, n2=n2, subj=_pick(rng, _SUBJECTS))
        sentences.insert(int(rng.integers(len(sentences) + 1)), filler)
    return Document(" ".join(sentences), topic, polarity, "review")


def dialogue(rng: np.random.Generator, topic: str | None = None, forbidden: bool | None = None) -> Document:
    topic = topic or _pick(rng, tuple(TOPICS))
    forbidden = bool(rng.random() < 0.4) if forbidden is None else forbidden
    noun = _pick(rng, TOPICS[topic])
    verb = _pick(rng, _FORBIDDEN_VERBS if forbidden else _TASK_VERBS)
    # The style follows the request, with a little noise (assistants are not perfectly consistent).
    refuse = (rng.random() < 0.95) if forbidden else (rng.random() < 0.03)
    if refuse:
        answer = _pick(rng, _REFUSE)
    else:
        answer = _pick(rng, _COMPLY).format(s1=_pick(rng, _STEPS), s2=_pick(rng, _STEPS),
                                            n1=noun, n2=_pick(rng, TOPICS[topic]))
    text = f"user : please {verb} the {noun} . assistant : {answer}"
    return Document(text, topic, 0, "refuse" if refuse else "comply", forbidden)


def sample_documents(n: int, seed: int = 0, kind: Kind = "mixed", *, polarity: int | None = None,
                     topic: str | None = None, forbidden: bool | None = None) -> list[Document]:
    """``n`` labelled documents. ``kind="mixed"``: 70% reviews, 30% dialogues. Fixing ``polarity``
    (reviews) or ``forbidden`` (dialogues) gives one class for probing and steering."""
    if n < 0:
        raise DataError(f"n must be >= 0, got {n}")
    if topic is not None and topic not in TOPICS:
        raise DataError(f"unknown topic {topic!r}", hint=f"topics: {', '.join(TOPICS)}")
    rng = np.random.default_rng(seed)
    return [_document(rng, kind, topic, polarity, forbidden) for _ in range(n)]


def _document(rng: np.random.Generator, kind: Kind, topic: str | None = None, polarity: int | None = None,
              forbidden: bool | None = None) -> Document:
    is_review = kind == "review" or (kind == "mixed" and rng.random() < 0.7)
    return review(rng, topic, polarity) if is_review else dialogue(rng, topic, forbidden)


def polarity_prompts(n: int, seed: int = 0) -> list[str]:
    """Document openings that stop right before the first polarity word ("the soup was")."""
    rng = np.random.default_rng(seed)
    return [f"the {_pick(rng, TOPICS[_pick(rng, tuple(TOPICS))])} was" for _ in range(n)]


def request_prompts(n: int, seed: int = 0, forbidden: bool = False) -> list[str]:
    """Dialogue openings that stop right before the assistant's first word ("sure" or "sorry")."""
    rng = np.random.default_rng(seed)
    verbs = _FORBIDDEN_VERBS if forbidden else _TASK_VERBS
    return [f"user : please {_pick(rng, verbs)} the {_pick(rng, TOPICS[_pick(rng, tuple(TOPICS))])} . assistant :"
            for _ in range(n)]


def encode_batch(texts: Sequence[str], pad_to: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (BOS-prefixed, right-padded with <pad>) and the index of each text's last token."""
    tok = tokenizer()
    rows = [tok.encode(t) for t in texts]
    width = max(len(r) for r in rows) if pad_to is None else pad_to
    if any(len(r) > width for r in rows):
        raise DataError(f"a text is longer than pad_to={pad_to} tokens")
    ids = np.full((len(rows), width), tok.token_id(PAD), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return ids, np.array([len(r) - 1 for r in rows], dtype=np.int64)


# ------------------------------------------------------------------------------------- streams
def builtin_token_ids(n_seq: int, seq_len: int, seed: int = 0, vocab_size: int | None = None,
                      kind: Kind = "mixed") -> np.ndarray:
    """``[n_seq, seq_len]`` int64 token ids: documents packed back to back, separated by ``<eos>``.

    Each row starts with ``<bos>``. ``vocab_size`` is the consuming model's vocabulary: ids of the
    built-in vocabulary that do not fit are folded into ``[4, vocab_size)`` (the structure of the
    text is kept, the words merge), so any model with at least 5 token ids can read the corpus.
    """
    if n_seq <= 0 or seq_len <= 1:
        raise DataError(f"need n_seq >= 1 and seq_len >= 2, got n_seq={n_seq}, seq_len={seq_len}")
    tok = tokenizer()
    if vocab_size is not None and vocab_size <= len(SPECIALS):
        raise DataError(f"vocab_size={vocab_size} is too small for the built-in corpus (need > {len(SPECIALS)})")
    rng = np.random.default_rng(seed)
    out = np.empty((n_seq, seq_len), dtype=np.int64)
    eos = tok.token_id(EOS)
    for row in range(n_seq):
        ids: list[int] = [tok.token_id(BOS)]
        while len(ids) < seq_len:
            doc = _document(rng, kind)
            ids.extend([*tok.encode(doc.text, bos=False), eos])
        out[row] = ids[:seq_len]
    if vocab_size is not None and vocab_size < tok.vocab_size:
        n = len(SPECIALS)
        out = np.where(out >= vocab_size, n + (out - n) % (vocab_size - n), out)
    return out
