"""The question cache: answer vocabulary, word vocabulary, GloVe matrix, per-split arrays and shards.

This replaces the specification's steps 1, 2 and 4 (``gqa_create_dictionary_glove``,
``gqa_create_answers``, ``GQAFeatureDataset.tokenize``) with a cache that is built once per task:

    <out>/vocab.json          idx2word (padding index = its length)
    <out>/answers.json        label2ans and ans2label, and the spelling each label is written in
                              (``spellings``: the task's ``answer_spellings``)
    <out>/glove.npy           float32 [ntoken, emb_dim], zero rows for words GloVe lacks
    <out>/<split>.npz         the split as arrays (``QuestionArrays``): the loader's fast path, one
                              np.load at training start
    <out>/<split>-NNNNNN.tar  the same questions as WebDataset shards, for streaming across nodes
    <out>/manifest.json       input fingerprint, settings, counts, vocabulary identity; written last

Each split's questions are in the task's order and carry the rows of their images in the split's
feature store, so the loader needs no id lookup. The build writes into ``<out>.partial`` and
renames it into place at the end: a cache directory that exists is complete. Build with
``python converters/questions_to_shards.py [--dataset gqa|...]``.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from itertools import compress, repeat
from typing import Optional

import numpy as np

from butd.build_lock import build_lock
from butd.features import schema
from butd.features.convert.lifecycle import require_complete
from butd.questions import shards
from butd.questions.arrays import QuestionArrays
from butd.questions.fingerprint import FORMAT_VERSION, Inputs, changes, fingerprint
from butd.tasks import get_task
from butd.tasks.json_stream import QuestionFileError
from butd.text import Vocabulary, check_glove_dim, pad_front, read_glove, split_batch

MANIFEST = "manifest.json"
BUILD_COMMAND = "python converters/questions_to_shards.py"
# More than this share of a split's questions without an image row is a mismatch of ids or files,
# not a few missing images: --drop-missing would train on a remnant.
MAX_MISSING_SHARE = 0.5
# Real GloVe (6B or 840B) covers well over 95% of the question tokens of GQA, VQA v2 and NLVR2 (the
# words it lacks are typos and rare names): less is the wrong file, or a truncated one.
MIN_GLOVE_TOKEN_COVERAGE = 0.9


class StaleCacheError(RuntimeError):
    """A question cache built from other inputs or settings than the ones given."""


# ----------------------------------------------------------------------------------------------
# The manifest: what a cache was built from and what it holds.

def read_manifest(out_dir: str) -> dict:
    path = os.path.join(out_dir, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no question cache here; make one with `{BUILD_COMMAND}` "
                                f"(--out {out_dir})") from None
    if not manifest.get("complete") or manifest.get("format_version") != FORMAT_VERSION:
        raise StaleCacheError(f"{out_dir}: question cache is incomplete or of another format; "
                              f"rebuild it with `{BUILD_COMMAND} --force`")
    return manifest


def check_inputs(out_dir: str, inputs: Inputs) -> dict:
    """The cache's manifest, after checking that it was built from exactly ``inputs``."""
    manifest = read_manifest(out_dir)
    now = inputs.describe()
    if manifest["fingerprint"] != fingerprint(now):
        changed = ", ".join(changes(manifest["inputs"], now))
        raise StaleCacheError(f"{out_dir}: question cache was built from other inputs or settings (changed: "
                              f"{changed}); rebuild it with `{BUILD_COMMAND}`{_flags_hint(manifest['inputs'], now)}")
    return manifest


def _flags_hint(old: dict, new: dict) -> str:
    if old.get("settings", {}).get("drop_missing") and not new.get("settings", {}).get("drop_missing"):
        return " (it was built with --drop_missing: pass --drop_missing to use it as it is)"
    return ""


def check_stores(out_dir: str, cache_dir: str) -> None:
    """Raise ``StaleCacheError`` unless the feature stores in ``cache_dir`` are the ones the question
    cache in ``out_dir`` was built against: its image rows index those stores, so another store
    (re-converted, or another cache directory) would pair questions with the wrong images."""
    for name, built in read_manifest(out_dir)["inputs"]["stores"].items():
        path = os.path.join(cache_dir, f"{name}.zarr")
        now = require_complete(path).fingerprint   # an interrupted conversion: how to resume it
        if now != built["fingerprint"]:
            raise StaleCacheError(
                f"{out_dir}: question cache was built against the feature store {built['path']} (fingerprint "
                f"{built['fingerprint'][:12]}), but {path} is another (fingerprint {now[:12]}), so its image "
                f"rows may point at the wrong images; rebuild it with `{BUILD_COMMAND}`")


