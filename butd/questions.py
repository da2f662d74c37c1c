"""Question cache: answer vocabulary, word vocabulary, GloVe matrix and tokenized question shards.

This replaces the specification's steps 1, 2 and 4 (``gqa_create_dictionary_glove``,
``gqa_create_answers``, ``GQAFeatureDataset.tokenize``) with a cache that is built once:

    <out>/vocab.json          idx2word (padding index = its length)
    <out>/answers.json        label2ans (first-seen spelling) and ans2label (lower-cased keys)
    <out>/glove.npy           float32 [ntoken, emb_dim], zero rows for words GloVe lacks
    <out>/<split>.npz         the split as arrays (ids, image rows, tokens, labels, types): the loader's
                              fast path, one np.load at training start
    <out>/<split>-NNNNNN.tar  the same questions as WebDataset shards, for streaming across nodes
    <out>/manifest.json       input fingerprint, settings, counts; written last

Each split's questions are in the specification's order (``sorted`` question ids) and carry the
row of their image in the split's feature store (``butd.schema.store_path``), so the loader needs
no id lookup. The build writes into ``<out>.partial`` and renames it into place at the end: a cache
directory that exists is complete. Build with ``python converters/questions_to_shards.py``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
from dataclasses import dataclass
from itertools import repeat
from typing import Optional

import numpy as np

from butd import schema
from butd.text import MAX_LENGTH, Vocabulary, check_glove_dim, pad_front, read_glove, split_batch

FORMAT_VERSION = 1
# The specification's file order: the vocabulary is built over all four, answers over the first three.
SPLITS = ("train", "val", "testdev", "test")
ANSWER_SPLITS = ("train", "val", "testdev")
QUESTION_FILE = "{split}_balanced_questions.json"
MANIFEST = "manifest.json"
BUILD_COMMAND = "python converters/questions_to_shards.py"
# Questions per shard. A sample is one tar member of ~1 KB (512-byte header + padded JSON), so a
# shard is ~2 MB: big enough for sequential reads, while train (943k questions) still makes ~470
# shards, more than the nodes x GPUs x loader workers of any run we plan, each of which needs
# shards of its own under split_by_node / split_by_worker.
SHARD_SAMPLES = 2000


class QuestionFileError(ValueError):
    """A question file that cannot be used: malformed JSON or a question missing what we need."""


class StaleCacheError(RuntimeError):
    """A question cache built from other inputs or settings than the ones given."""


# ----------------------------------------------------------------------------------------------
# Reading question files: streamed, one question at a time, so that a 1 GB file is never a
# multi-GB tree of Python dicts (json.load) in memory.

_WS = r"[ \t\n\r]*"
_STRING = r'"((?:[^"\\]|\\.)*)"'
# What comes before a question's value: the opening '{' and the first key, or ',' and the next
# key; or the closing '}' (group 1). One regex call per question; the key is group 2.
_FIRST = re.compile(_WS + r"\{" + _WS + r"(?:(\})|" + _STRING + _WS + ":" + _WS + ")")
_NEXT = re.compile(_WS + r"(?:(\})|," + _WS + _STRING + _WS + ":" + _WS + ")")
# Text that is a prefix of a match of the pattern above: a failed match of it may succeed once
# more text is read. Any other failure is malformed JSON, found without reading further.
_KEY_PREFIX = r'(?:"(?:[^"\\]|\\.)*\\?(?:"' + _WS + r")?)?"
_FIRST_PREFIX = re.compile(_WS + r"(?:\{" + _WS + _KEY_PREFIX + ")?")
_NEXT_PREFIX = re.compile(_WS + r"(?:," + _WS + _KEY_PREFIX + ")?")
_OPEN = re.compile(_WS + r"\{")
_END = re.compile(_WS)
_BLOCK = 1 << 23


class _ObjectStream:
    """Walks a top-level JSON object ``{"key": value, ...}`` through a sliding text buffer."""

    def __init__(self, f, path: str):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof, self.lines_before = "", 0, False, 0
        self.scan = json.JSONDecoder().scan_once

    def _more(self) -> None:
        # At least as much again as is left unread in the buffer: a value longer than a block
        # costs a linear number of copies, not a quadratic one.
        chunk = self.f.read(max(_BLOCK, len(self.buf) - self.pos))
        self.lines_before += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos, self.eof = self.buf[self.pos:] + chunk, 0, not chunk

    def error(self, what: str, pos: Optional[int] = None) -> QuestionFileError:
        pos = self.pos if pos is None else pos
        line = self.lines_before + self.buf.count("\n", 0, pos) + 1
        column = pos - self.buf.rfind("\n", 0, pos)
        return QuestionFileError(f"{self.path}, line {line} column {column}: malformed JSON: {what}")

    def match(self, pattern: re.Pattern, prefix: re.Pattern):
        """Match at the cursor, reading more text while the failure may be the buffer's end."""
        while True:
            m = pattern.match(self.buf, self.pos)
            if m is not None:
                self.pos = m.end()
                return m
            if self.eof or not prefix.fullmatch(self.buf, self.pos):
                return None
            self._more()

    def value(self):
        while True:
            try:
                obj, end = self.scan(self.buf, self.pos)
                # A value that ends with the buffer may go on (a number cut in two).
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj
            except StopIteration as e:
                if self.eof:
                    raise self.error("Expecting value", e.value) from None
            except json.JSONDecodeError as e:
                if self.eof:
                    raise self.error(e.msg, e.pos) from None
            self._more()
            self.pos = _END.match(self.buf, self.pos).end()

    def items(self):
        m = self.match(_FIRST, _FIRST_PREFIX)
        if m is None:
            if not _OPEN.match(self.buf, self.pos):
                raise self.error("expected '{' (a question file is one object keyed by question id)")
            raise self.error("expected a question id string or '}'", _OPEN.match(self.buf, self.pos).end())
        while m.group(1) is None:
            key = m.group(2)
            yield (json.loads(f'"{key}"') if "\\" in key else key), self.value()
            m = self.match(_NEXT, _NEXT_PREFIX)
            if m is None:
                raise self.error("expected ',' and a question id string, or '}'")
        while True:
            end = _END.match(self.buf, self.pos).end()
            if end < len(self.buf):
                raise self.error("unexpected text after the closing '}'", end)
            if self.eof:
                return
            self.pos = end
            self._more()


