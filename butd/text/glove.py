"""The GloVe matrix of a vocabulary, streamed line by line (the 840B file is 5.6 GB) instead of the
specification's ``readlines()``; only the lines of vocabulary words are parsed. A leading UTF-8
byte-order mark (some editors write one) is not part of the first word."""
from __future__ import annotations

import gzip
from itertools import islice
from typing import Optional

import numpy as np

from butd.cli import excerpt

BOM = b"\xef\xbb\xbf"


class GloveFormatError(ValueError):
    """A GloVe file whose vectors do not have the expected dimension."""


def _open_lines(path: str):
    # Binary lines: no decoding of the millions of lines whose word we do not need.
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def check_glove_dim(path: str, emb_dim: int) -> None:
    """Fail fast, before any long work, when the file's first vector is not ``emb_dim`` long."""
    read_glove(path, {}, emb_dim, max_lines=1)


def read_glove(path: str, word2idx: dict, emb_dim: int,
               max_lines: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """(weights float32 [len(word2idx), emb_dim], found bool [len(word2idx)]) from a GloVe file.

    Rows of words the file lacks stay zero, as in the specification; when a word is listed twice
    the later vector wins (the specification's loop does the same). The first line's dimension and
    that of every line used are checked against ``emb_dim``. Lines whose word holds spaces (a few
    in the 840B file) have more than ``emb_dim`` values after their first space; their word cannot
    be a vocabulary word, which never holds whitespace, so they are skipped.
    """
    by_bytes = {w.encode("utf-8"): i for w, i in word2idx.items()}
    weights = np.zeros((len(word2idx), emb_dim), dtype=np.float32)
    found = np.zeros(len(word2idx), dtype=bool)
    with _open_lines(path) as f:
        for lineno, line in enumerate(islice(f, max_lines), 1):
            if lineno == 1 and line.startswith(BOM):
                line = line[len(BOM):]     # else the first word ("the") would never be found
            word, _, rest = line.partition(b" ")
            index = by_bytes.get(word)
            if index is None and lineno > 1:
                continue
            values = rest.split()
            if len(values) < emb_dim or (lineno == 1 and len(values) != emb_dim):
                raise GloveFormatError(
                    f"{path}, line {lineno}: {len(values)} values after the word {excerpt(word)}, "
                    f"expected {emb_dim} (--emb_dim); is this the right GloVe file?")
            if index is None or len(values) > emb_dim:
                continue
            # float() then a float32 row: the same rounding as the specification's list(map(float, ...)).
            weights[index] = np.array(list(map(float, values)), dtype=np.float64)
            found[index] = True
    return weights, found