def vocabulary_identity(idx2word: list, label2ans: list) -> dict:
    """What a model's embedding rows and output units mean: sizes and a fingerprint of the word and
    answer lists, in order. A checkpoint carries it; a cache that differs would silently read
    another word or answer from the same row."""
    return {"ntoken": len(idx2word), "num_answers": len(label2ans),
            "words": fingerprint(idx2word)[:16], "answers": fingerprint(label2ans)[:16]}


def check_vocabulary(trained: Optional[dict], out_dir: str, what: str = "the checkpoint") -> None:
    """Raise ``StaleCacheError`` unless the cache in ``out_dir`` has the word and answer lists
    ``trained`` describes (a ``vocabulary_identity``), naming what changed."""
    now = read_manifest(out_dir)["summary"]["vocabulary"]
    if trained is None or trained == now:
        return
    changed = []
    for name, size in (("words", "ntoken"), ("answers", "num_answers")):
        if trained.get(name) != now.get(name) or trained.get(size) != now.get(size):
            how = f"{trained.get(size)} -> {now.get(size)}" if trained.get(size) != now.get(size) \
                else f"the same {now.get(size)}, in another order or other ones"
            changed.append(f"{name} ({how})")
    raise StaleCacheError(f"{out_dir}: the question cache's {' and '.join(changed)} differ from those {what} "
                          "was trained with, so its embedding rows and answer labels would mean other words "
                          "and answers; use the question cache of the training run (rebuild it from the "
                          "same question files), or train again")


# ----------------------------------------------------------------------------------------------
# Building.

def build(inputs: Inputs, out_dir: str, force: bool = False, workers: Optional[int] = None,
          progress: bool = True) -> dict:
    """Build the question cache of ``inputs`` in ``out_dir``; a no-op when it is already built from them.

    Returns a summary: counts and dropped questions per split, vocabulary and answer sizes, GloVe
    coverage, seconds taken and ``skipped`` (True when the cache was already up to date).
    """
    say = print if progress else (lambda *a, **k: None)
    description = inputs.describe()
    def up_to_date() -> bool:
        old = _readable_manifest(out_dir)
        return bool(old) and not force and old["fingerprint"] == fingerprint(description)

    # one process builds a cache at a time; another waits here, then finds it up to date
    with build_lock(out_dir, usable=up_to_date):
        return _build_locked(inputs, out_dir, description, force, workers, say, progress)