@dataclass
class RawQuestions:
    """One question file's fields, in file order."""
    path: str
    question_ids: list
    image_ids: list
    questions: list
    answers: list          # str, or None where the question has no answer (test)
    structural: list
    semantic: list

    def __len__(self) -> int:
        return len(self.question_ids)


def read_question_file(path: str, answers_required: bool) -> RawQuestions:
    """Read a GQA question file (a JSON object keyed by question id), checking every question."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: question file not found (expected the GQA balanced "
                                "question files, e.g. train_balanced_questions.json)")
    raw = RawQuestions(path, [], [], [], [], [], [])
    seen = set()
    with open(path, encoding="utf-8") as f:
        try:
            for qid, entry in _ObjectStream(f, path).items():
                if qid in seen:
                    raise QuestionFileError(f"{path}: question {qid} is listed twice")
                seen.add(qid)
                _append(raw, qid, entry, answers_required)
        except UnicodeDecodeError as e:
            raise QuestionFileError(f"{path}: not UTF-8 text ({e})") from None
    return raw


def _append(raw: RawQuestions, qid: str, entry, answers_required: bool) -> None:
    where = f"{raw.path}: question {qid}"
    if not isinstance(entry, dict):
        raise QuestionFileError(f"{where}: expected an object, got {type(entry).__name__}")
    if "." in qid:
        raise QuestionFileError(f"{where}: question ids may not hold '.' (WebDataset sample keys)")
    for name in ("question", "imageId"):
        if not isinstance(entry.get(name), str):
            raise QuestionFileError(f"{where}: missing '{name}' (expected a string)")
    answer = entry.get("answer")
    if answer is None and answers_required:
        raise QuestionFileError(f"{where}: missing 'answer' (required in {', '.join(ANSWER_SPLITS)})")
    if answer is not None and not isinstance(answer, str):
        raise QuestionFileError(f"{where}: 'answer' must be a string, got {answer!r}")
    types = entry.get("types") or {}
    raw.question_ids.append(qid)
    raw.image_ids.append(entry["imageId"])
    raw.questions.append(entry["question"])
    raw.answers.append(answer)
    raw.structural.append(types.get("structural") or "")
    raw.semantic.append(types.get("semantic") or "")


def build_answers(raws) -> tuple[dict, list]:
    """The specification's answer vocabulary: keys lower-cased, label2ans keeps the first spelling."""
    ans2label, label2ans = {}, []
    for raw in raws:
        for answer in raw.answers:
            key = answer.lower()
            if key not in ans2label:
                ans2label[key] = len(ans2label)
                label2ans.append(answer)
    return ans2label, label2ans


