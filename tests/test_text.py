"""The tokenizer, vocabulary and GloVe reader against the specification's own code (butd.reference);
a GloVe file with a byte-order mark."""
import gzip
import json

import numpy as np
import pytest

from butd.reference.spec import Dictionary, pad_questions
from butd.text import GloveFormatError, Vocabulary, read_glove, split_batch

from helpers import BOM, REAL_GLOVE, REAL_QUESTIONS, spec_glove


def real_questions():
    with open(REAL_QUESTIONS) as f:
        return [ex["question"] for ex in json.load(f).values()]


def spec_dictionary(questions):
    d = Dictionary()
    for q in questions:
        d.tokenize(q, add_word=True)
    return d


def synthetic_sentences(seed=0, n=400):
    """Sentences built to hit every rule: case, punctuation, 's (also after removed dots),
    apostrophes, odd whitespace (tabs, \\r, newlines, unicode spaces), Greek final sigma,
    empty and over-long sentences."""
    rng = np.random.default_rng(seed)
    pieces = ["What", "color", "is", "the", "MAN'S", "shirt", "?", ",", ".", "'s", "'", "s", "'.s",
              "dog's", "Dogs'", " ", "  ", "\t", "\r\n", "\n", "\u00a0", "\u2028", "ΟΔΟΣ", "Σ", "İstanbul",
              "left,right", "e.g.", "a?b", "x" * 30, "'S", "cat"]
    out = ["", " ", "?", "...", "one " * 45, "one " * 40, "one " * 39, "Is it's?"]
    for _ in range(n):
        k = int(rng.integers(0, 60))
        out.append("".join(pieces[i] for i in rng.integers(len(pieces), size=k)))
    return out


def test_vocabulary_and_tokens_equal_spec_on_real_questions():
    questions = real_questions()
    spec = spec_dictionary(questions)
    ours = Vocabulary.build(questions)
    assert ours.idx2word == spec.idx2word
    assert ours.padding_idx == spec.padding_idx == ours.ntoken
    np.testing.assert_array_equal(ours.encode(questions), pad_questions(spec, questions))
    assert [ours.tokenize(q) for q in questions] == [spec.tokenize(q, False) for q in questions]


def test_unknown_words_map_to_padding_like_spec():
    questions = real_questions()
    spec = spec_dictionary(questions[:40])        # a vocabulary that lacks many words
    ours = Vocabulary.build(questions[:40])
    encoded = ours.encode(questions)
    np.testing.assert_array_equal(encoded, pad_questions(spec, questions))
    assert (encoded[40:] == ours.padding_idx).any()


@pytest.mark.parametrize("max_length", [40, 5, 1])
def test_synthetic_sentences_equal_spec(max_length):
    sentences = synthetic_sentences()
    spec = spec_dictionary(sentences[::2])
    ours = Vocabulary.build(sentences[::2])
    assert ours.idx2word == spec.idx2word
    np.testing.assert_array_equal(ours.encode(sentences, max_length), pad_questions(spec, sentences, max_length))


def spec_words(sentence):
    d = Dictionary()
    return [d.idx2word[i] for i in d.tokenize(sentence, add_word=True)]


def test_batch_split_equals_one_at_a_time_with_and_without_newlines():
    with_newlines = synthetic_sentences(seed=1)
    without = [s.replace("\n", " ") for s in with_newlines]   # the one-string fast path
    for sentences in (with_newlines, without):
        words, lengths = split_batch(sentences)
        per = [spec_words(s) for s in sentences]
        assert lengths.tolist() == [len(p) for p in per]
        assert words == [w for p in per for w in p]
    assert split_batch([])[1].shape == (0,)


def write_glove(path, rows, newline="\n"):
    text = newline.join(w + " " + " ".join(v) for w, v in rows) + newline
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wt", newline="") as f:
        f.write(text)


@pytest.mark.parametrize("name", ["g.txt", "g.txt.gz"])
@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_glove_rows_equal_file_vectors_zero_when_missing(tmp_path, name, newline):
    rng = np.random.default_rng(3)
    words = ["the", "cat", "dog's", "'s", "color", "zebra", "der\u00fc"]
    rows = [(w, [f"{x:.6g}" for x in rng.normal(0, 1, 8)]) for w in words + ["unused", "cat"]]
    write_glove(str(tmp_path / name), rows, newline)
    vocab = ["cat", "missing", "the", "'s", "der\u00fc", "also-missing", "dog's"]
    word2idx = {w: i for i, w in enumerate(vocab)}
    weights, found = read_glove(str(tmp_path / name), word2idx, 8)
    spec = spec_glove([w + " " + " ".join(v) for w, v in rows], Dictionary(word2idx, vocab), dim=8)
    np.testing.assert_array_equal(weights, spec)            # the later 'cat' wins, as in the spec
    assert weights.dtype == np.float32
    assert found.tolist() == [True, False, True, True, True, False, True]
    assert not weights[[1, 5]].any()


def test_glove_real_sample_gz_equals_spec():
    questions = real_questions()
    spec = spec_dictionary(questions)
    weights, found = read_glove(REAL_GLOVE, dict(spec.word2idx), 300)
    with gzip.open(REAL_GLOVE, "rt") as f:
        expected = spec_glove(f.readlines(), spec)
    np.testing.assert_array_equal(weights, expected)
    assert 0 < found.sum() < len(found)                    # frequent words only; the rest zero rows
    assert not weights[~found].any()


def test_glove_dimension_mismatch_names_file_and_line(tmp_path):
    path = str(tmp_path / "g.txt")
    write_glove(path, [("the", ["0.1"] * 4), ("cat", ["0.2"] * 4)])
    with pytest.raises(GloveFormatError, match=r"g\.txt, line 1: 4 values .* expected 300"):
        read_glove(path, {"cat": 0}, 300)
    write_glove(path, [("the", ["0.1"] * 4), ("x", ["1"] * 4), ("cat", ["0.2"] * 3)])
    with pytest.raises(GloveFormatError, match=r"line 3: 3 values after the word 'cat', expected 4"):
        read_glove(path, {"cat": 0}, 4)


def test_glove_skips_lines_whose_word_holds_spaces(tmp_path):
    # The 840B file lists e.g. "at name@domain.com" followed by the vector.
    path = str(tmp_path / "g.txt")
    write_glove(path, [("the", ["0.5"] * 3), ("at name@domain.com", ["9"] * 3), ("at", ["1"] * 3)])
    weights, found = read_glove(path, {"at": 0}, 3)
    assert weights.tolist() == [[1.0, 1.0, 1.0]] and found.all()


def test_glove_with_a_bom_gives_the_first_word_its_vector(tmp_path):
    text = b"the 0.5 -1.25 2\nis 1 1 1\n"
    for name, opener in (("g.txt", open), ("g.txt.gz", gzip.open)):
        with opener(tmp_path / name, "wb") as f:
            f.write(BOM + text)
        weights, found = read_glove(str(tmp_path / name), {"the": 0, "is": 1}, 3)
        assert found.all() and weights[0].tolist() == [0.5, -1.25, 2.0], name