def _build_locked(inputs: Inputs, out_dir: str, description: dict, force: bool, workers: Optional[int], say,
                  progress: bool) -> dict:
    """``build``'s work, under the cache's build lock."""
    old = _readable_manifest(out_dir)
    if old and not force and old["fingerprint"] == fingerprint(description):
        say(f"[*] question cache {out_dir} is up to date (fingerprint {old['fingerprint'][:12]}): nothing to do")
        return {**old["summary"], "skipped": True}
    if old and not force:
        say(f"[*] question cache {out_dir} is stale (changed: {', '.join(changes(old['inputs'], description))}); "
            "rebuilding")

    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, MANIFEST)):
        # The build replaces out_dir whole: never do that to a directory that is not a question cache.
        raise FileExistsError(f"{out_dir}: exists and is not a question cache (no {MANIFEST}); "
                              "choose another --out or empty it")
    start = time.perf_counter()
    partial = out_dir.rstrip("/\\") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        summary = _build_into(partial, inputs, workers or os.cpu_count() or 1, say, progress)
        summary.update(out=os.path.abspath(out_dir), seconds=round(time.perf_counter() - start, 2))
        _write_json(os.path.join(partial, MANIFEST),
                    {"format_version": FORMAT_VERSION, "complete": True, "task": inputs.task,
                     "fingerprint": fingerprint(description), "inputs": description, "summary": summary})
        _swap_into_place(partial, out_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    say(f"[*] question cache written to {out_dir} in {summary['seconds']:.1f} s")
    return {**summary, "skipped": False}


def _readable_manifest(out_dir: str) -> Optional[dict]:
    try:
        return read_manifest(out_dir)
    except (FileNotFoundError, StaleCacheError, ValueError):
        return None


def _swap_into_place(partial: str, out_dir: str) -> None:
    old = out_dir.rstrip("/\\") + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(out_dir):
        os.rename(out_dir, old)
    os.rename(partial, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


class _Phases:
    """Wall seconds of each build step, for the summary (where does the time go at 1M questions)."""

    def __init__(self, say):
        self.say, self.seconds, self.t0 = say, {}, None

    def __call__(self, name: str, message: str):
        self.end()
        self.say(message)
        self.name, self.t0 = name, time.perf_counter()

    def end(self) -> dict:
        if self.t0 is not None:
            self.seconds[self.name] = round(time.perf_counter() - self.t0, 2)
            self.t0 = None
        return self.seconds


def _index_dtype(ntoken: int):
    # Tokens in the narrowest integer type that holds them: half the bytes to read (and, while
    # building, to fill and sort).
    return np.int32 if ntoken < 2 ** 31 else np.int64


def _build_into(out: str, inputs: Inputs, workers: int, say, progress) -> dict:
    task = get_task(inputs.task)
    check_glove_dim(inputs.glove, inputs.emb_dim)
    phase = _Phases(say)
    phase("read", f"[*] reading {task.title} questions from {inputs.questions}")
    names = present_splits(task, inputs.questions)
    absent = [s for s in task.split_names if s not in names]
    if absent:
        say(f"[*] no question file for the optional split(s) {', '.join(absent)}: left out of the cache")
    raws = {s: task.read_split(inputs.questions, s) for s in names}
    ans2label, label2ans = task.answer_vocabulary(raws, inputs.min_answer_count)
    spellings = task.answer_spellings(raws, ans2label, label2ans)

    phase("tokenize", "[*] tokenizing, resolving image rows")
    words, lengths = split_batch([q for s in names for q in raws[s].questions])
    counts = np.cumsum([0] + [len(raws[s]) for s in names])
    in_vocab = [task.split(s).vocabulary for s in names]
    if all(in_vocab):
        vocab = Vocabulary(list(dict.fromkeys(words)))
    else:   # the words of the splits that build the vocabulary (the specification's file order)
        per_question = np.repeat(in_vocab, [len(raws[s]) for s in names])
        vocab = Vocabulary(list(dict.fromkeys(compress(words, np.repeat(per_question, lengths).tolist()))))
    ids = vocab.lookup(words)
    del words
    tokens = pad_front(ids, lengths, inputs.length, vocab.padding_idx, _index_dtype(vocab.ntoken))
    rows_by_store, arrays, dropped = {}, {}, {}
    for k, split in enumerate(names):
        store = task.split(split).store
        if store not in rows_by_store:
            path = task.store_path(inputs.cache, store)
            store_ids = schema.read_image_ids(path)
            rows_by_store[store] = (path, store_ids, rows_by_image(task, path, store_ids))
        arrays[split], dropped[split] = _split_arrays(task, raws[split], split, tokens[counts[k]:counts[k + 1]],
                                                      ans2label, rows_by_store[store], inputs.drop_missing)
        if dropped[split]:
            say(f"[*] {split}: dropped {dropped[split]} question(s) whose image has no feature row (--drop_missing)")
    del raws, tokens

    phase("shards", "[*] writing shards and indexes")
    small = _index_dtype(vocab.ntoken)

    def save_indexes():   # in this process while the shard writers run
        for split, a in arrays.items():
            index = a.to_npz()
            index["tokens"] = a.tokens.astype(small, copy=False)
            np.savez(os.path.join(out, f"{split}.npz"), **index)
    shard_counts = shards.write_shards(out, arrays, int(time.time()), workers, progress, meanwhile=save_indexes)

    phase("glove", f"[*] reading GloVe vectors from {inputs.glove}")
    weights, found = read_glove(inputs.glove, vocab.word2idx, inputs.emb_dim)
    np.save(os.path.join(out, "glove.npy"), weights)
    _write_json(os.path.join(out, "vocab.json"), vocab.idx2word)
    _write_json(os.path.join(out, "answers.json"), {"label2ans": label2ans, "ans2label": ans2label,
                                                    "spellings": spellings})
    token_counts = np.bincount(ids, minlength=vocab.ntoken + 1)[:vocab.ntoken]
    coverage = {"vocabulary": round(float(found.mean()) if len(found) else 0.0, 4),
                "tokens": round(float(token_counts[found].sum() / max(token_counts.sum(), 1)), 4)}
    say(f"[*] vocabulary {vocab.ntoken} words, {len(label2ans)} answers; GloVe covers "
        f"{coverage['vocabulary']:.1%} of the vocabulary and {coverage['tokens']:.1%} of question tokens")
    if coverage["tokens"] < MIN_GLOVE_TOKEN_COVERAGE:
        print(f"warning: {inputs.glove} covers only {coverage['tokens']:.1%} of the question tokens "
              f"({coverage['vocabulary']:.1%} of the {vocab.ntoken} words); real GloVe covers over "
              f"{MIN_GLOVE_TOKEN_COVERAGE:.0%} of any English question set's tokens: is --glove the right file? "
              "(words it lacks start from zero vectors)", file=sys.stderr)
    return {"task": task.name, "questions": {s: len(arrays[s]) for s in names}, "absent": absent, "dropped": dropped,
            "shards": shard_counts, "shard_samples": shards.SHARD_SAMPLES, "ntoken": vocab.ntoken,
            "num_answers": len(label2ans),
            "max_length": inputs.length, "vocabulary": vocabulary_identity(vocab.idx2word, label2ans),
            "glove_coverage": coverage, "phase_seconds": phase.end()}


def rows_by_image(task, path: str, store_ids: np.ndarray) -> dict:
    """``{task.image_key(image id): row}`` of a store's images. A store holding one image under two
    spellings of its id that the task treats as one (VQA v2's ``COCO_train2014_000000458752`` and
    ``458752``) is refused, naming both, the store and the files it was made from: a dict would
    silently keep one of them and bind every question of that image to it."""
    row_of, ids = {}, store_ids.tolist()
    for r, image_id in enumerate(ids):
        first = row_of.setdefault(task.image_key(image_id), r)
        if first != r:
            source = schema.read_attrs(path).source
            made_from = " + ".join(str(f.get("path")) for f in source.get("files", [source]))
            raise ValueError(f"{path}: holds image {ids[first]!r} (row {first}) and {image_id!r} (row {r}): one "
                             f"{task.name} image under two spellings of its id, made from {made_from}; questions could "
                             "bind to either. Convert the features again with `python converters/tsv_to_zarr.py "
                             f"--dataset {task.name}`, which refuses them")
    return row_of


def present_splits(task, questions_dir: str) -> list:
    """The task's splits in order, less the optional ones whose question file is absent."""
    return [s for s in task.split_names
            if not (task.split(s).optional and not task.question_files(questions_dir, s))]


def _split_arrays(task, raw, split, tokens, ans2label, store, drop_missing) -> tuple[QuestionArrays, int]:
    targets = task.targets(raw, ans2label)
    rows = _image_rows(task, raw, split, store, drop_missing)
    arrays = QuestionArrays(np.array(raw.question_ids, dtype=str),
                            np.stack([np.array(ids, dtype=str) for ids in raw.image_ids], axis=1)
                            if len(raw) else np.zeros((0, task.images_per_question), dtype=str),
                            rows, tokens, targets, {k: np.array(v, dtype=str) for k, v in raw.types.items()},
                            gold_answers(raw.answers))
    kept = np.flatnonzero((rows >= 0).all(axis=1))
    order = kept[task.question_order(arrays.question_ids[kept])]
    return arrays.take(order), int(len(raw) - len(kept))


def gold_answers(answers: list) -> Optional[np.ndarray]:
    """The answers as a file writes them, UTF-8 bytes [N] (b"" where None), or None where some
    answer is not a string (VQA v2's human answers): what an exact-match scorer compares."""
    if not all(a is None or isinstance(a, str) for a in answers):
        return None
    strings = ["" if a is None else a for a in answers]
    try:
        return np.array(strings, dtype="S")          # ASCII, the usual case: numpy encodes it at once
    except UnicodeEncodeError:
        return np.char.encode(np.array(strings, dtype=str), "utf-8")


def _image_rows(task, raw, split: str, store: tuple, drop_missing: bool) -> np.ndarray:
    """int64 [N, images per question], -1 where the store has no row for the image."""
    path, store_ids, row_of = store
    n = len(raw)
    rows = np.stack([np.fromiter(map(row_of.get, map(task.image_key, ids), repeat(-1)), dtype=np.int64, count=n)
                     for ids in raw.image_ids], axis=1) if n else np.zeros((0, task.images_per_question), np.int64)
    missing = np.flatnonzero((rows < 0).any(axis=1))
    if not len(missing):
        return rows
    # one question per image: five questions about one image would show one id five times
    first_of_image = list({_images_of(raw, i): i for i in reversed(missing[:1000].tolist())}.values())[::-1]
    examples = ", ".join(f"{raw.question_ids[i]} (image {_images_of(raw, i)})" for i in first_of_image[:5])
    if len(missing) > MAX_MISSING_SHARE * n:
        theirs = ", ".join(store_ids[:5].tolist())
        raise QuestionFileError(
            f"{raw.path}: {len(missing)} of {n} {split} question(s) ask about images that have no row in the "
            f"feature store {path}: the questions name images like {examples}, the store holds images like "
            f"{theirs}. Are these the features of this split, and do the ids match? (--drop_missing never "
            "drops more than half of a split)")
    if not drop_missing:
        raise QuestionFileError(
            f"{raw.path}: {len(missing)} {split} question(s) ask about images that have no row in the "
            f"feature store {path}, e.g. {examples}; convert the right features, or pass --drop_missing "
            "to leave these questions out")
    return rows


def _images_of(raw, i: int) -> str:
    return " + ".join(ids[i] for ids in raw.image_ids)


# ----------------------------------------------------------------------------------------------
# Reading.

def _open(out_dir: str, inputs: Optional[Inputs]) -> dict:
    return check_inputs(out_dir, inputs) if inputs is not None else read_manifest(out_dir)


def load_split(questions_dir: str, split: str, inputs: Optional[Inputs] = None) -> QuestionArrays:
    """A split's questions as arrays, from its compact index (one ``np.load``); tokens as int64.

    With ``inputs``, first checks that the cache was built from them (StaleCacheError otherwise).
    """
    manifest = _open(questions_dir, inputs)
    if split in manifest["summary"].get("absent", []):
        raise FileNotFoundError(f"{questions_dir}: the {split} split's question file was absent when this cache "
                                f"was built; put it in the questions directory and rebuild with `{BUILD_COMMAND}`")
    if split not in manifest["summary"]["questions"]:
        raise ValueError(f"unknown split {split!r}; the {manifest['task']} question cache holds "
                         f"{', '.join(manifest['summary']['questions'])}")
    with np.load(os.path.join(questions_dir, f"{split}.npz"), allow_pickle=False) as index:
        loaded = {name: index[name] for name in index.files}
    loaded["tokens"] = loaded["tokens"].astype(np.int64)
    return QuestionArrays.from_npz(loaded)


def load_vocab(questions_dir: str, inputs: Optional[Inputs] = None) -> Vocabulary:
    """The word vocabulary (``idx2word``, ``word2idx``, ``ntoken``, ``padding_idx``)."""
    _open(questions_dir, inputs)
    with open(os.path.join(questions_dir, "vocab.json")) as f:
        return Vocabulary(json.load(f))


def load_answers(questions_dir: str, inputs: Optional[Inputs] = None) -> tuple[dict, list]:
    """(ans2label, label2ans) as the specification's ``gqa_create_answers`` returns them."""
    _open(questions_dir, inputs)
    with open(os.path.join(questions_dir, "answers.json")) as f:
        answers = json.load(f)
    return answers["ans2label"], answers["label2ans"]


def load_spellings(questions_dir: str, inputs: Optional[Inputs] = None) -> list:
    """How each answer label is written in predictions (``Task.answer_spellings``, over the splits
    with answers), by label."""
    _open(questions_dir, inputs)
    with open(os.path.join(questions_dir, "answers.json")) as f:
        return json.load(f)["spellings"]


def load_glove(questions_dir: str, inputs: Optional[Inputs] = None) -> np.ndarray:
    """The GloVe matrix, float32 [ntoken, emb_dim]."""
    _open(questions_dir, inputs)
    return np.load(os.path.join(questions_dir, "glove.npy"), allow_pickle=False)


def shard_paths(questions_dir: str, split: str) -> list:
    count = read_manifest(questions_dir)["summary"]["shards"][split]
    return [shards.shard_path(questions_dir, split, k) for k in range(count)]


def stream_split(questions_dir: str, split: str, shard_shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False):
    """The split's shards as a WebDataset, an equal share for each DDP rank and DataLoader worker
    (see ``butd.questions.stream.stream_shards``)."""
    summary = read_manifest(questions_dir)["summary"]
    # Caches from before "shard_samples" was recorded were all written with 2000 per shard.
    counts = shards.shard_counts(summary["questions"][split], summary.get("shard_samples", 2000))
    from butd.questions.stream import stream_shards  # webdataset imports torch: only when streaming
    return stream_shards(shard_paths(questions_dir, split), counts, shard_shuffle, seed, drop_last)