# ----------------------------------------------------------------------------------------------
# Fingerprint: what the cache was built from.

@dataclass(frozen=True)
class Inputs:
    """What a question cache is built from. Two caches with equal ``fingerprint()`` are the same."""
    questions: str
    glove: str
    cache: str
    emb_dim: int = 300
    max_length: int = MAX_LENGTH
    drop_missing: bool = False

    def question_file(self, split: str) -> str:
        return os.path.join(self.questions, QUESTION_FILE.format(split=split))

    def describe(self) -> dict:
        """Paths, sizes and mtimes of the files, the feature stores' own fingerprints, the settings.

        Files are identified by (path, size, mtime) rather than a content hash: hashing the 5.6 GB
        GloVe file and 1 GB of questions would cost a minute at every training start, while any
        edit, copy or download changes the size or the mtime.
        """
        return {
            "format_version": FORMAT_VERSION,
            "questions": {s: _file_stat(self.question_file(s), "question file") for s in SPLITS},
            "glove": _file_stat(self.glove, "GloVe file"),
            "stores": {name: _store_stat(schema.store_path(self.cache, name))
                       for name in sorted(set(schema.STORE_FOR_SPLIT.values()))},
            "settings": {"emb_dim": self.emb_dim, "max_length": self.max_length,
                         "drop_missing": self.drop_missing},
        }


def _store_stat(path: str) -> dict:
    attrs = schema.read_complete_attrs(path)   # fail before reading any question, not after
    return {"path": os.path.abspath(path), "fingerprint": attrs.fingerprint}


