"""The question cache: ``fingerprint`` (what a cache was built from), ``arrays`` (a split as arrays),
``shards`` (WebDataset shards; ``stream`` reads them) and ``cache`` (build and read). Task-agnostic: the task
(``butd.tasks``) reads its files (through ``butd.tasks.json_stream``) and makes its targets."""
from butd.questions.arrays import QuestionArrays
from butd.questions.cache import (
    BUILD_COMMAND,
    StaleCacheError,
    build,
    check_inputs,
    check_stores,
    check_vocabulary,
    load_answers,
    load_glove,
    load_spellings,
    load_split,
    load_vocab,
    read_manifest,
    shard_paths,
    stream_split,
    vocabulary_identity,
)
from butd.questions.fingerprint import Inputs
from butd.tasks.json_stream import QuestionFileError

__all__ = ["QuestionArrays", "BUILD_COMMAND", "StaleCacheError", "build", "check_inputs", "check_stores", "check_vocabulary",
           "load_answers", "load_glove", "load_spellings", "load_split", "load_vocab", "read_manifest", "shard_paths",
           "stream_split", "vocabulary_identity", "Inputs", "QuestionFileError"]
