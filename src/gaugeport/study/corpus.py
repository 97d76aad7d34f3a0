"""The built-in corpus lives in :mod:`gaugeport.estimate.corpus` (the estimate verbs read it as
``--data builtin``); the study imports it from here as before."""

from gaugeport.estimate.corpus import (  # noqa: F401 (re-exported)
    BOS,
    COMPLY_WORD,
    EOS,
    NEGATIVE_WORDS,
    PAD,
    POSITIVE_WORDS,
    REFUSE_WORD,
    SPECIALS,
    TOPICS,
    UNK,
    Document,
    Kind,
    Style,
    WordTokenizer,
    builtin_token_ids,
    dialogue,
    encode_batch,
    polarity_prompts,
    request_prompts,
    review,
    sample_documents,
    tokenizer,
)