def _file_stat(path: str, what: str) -> dict:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(description: dict) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _changes(old: dict, new: dict, prefix: str = "") -> list:
    """Dotted names of the leaves that differ between two descriptions."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".") or "(all)"]
    return [c for k in sorted(set(old) | set(new))
            for c in _changes(old.get(k), new.get(k), f"{prefix}{k}.")]


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
        changed = ", ".join(_changes(manifest["inputs"], now))
        raise StaleCacheError(f"{out_dir}: question cache was built from other inputs (changed: "
                              f"{changed}); rebuild it with `{BUILD_COMMAND}`")
    return manifest



def check_stores(out_dir: str, cache_dir: str) -> None:
    """Raise ``StaleCacheError`` unless the feature stores in ``cache_dir`` are the ones the question
    cache in ``out_dir`` was built against: its image rows index those stores, so another store
    (re-converted, or another cache directory) would pair questions with the wrong images."""
    for name, built in read_manifest(out_dir)["inputs"]["stores"].items():
        path = schema.store_path(cache_dir, name)
        now = schema.read_attrs(path).fingerprint
        if now != built["fingerprint"]:
            raise StaleCacheError(
                f"{out_dir}: question cache was built against the feature store {built['path']} (fingerprint "
                f"{built['fingerprint'][:12]}), but {path} is another (fingerprint {now[:12]}), so its image "
                f"rows may point at the wrong images; rebuild it with `{BUILD_COMMAND}`")

# ----------------------------------------------------------------------------------------------
# The arrays of one split.

@dataclass
class QuestionArrays:
    """One split's questions as arrays, in the specification's order (sorted question ids)."""
    question_ids: np.ndarray     # str [N]
    image_ids: np.ndarray        # str [N]
    image_rows: np.ndarray       # int64 [N], row of the image in the split's feature store
    tokens: np.ndarray           # int64 [N, max_length], front-padded with the padding index
    labels: np.ndarray           # int64 [N], -1 where there is no answer
    structural: np.ndarray       # str [N], "" where unknown
    semantic: np.ndarray         # str [N], "" where unknown

    def __len__(self) -> int:
        return len(self.question_ids)

    def take(self, index) -> "QuestionArrays":
        return QuestionArrays(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})


def _labels(raw: RawQuestions, ans2label: dict) -> np.ndarray:
    keys = [a.lower() if a is not None else None for a in raw.answers]
    labels = np.fromiter(map(ans2label.get, keys, repeat(-1)), dtype=np.int64, count=len(keys))
    unknown = np.flatnonzero((labels < 0) & np.array([k is not None for k in keys], dtype=bool))
    if len(unknown):
        i = unknown[0]
        raise QuestionFileError(f"{raw.path}: question {raw.question_ids[i]}: answer {raw.answers[i]!r} "
                                f"is not in the answer vocabulary (built from {', '.join(ANSWER_SPLITS)}); "
                                f"{len(unknown)} such question(s) in this file")
    return labels


def _image_rows(raw: RawQuestions, split: str, row_of: dict, drop_missing: bool):
    """(rows int64 [N] with -1 where missing, keep mask)."""
    rows = np.fromiter(map(row_of.get, raw.image_ids, repeat(-1)), dtype=np.int64, count=len(raw))
    missing = np.flatnonzero(rows < 0)
    if len(missing) and not drop_missing:
        examples = ", ".join(f"{raw.question_ids[i]} (image {raw.image_ids[i]})" for i in missing[:5])
        raise QuestionFileError(
            f"{raw.path}: {len(missing)} {split} question(s) ask about images that have no row in the "
            f"feature store {schema.store_path('<cache>', split)}, e.g. {examples}; convert the right "
            "features, or pass --drop-missing to leave these questions out")
    return rows, rows >= 0


def _split_arrays(raw, split, tokens, ans2label, row_of, drop_missing) -> tuple[QuestionArrays, int]:
    labels = _labels(raw, ans2label)
    rows, keep = _image_rows(raw, split, row_of, drop_missing)
    arrays = QuestionArrays(np.array(raw.question_ids, dtype=str), np.array(raw.image_ids, dtype=str),
                            rows, tokens, labels, np.array(raw.structural, dtype=str),
                            np.array(raw.semantic, dtype=str))
    kept = np.flatnonzero(keep)
    order = kept[np.argsort(arrays.question_ids[kept], kind="stable")]
    return arrays.take(order), int(len(raw) - len(kept))


# ----------------------------------------------------------------------------------------------
# Writing.

def _index_dtype(ntoken: int):
    # Tokens and labels in the narrowest integer type that holds them: half the bytes to read
    # (and, while building, to fill and sort).
    return np.int32 if ntoken < 2 ** 31 else np.int64


def _save_index(path: str, arrays: QuestionArrays, ntoken: int) -> None:
    small = _index_dtype(ntoken)
    np.savez(path, **{**{f.name: getattr(arrays, f.name) for f in dataclasses.fields(arrays)},
                      "tokens": arrays.tokens.astype(small, copy=False), "labels": arrays.labels.astype(small)})


def sample_dicts(arrays: QuestionArrays):
    """What the shards' ``.json`` members hold, question by question (each keyed by its id).

    Whole columns become Python lists at once (``tolist``): a tenth of the cost of converting
    numpy scalars one question at a time."""
    labels = [label if label >= 0 else None for label in arrays.labels.tolist()]
    for qid, image, row, tokens, label, structural, semantic in zip(
            arrays.question_ids.tolist(), arrays.image_ids.tolist(), arrays.image_rows.tolist(),
            arrays.tokens.tolist(), labels, arrays.structural.tolist(), arrays.semantic.tolist()):
        yield {"question_id": qid, "image_id": image, "image_row": row, "tokens": tokens,
               "label": label, "structural": structural, "semantic": semantic}


# Set before the shard writers fork, so that they inherit the arrays instead of receiving copies.
_SHARD_SOURCE: dict = {}


def _write_shard(task) -> str:
    import webdataset as wds
    split, start, stop, path, mtime = task
    dumps = json.JSONEncoder().encode
    with wds.TarWriter(path, encoder=False, mtime=mtime) as writer:
        for sample in sample_dicts(_SHARD_SOURCE[split].take(slice(start, stop))):
            writer.write({"__key__": sample["question_id"], "json": dumps(sample).encode()})
    return path


def _shard_path(out_dir: str, split: str, k: int) -> str:
    return os.path.join(out_dir, f"{split}-{k:06d}.tar")


def _shard_tasks(out_dir: str, split: str, n: int, mtime: float) -> list:
    return [(split, start, min(start + SHARD_SAMPLES, n),
             _shard_path(out_dir, split, start // SHARD_SAMPLES), mtime)
            for start in range(0, max(n, 1), SHARD_SAMPLES)]


def _write_shards(tasks: list, workers: int, progress: bool) -> None:
    """Write the shards, in worker processes where fork is available (tar writing is CPU-bound)."""
    from tqdm import tqdm
    import webdataset  # noqa: F401  imported (with torch, ~2 s) once here, not in every child
    bar = tqdm(total=len(tasks), desc="[*] writing shards", unit="shard", disable=not progress)
    if workers > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_write_shard, tasks):
                bar.update()
    else:
        for task in tasks:
            _write_shard(task)
            bar.update()
    bar.close()


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f)


# ----------------------------------------------------------------------------------------------
# Building.

def build(questions_dir: str, glove_path: str, out_dir: str, cache_dir: str, emb_dim: int = 300,
          max_length: int = MAX_LENGTH, drop_missing: bool = False, force: bool = False,
          workers: Optional[int] = None, progress: bool = True) -> dict:
    """Build the question cache in ``out_dir``; a no-op when it is already built from these inputs.

    Returns a summary: counts and dropped questions per split, vocabulary and answer sizes, GloVe
    coverage, seconds taken and ``skipped`` (True when the cache was already up to date).
    """
    say = print if progress else (lambda *a, **k: None)
    inputs = Inputs(questions_dir, glove_path, cache_dir, emb_dim, max_length, drop_missing)
    description = inputs.describe()
    old = _readable_manifest(out_dir)
    if old and not force and old["fingerprint"] == fingerprint(description):
        say(f"[*] question cache {out_dir} is up to date (fingerprint {old['fingerprint'][:12]}): nothing to do")
        return {**old["summary"], "skipped": True}
    if old and not force:
        say(f"[*] question cache {out_dir} is stale (changed: {', '.join(_changes(old['inputs'], description))}); rebuilding")

    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.exists(os.path.join(out_dir, MANIFEST)):
        # The build replaces out_dir whole: never do that to a directory that is not a question cache.
        raise FileExistsError(f"{out_dir}: exists and is not a question cache (no {MANIFEST}); "
                              "choose another --out or empty it")
    start = time.perf_counter()
    partial = out_dir.rstrip("/\\") + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        summary = _build_into(partial, inputs, description, workers or os.cpu_count() or 1, say, progress)
        summary.update(out=os.path.abspath(out_dir), seconds=round(time.perf_counter() - start, 2))
        _write_json(os.path.join(partial, MANIFEST),
                    {"format_version": FORMAT_VERSION, "complete": True,
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


def _build_into(out: str, inputs: Inputs, description: dict, workers: int, say, progress) -> dict:
    check_glove_dim(inputs.glove, inputs.emb_dim)
    phase = _Phases(say)
    phase("read", f"[*] reading questions from {inputs.questions}")
    raws = {s: read_question_file(inputs.question_file(s), s in ANSWER_SPLITS) for s in SPLITS}
    ans2label, label2ans = build_answers(raws[s] for s in ANSWER_SPLITS)

    phase("tokenize", "[*] tokenizing, resolving image rows")
    words, lengths = split_batch([q for s in SPLITS for q in raws[s].questions])
    vocab = Vocabulary(list(dict.fromkeys(words)))
    ids = vocab.lookup(words)
    del words
    tokens = pad_front(ids, lengths, inputs.max_length, vocab.padding_idx, _index_dtype(vocab.ntoken))
    bounds = np.cumsum([0] + [len(raws[s]) for s in SPLITS])
    rows_by_store, arrays, dropped = {}, {}, {}
    for k, split in enumerate(SPLITS):
        store = schema.STORE_FOR_SPLIT[split]
        if store not in rows_by_store:
            image_ids = schema.read_image_ids(schema.store_path(inputs.cache, store)).tolist()
            rows_by_store[store] = {image: row for row, image in enumerate(image_ids)}
        arrays[split], dropped[split] = _split_arrays(raws[split], split, tokens[bounds[k]:bounds[k + 1]],
                                                      ans2label, rows_by_store[store], inputs.drop_missing)
        if dropped[split]:
            say(f"[*] {split}: dropped {dropped[split]} question(s) whose image has no feature row (--drop-missing)")
    del raws, tokens

    phase("shards", "[*] writing shards and indexes")
    _SHARD_SOURCE.clear()
    _SHARD_SOURCE.update(arrays)
    # A whole second: a float mtime makes tarfile add a PAX header of its own to every member.
    mtime = int(time.time())
    tasks = [t for s in SPLITS for t in _shard_tasks(out, s, len(arrays[s]), mtime)]
    try:
        _write_shards(tasks, workers, progress)
    finally:
        _SHARD_SOURCE.clear()
    for split in SPLITS:
        _save_index(os.path.join(out, f"{split}.npz"), arrays[split], vocab.ntoken)

    phase("glove", f"[*] reading GloVe vectors from {inputs.glove}")
    weights, found = read_glove(inputs.glove, vocab.word2idx, inputs.emb_dim)
    np.save(os.path.join(out, "glove.npy"), weights)
    _write_json(os.path.join(out, "vocab.json"), vocab.idx2word)
    _write_json(os.path.join(out, "answers.json"), {"label2ans": label2ans, "ans2label": ans2label})
    counts = np.bincount(ids, minlength=vocab.ntoken + 1)[:vocab.ntoken]
    coverage = {"vocabulary": round(float(found.mean()) if len(found) else 0.0, 4),
                "tokens": round(float(counts[found].sum() / max(counts.sum(), 1)), 4)}
    say(f"[*] vocabulary {vocab.ntoken} words, {len(label2ans)} answers; GloVe covers "
        f"{coverage['vocabulary']:.1%} of the vocabulary and {coverage['tokens']:.1%} of question tokens")
    return {"questions": {s: len(arrays[s]) for s in SPLITS}, "dropped": dropped,
            "shards": {s: sum(t[0] == s for t in tasks) for s in SPLITS},
            "ntoken": vocab.ntoken, "num_answers": len(label2ans), "glove_coverage": coverage,
            "phase_seconds": phase.end()}


# ----------------------------------------------------------------------------------------------
# Reading.

def _open(out_dir: str, inputs: Optional[Inputs]) -> dict:
    return check_inputs(out_dir, inputs) if inputs is not None else read_manifest(out_dir)


def load_split(questions_dir: str, split: str, inputs: Optional[Inputs] = None) -> QuestionArrays:
    """A split's questions as arrays, from its compact index (one ``np.load``).

    With ``inputs``, first checks that the cache was built from them (StaleCacheError otherwise).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    _open(questions_dir, inputs)
    with np.load(os.path.join(questions_dir, f"{split}.npz"), allow_pickle=False) as index:
        loaded = {name: index[name] for name in index.files}
    loaded["tokens"] = loaded["tokens"].astype(np.int64)
    loaded["labels"] = loaded["labels"].astype(np.int64)
    return QuestionArrays(**loaded)


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


