"""The specification's own question preprocessing, verbatim: the independent reference.

Tests compare ``butd.text`` against this code, and ``benchmarks/questions_speed.py`` times it as
its baseline. Nothing on the training path imports it.
"""
import numpy as np


class Dictionary(object):
    """``gqa.py``'s Dictionary, verbatim."""

    def __init__(self, word2idx=None, idx2word=None):
        if word2idx is None:
            word2idx = {}
        if idx2word is None:
            idx2word = []
        self.word2idx, self.idx2word = word2idx, idx2word

    @property
    def ntoken(self):
        return len(self.word2idx)

    @property
    def padding_idx(self):
        return len(self.word2idx)

    def tokenize(self, sentence, add_word):
        sentence = sentence.lower().replace(',', '').replace('.', '').replace('?', '').replace('\'s', ' \'s')
        words, tokens = sentence.split(), []

        if add_word:
            for w in words:
                tokens.append(self.add_word(w))
        else:
            for w in words:
                tokens.append(self.word2idx.get(w, self.padding_idx))

        return tokens

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)


def pad_tokens(dictionary, question, max_length=40):
    """``GQAFeatureDataset.tokenize``'s loop body, verbatim, for one question."""
    tokens = dictionary.tokenize(question, False)
    tokens = tokens[:max_length]
    if len(tokens) < max_length:
        padding = [dictionary.padding_idx] * (max_length - len(tokens))
        tokens = padding + tokens
    assert len(tokens) == max_length, "Tokenized & Padded Question != Max Length!"
    return tokens


def pad_questions(dictionary, questions, max_length=40):
    """``pad_tokens`` over many questions, as an int64 array [N, max_length]."""
    out = [pad_tokens(dictionary, q, max_length) for q in questions]
    return np.array(out, dtype=np.int64).reshape(len(out), max_length)
