"""Question text: the specification's tokenizer and the word vocabulary.

The rules are the specification's (``Dictionary.tokenize`` and ``GQAFeatureDataset.tokenize``):
lower-case; drop ``,`` ``.`` ``?``; split ``'s`` off into its own word; split on whitespace; a word
outside the vocabulary maps to the padding index, which equals the vocabulary size; questions are
cut to their first ``max_length`` words and padded in front (the GRU reads left to right).

What differs is speed: a million questions are normalised as one string, split once and looked up
with one ``map`` over a dict, and the padding is a single numpy scatter.
"""
from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Iterable, Sequence

import numpy as np

MAX_LENGTH = 40


def normalize(sentence: str) -> str:
    """The specification's text normalisation, before the whitespace split."""
    return sentence.lower().replace(",", "").replace(".", "").replace("?", "").replace("'s", " 's")


@contextlib.contextmanager
def paused_gc():
    """No garbage collection inside: building millions of lists or dicts that all stay alive
    makes the cyclic collector traverse them again and again (10x the cost of the work itself),
    and none of them can be part of a cycle."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def split_batch(sentences: Sequence[str]) -> tuple[list, np.ndarray]:
    """Words of every sentence, concatenated, and the word count of each sentence.

    Equal to ``[normalize(s).split() for s in sentences]`` flattened. The sentences are joined by
    newlines and normalised in one call: no rule can act across a newline (lower-casing, including
    Greek final sigma, treats it as a word boundary), so this is exact whenever no sentence holds a
    newline of its own; when one does, it falls back to one sentence at a time.
    """
    sentences = list(sentences)
    if not sentences:
        return [], np.zeros(0, dtype=np.int64)
    text = "\n".join(sentences)
    with paused_gc():
        if text.count("\n") == len(sentences) - 1:
            lists = [line.split() for line in normalize(text).split("\n")]
        else:
            lists = [normalize(s).split() for s in sentences]
        lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
        return list(chain.from_iterable(lists)), lengths


def pad_front(ids: np.ndarray, lengths: np.ndarray, max_length: int, pad: int,
              dtype=np.int64) -> np.ndarray:
    """[N, max_length] ``dtype``: each sentence's first ``max_length`` ids, front-padded with ``pad``.

    ``ids`` holds all sentences' ids back to back, ``lengths`` each sentence's count.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    ids = np.asarray(ids)
    kept = np.minimum(lengths, max_length)
    if len(kept) and kept.sum() < len(ids):
        # Some sentence is longer than max_length: keep the first max_length ids of each.
        position = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        ids = ids[position < max_length]
    # Row by row, the cells right of each sentence's padding take its ids in order, exactly the
    # order in which a boolean mask assigns them.
    words = np.arange(max_length) >= (max_length - kept)[:, None]
    out = np.full((len(lengths), max_length), pad, dtype=dtype)
    out[words] = ids
    return out


@dataclass
class Vocabulary:
    """The specification's ``Dictionary``: ``idx2word`` in first-seen order, ``word2idx`` its inverse;
    ``padding_idx == ntoken == len(idx2word)`` and unknown words map to it."""
    idx2word: list

    def __post_init__(self):
        self.word2idx = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise ValueError("vocabulary lists a word twice")

    @classmethod
    def build(cls, sentences: Iterable[str]) -> "Vocabulary":
        """Every word of ``sentences`` in order of first appearance (``tokenize(add_word=True)``)."""
        words, _ = split_batch(sentences)
        return cls(list(dict.fromkeys(words)))

    @property
    def ntoken(self) -> int:
        return len(self.idx2word)

    @property
    def padding_idx(self) -> int:
        return len(self.idx2word)

    def __len__(self) -> int:
        return len(self.idx2word)

    def lookup(self, words: Sequence[str]) -> np.ndarray:
        """int64 ids of ``words``, the padding index for unknown ones."""
        return np.fromiter(map(self.word2idx.get, words, repeat(self.padding_idx)),
                           dtype=np.int64, count=len(words))

    def tokenize(self, sentence: str) -> list:
        """One sentence's ids, unpadded (the specification's ``tokenize(sentence, add_word=False)``)."""
        return self.lookup(normalize(sentence).split()).tolist()

    def encode(self, sentences: Sequence[str], max_length: int = MAX_LENGTH) -> np.ndarray:
        """[N, max_length] int64 front-padded ids of many sentences at once."""
        words, lengths = split_batch(sentences)
        return pad_front(self.lookup(words), lengths, max_length, self.padding_idx)