def load_glove(questions_dir: str, inputs: Optional[Inputs] = None) -> np.ndarray:
    """The GloVe matrix, float32 [ntoken, emb_dim]."""
    _open(questions_dir, inputs)
    return np.load(os.path.join(questions_dir, "glove.npy"), allow_pickle=False)


def shard_paths(questions_dir: str, split: str) -> list:
    count = read_manifest(questions_dir)["summary"]["shards"][split]
    return [_shard_path(questions_dir, split, k) for k in range(count)]


def decode_sample(sample: dict) -> dict:
    """A streamed sample as arrays: tokens int64 [max_length], label -1 where there is none."""
    fields = json.loads(sample["json"])
    fields["tokens"] = np.asarray(fields["tokens"], dtype=np.int64)
    fields["label"] = -1 if fields["label"] is None else fields["label"]
    return fields


def stream_split(questions_dir: str, split: str, shard_shuffle: int = 0, seed: int = 0):
    """A ``webdataset.WebDataset`` over the split's shards, split across nodes (``split_by_node``)
    and DataLoader workers (``split_by_worker``), yielding ``decode_sample`` dicts.

    ``shard_shuffle > 0`` shuffles each worker's shards (a buffer of that many, seeded by ``seed``,
    deterministic per epoch); samples are then in shard order, as written.
    """
    import webdataset as wds
    return wds.WebDataset(shard_paths(questions_dir, split), nodesplitter=wds.split_by_node,
                          workersplitter=wds.split_by_worker, shardshuffle=shard_shuffle or False,
                          detshuffle=True, seed=seed).map(decode_sample)
