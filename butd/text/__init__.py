"""Question text: ``tokenize`` (the specification's tokenizer, padding and vocabulary) and ``glove``
(the embedding matrix of a vocabulary)."""
from butd.text.glove import GloveFormatError, check_glove_dim, read_glove
from butd.text.tokenize import MAX_LENGTH, Vocabulary, normalize, pad_front, split_batch

__all__ = ["GloveFormatError", "check_glove_dim", "read_glove", "MAX_LENGTH", "Vocabulary", "normalize",
           "pad_front", "split_batch"]
