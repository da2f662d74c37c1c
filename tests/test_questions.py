"""The question cache: parity with the specification's steps 1, 2 and 4, shard round trips,
fingerprints, bad inputs, missing images, image ids in another format (both sides shown), question
files with a byte-order mark."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from butd import questions as Q
from butd.features import schema
from butd.features.convert import convert_stores, convert_tsv
from butd.questions import shards
from butd.questions.cache import MANIFEST
from butd.reference.spec import Dictionary, pad_questions
from butd.tasks import get_task, json_stream
from butd.tasks.gqa import read_question_file
from butd.tasks.json_stream import json_lines, object_items

from helpers import BOM, REAL_QUESTIONS, build_questions, copy_stores, spec_glove

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GQA = get_task("gqa")
SPEC_QUESTION_FILES = ['train_balanced_questions.json', 'val_balanced_questions.json',
                       'testdev_balanced_questions.json', 'test_balanced_questions.json']
SPEC_SPLITS = ("train", "val", "testdev", "test")   # GQA's splits but the optional submission one


@pytest.fixture(scope="module")
def stores(sample_dir, tmp_path_factory):
    """The sample's feature stores, made by the real converter."""
    cache = tmp_path_factory.mktemp("cache")
    convert_stores(GQA, str(sample_dir / "GQA-Features"), str(cache), workers=1, progress=False)
    return cache


@pytest.fixture
def inputs(sample_dir, stores, tmp_path):
    """A private copy of the sample's questions and GloVe file (tests edit them) and the stores."""
    shutil.copytree(sample_dir / "GQA-Questions", tmp_path / "q")
    shutil.copytree(sample_dir / "GloVe", tmp_path / "g")
    return Q.Inputs("gqa", str(tmp_path / "q"), str(tmp_path / "g" / "glove.6B.300d.txt"), str(stores))


def build(inputs, out, **kw):
    return Q.build(inputs, str(out), workers=kw.pop("workers", 1), progress=False, **kw)


def question_file(inputs, split):
    return GQA.question_files(inputs.questions, split)[0]


def shuffled_copy(src, dst, seed=0):
    """The question files with their entries in a seeded random order and some ids shortened, so
    that file order, numeric order and the specification's string order (sorted ids) all differ."""
    rng = np.random.default_rng(seed)
    os.makedirs(dst)
    for name in SPEC_QUESTION_FILES:
        with open(os.path.join(src, name)) as f:
            items = list(json.load(f).items())
        items = [(k[-3:] if i % 5 == 0 else k, v) for i, (k, v) in enumerate(items)]
        with open(os.path.join(dst, name), "w") as f:
            json.dump(dict(items[i] for i in rng.permutation(len(items))), f)
    return dst


@pytest.fixture(scope="module")
def built(sample_dir, stores, tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    inputs = Q.Inputs("gqa", shuffled_copy(str(sample_dir / "GQA-Questions"), str(root / "q")),
                      str(sample_dir / "GloVe" / "glove.6B.300d.txt"), str(stores))
    return inputs, root / "questions", build(inputs, root / "questions", workers=2)


def edit_questions(inputs, split, edit):
    path = question_file(inputs, split)
    with open(path) as f:
        questions = json.load(f)
    edit(questions)
    with open(path, "w") as f:
        json.dump(questions, f)
    return path


# ---- Parity with the specification ----

def spec_pipeline(gqa_q, glove, img2idx):
    """The specification's gqa_create_dictionary_glove, gqa_create_answers, load_dataset and
    tokenize, verbatim in substance (json.load of every file, sorted entries)."""
    dictionary = Dictionary()
    for qfile in SPEC_QUESTION_FILES:
        with open(os.path.join(gqa_q, qfile), 'r') as f:
            examples = json.load(f)
        for ex_key in examples:
            dictionary.tokenize(examples[ex_key]['question'], add_word=True)
    with open(glove, 'r') as f:
        weights = spec_glove(f.readlines(), dictionary)
    ans2label, label2ans = {}, []
    for qfile in SPEC_QUESTION_FILES[:3]:
        with open(os.path.join(gqa_q, qfile), 'r') as f:
            examples = json.load(f)
        for ex_key in examples:
            ex = examples[ex_key]
            if not ex['answer'].lower() in ans2label:  # noqa: E713 (the specification's line)
                ans2label[ex['answer'].lower()] = len(ans2label)
                label2ans.append(ex['answer'])
    splits = {}
    for mode in SPEC_SPLITS:
        with open(os.path.join(gqa_q, '%s_balanced_questions.json' % mode), 'r') as f:
            examples = json.load(f)
        entries = [(k, examples[k]) for k in sorted(examples)]
        splits[mode] = {
            "question_ids": [k for k, _ in entries],
            "image_rows": [img2idx[mode][ex['imageId']] for _, ex in entries],
            "labels": [ans2label[ex['answer'].lower()] if 'answer' in ex else -1 for _, ex in entries],
            "tokens": pad_questions(dictionary, [ex['question'] for _, ex in entries]),
            "structural": [ex.get('types', {}).get('structural', '') for _, ex in entries],
        }
    return dictionary, weights, ans2label, label2ans, splits


def test_cache_equals_spec(built):
    inputs, out, summary = built
    img2idx = {s: {i: r for r, i in enumerate(schema.read_image_ids(GQA.store_path(inputs.cache, s)).tolist())}
               for s in SPEC_SPLITS}
    dictionary, weights, ans2label, label2ans, splits = spec_pipeline(inputs.questions, inputs.glove, img2idx)
    vocab = Q.load_vocab(str(out))
    assert vocab.idx2word == dictionary.idx2word and vocab.padding_idx == dictionary.padding_idx
    assert Q.load_answers(str(out)) == (ans2label, label2ans)
    np.testing.assert_array_equal(Q.load_glove(str(out)), weights)
    for split, spec in splits.items():
        arrays = Q.load_split(str(out), split, inputs)
        assert arrays.question_ids.tolist() == spec["question_ids"]
        np.testing.assert_array_equal(arrays.tokens, spec["tokens"])
        assert arrays.tokens.dtype == arrays.targets["labels"].dtype == arrays.image_rows.dtype == np.int64
        assert arrays.image_rows[:, 0].tolist() == spec["image_rows"]
        assert arrays.targets["labels"].tolist() == spec["labels"]
        assert arrays.types["structural"].tolist() == spec["structural"]
        assert len(arrays) == summary["questions"][split]
    assert (Q.load_split(str(out), "test").targets["labels"] == -1).all()
    assert 0 < summary["glove_coverage"]["vocabulary"] < 1 and 0 < summary["glove_coverage"]["tokens"] < 1


def test_answers_keep_first_spelling_and_lowercase_keys():
    class Raw:
        def __init__(self, answers):
            self.answers = answers
    raws = {"train": Raw(["Yes", "no", "yes"]), "val": Raw(["NO", "Red"]), "testdev": Raw([]), "test": Raw([None])}
    ans2label, label2ans = GQA.answer_vocabulary(raws)
    assert ans2label == {"yes": 0, "no": 1, "red": 2} and label2ans == ["Yes", "no", "Red"]


# ---- Shards ----

def test_shards_read_back_with_plain_webdataset(built):
    inputs, out, summary = built
    for split in SPEC_SPLITS:
        arrays = Q.load_split(str(out), split)
        paths = sorted(str(p) for p in out.glob(f"{split}-*.tar"))
        assert len(paths) == summary["shards"][split]
        samples = list(wds.WebDataset(paths, shardshuffle=False))
        assert [s["__key__"] for s in samples] == arrays.question_ids.tolist()
        for i, s in enumerate(samples):
            got = json.loads(s["json"])
            assert got == {"question_id": arrays.question_ids[i], "image_ids": arrays.image_ids[i].tolist(),
                           "image_rows": arrays.image_rows[i].tolist(), "tokens": arrays.tokens[i].tolist(),
                           "targets": {"labels": -1 if split == "test" else int(arrays.targets["labels"][i])},
                           "types": {"structural": arrays.types["structural"][i],
                                     "semantic": arrays.types["semantic"][i]}}


def test_stream_split_gives_nodes_and_workers_equal_shares(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_SAMPLES", 10)
    out = tmp_path / "out"
    build(inputs, out, workers=2)
    monkeypatch.setattr(shards, "SHARD_SAMPLES", 7)   # stream_split reads the size from the manifest
    expected = Q.load_split(str(out), "train")
    assert len(Q.shard_paths(str(out), "train")) == -(-len(expected) // 10) and len(expected) % 4 == 0
    seen = []
    for rank in range(2):
        for worker in range(2):
            for k, v in {"RANK": rank, "WORLD_SIZE": 2, "WORKER": worker, "NUM_WORKERS": 2}.items():
                monkeypatch.setenv(k, str(v))
            part = list(Q.stream_split(str(out), "train"))
            assert len(part) == len(expected) // 4 and all(s["tokens"].dtype == np.int64 for s in part)
            seen += part
    assert sorted(s["question_id"] for s in seen) == expected.question_ids.tolist()   # a partition
    by_id = {s["question_id"]: s for s in seen}
    for i in (0, len(expected) - 1):
        s = by_id[expected.question_ids[i]]
        np.testing.assert_array_equal(s["tokens"], expected.tokens[i])
        assert s["targets"]["labels"] == expected.targets["labels"][i]
        np.testing.assert_array_equal(s["image_rows"], expected.image_rows[i])


# ---- Fingerprint ----

def test_second_build_is_noop_and_changed_inputs_rebuild(inputs, tmp_path, capsys):
    out = tmp_path / "out"
    assert build(inputs, out)["skipped"] is False
    manifest_mtime = os.stat(out / MANIFEST).st_mtime_ns
    again = Q.build(inputs, str(out), progress=True, workers=1)
    assert again["skipped"] is True and "up to date" in capsys.readouterr().out
    assert os.stat(out / MANIFEST).st_mtime_ns == manifest_mtime
    edit_questions(inputs, "val", lambda qs: qs[next(iter(qs))].update(question="Is the zebra purple?"))
    assert build(inputs, out)["skipped"] is False
    assert "zebra" in Q.load_vocab(str(out), inputs).idx2word
    assert build(inputs, out, force=True)["skipped"] is False
    assert not os.path.exists(str(out) + ".partial") and not os.path.exists(str(out) + ".old")


def test_reading_a_cache_built_from_other_inputs_is_an_error(inputs, tmp_path):
    out = tmp_path / "out"
    build(inputs, out)
    with open(inputs.glove, "a") as f:
        f.write("newword " + " ".join(["0.5"] * 300) + "\n")
    for load in (lambda: Q.load_split(str(out), "train", inputs), lambda: Q.load_glove(str(out), inputs),
                 lambda: Q.load_vocab(str(out), inputs), lambda: Q.load_answers(str(out), inputs)):
        with pytest.raises(Q.StaleCacheError, match=r"changed: glove\.(mtime_ns|size)"):
            load()
    other = Q.Inputs("gqa", inputs.questions, inputs.glove, inputs.cache, emb_dim=inputs.emb_dim, max_length=20)
    with pytest.raises(Q.StaleCacheError, match="settings.max_length"):
        Q.load_split(str(out), "train", other)
    Q.load_split(str(out), "train")   # without inputs to check against, the cache is still readable


def test_feature_store_fingerprint_is_an_input(inputs, sample_dir, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(inputs.cache, cache)
    mine = Q.Inputs("gqa", inputs.questions, inputs.glove, str(cache))
    out = tmp_path / "out"
    build(mine, out)
    convert_tsv(str(sample_dir / "GQA-Features" / "gqa_testdev_obj36.tsv"), GQA.store_path(str(cache), "testdev"),
                dtype="float32", overwrite=True, workers=1, progress=False)
    with pytest.raises(Q.StaleCacheError, match=r"stores\.testdev\.fingerprint"):
        Q.load_split(str(out), "testdev", mine)
    assert build(mine, out)["skipped"] is False


def test_load_without_cache_names_file_and_command(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest\.json.*questions_to_shards\.py"):
        Q.load_split(str(tmp_path / "nothing"), "train")


# ---- Bad inputs: a clear error naming file and question; nothing half-written marked complete ----

def _drop(key):
    return lambda qs: qs[next(iter(qs))].pop(key)


BAD_INPUTS = {
    "missing file": ("test", None, FileNotFoundError, r"test_balanced_questions\.json"),
    "malformed json": ("val", "truncate", Q.QuestionFileError, r"val_balanced_questions\.json, line 1 column \d+: malformed"),
    "no question": ("train", _drop("question"), Q.QuestionFileError, r"train_balanced_questions\.json: question \d+: missing 'question'"),
    "no imageId": ("testdev", _drop("imageId"), Q.QuestionFileError, r"testdev_balanced_questions\.json: question \d+: missing 'imageId'"),
    "no answer": ("val", _drop("answer"), Q.QuestionFileError, r"question \d+: missing 'answer'"),
    "answer outside vocabulary": ("test", lambda qs: qs[next(iter(qs))].update(answer="hovercraft"),
                                  Q.QuestionFileError, r"test_balanced_questions\.json: question \d+: answer 'hovercraft' is not in the answer vocabulary"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_leaves_the_old_cache(inputs, tmp_path, case):
    split, edit, error, message = BAD_INPUTS[case]
    out = tmp_path / "out"
    build(inputs, out)
    before = Q.read_manifest(str(out))["fingerprint"]
    path = question_file(inputs, split)
    if edit is None:
        os.remove(path)
    elif edit == "truncate":
        with open(path, "r+") as f:
            f.truncate(os.path.getsize(path) // 2)
    else:
        edit_questions(inputs, split, edit)
    with pytest.raises(error, match=message):
        build(inputs, out)
    assert Q.read_manifest(str(out))["fingerprint"] == before      # the previous cache, untouched
    assert not os.path.exists(str(out) + ".partial")
    fresh = tmp_path / "fresh"
    with pytest.raises(error):
        build(inputs, fresh)
    assert not fresh.exists() and not os.path.exists(str(fresh) + ".partial")


def test_question_on_an_image_without_features(inputs, tmp_path, capsys):
    def add(qs):
        qs["99999991"] = {**qs[next(iter(qs))], "imageId": "no-such-image"}
        qs["99999992"] = {**qs[next(iter(qs))], "imageId": "nor-this-one"}
    edit_questions(inputs, "train", add)
    with pytest.raises(Q.QuestionFileError, match=r"2 train question\(s\) .* e\.g\. 99999991 \(image no-such-image\)"
                                                  r".*--drop_missing"):
        build(inputs, tmp_path / "out")
    dropping = Q.Inputs("gqa", inputs.questions, inputs.glove, inputs.cache, drop_missing=True)
    summary = Q.build(dropping, str(tmp_path / "out"), workers=1, progress=True)
    assert summary["dropped"] == {"train": 2, "val": 0, "testdev": 0, "test": 0}
    assert "train: dropped 2 question(s)" in capsys.readouterr().out
    ids = Q.load_split(str(tmp_path / "out"), "train", dropping).question_ids
    assert "99999991" not in ids and len(ids) == summary["questions"]["train"]


# ---- The streaming JSON reader ----

TRICKY = ('  {"1": {"question": "a }, \\"2\\": {", "imageId": "x", "answer": "Yes", "types": {}},\n'
          '"2\\u00e9" :{"question":"b?","imageId":"y","answer":"no","n":[1.5e3, null, true]}\r\n,"3":'
          '{"question": "\\u00c9t\\u00e9\\ns", "imageId": "z", "answer": "no", '
          '"types": {"structural": "query", "semantic": "rel"}}}  \n')


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_streaming_reader_equals_json_load(tmp_path, monkeypatch, block):
    monkeypatch.setattr(json_stream, "_BLOCK", block)
    path = tmp_path / "t.json"
    path.write_text(TRICKY)
    for source in (str(path), REAL_QUESTIONS):
        with open(source) as f:
            expected = json.load(f)
        raw = read_question_file(source, answers_required=True)
        assert raw.question_ids == list(expected)
        assert raw.questions == [e["question"] for e in expected.values()]
        assert raw.image_ids == [[e["imageId"] for e in expected.values()]]
        assert raw.answers == [e["answer"] for e in expected.values()]
        assert raw.types["structural"] == [e.get("types", {}).get("structural", "") for e in expected.values()]


def test_streaming_reader_holds_about_a_block(tmp_path, monkeypatch):
    """The buffer stays near one block, however long the file (a failed check for an empty
    object once pulled the whole file in, block by block: quadratic, 34 s at 1M questions)."""
    monkeypatch.setattr(json_stream, "_BLOCK", 256)
    path = tmp_path / "many.json"
    path.write_text(json.dumps({str(i): {"question": "q?", "imageId": "x", "answer": "a"} for i in range(2000)}))
    sizes, more = [], json_stream._ObjectStream._more

    def recording(self):
        more(self)
        sizes.append(len(self.buf))

    monkeypatch.setattr(json_stream._ObjectStream, "_more", recording)
    assert len(read_question_file(str(path), answers_required=True)) == 2000
    assert path.stat().st_size > 100 * 256 and max(sizes) < 4 * 256


@pytest.mark.parametrize("text,message", [
    ('[1, 2]', "expected '{'"),
    ('{"1": {"question": "a", "imageId": "x"}} extra', "unexpected text"),
    ('{"1": {"question": "a", "imageId": "x"},\n "2": {"question": "b", "imageId": }}', r"line 2 column \d+"),
    ('{"1": {"question": "a", "imageId": "x"}, "1": {"question": "b", "imageId": "x"}}', "listed twice"),
    ('{"1": ["not", "an", "object"]}', "question 1: expected an object"),
])
def test_streaming_reader_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.setattr(json_stream, "_BLOCK", 5)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(Q.QuestionFileError, match=message):
        read_question_file(str(path), answers_required=False)


def test_glove_of_the_wrong_dimension_fails_before_any_work(inputs, tmp_path):
    from butd.text import GloveFormatError
    with pytest.raises(GloveFormatError, match=r"glove\.6B\.300d\.txt, line 1: 300 values .* expected 50"):
        Q.build(Q.Inputs("gqa", inputs.questions, inputs.glove, inputs.cache, emb_dim=50), str(tmp_path / "out"),
                progress=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_builds_then_reports_up_to_date(inputs, tmp_path, capsys):
    import runpy
    cli = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "converters", "questions_to_shards.py"))
    argv = ["--questions", inputs.questions, "--glove", inputs.glove, "--cache", inputs.cache,
            "--out", str(tmp_path / "out"), "--workers", "1"]
    assert cli["main"](argv)["skipped"] is False
    assert cli["main"](argv)["skipped"] is True
    assert "up to date" in capsys.readouterr().out
    assert len(Q.load_split(str(tmp_path / "out"), "val", inputs)) > 0


def test_never_replaces_a_directory_that_is_not_a_question_cache(inputs, tmp_path):
    precious = tmp_path / "data"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a question cache"):
        build(inputs, precious)
    assert (precious / "keep.txt").read_text() == "mine"


def test_glove_that_covers_few_question_tokens_is_warned_about_by_name(inputs, tmp_path, capsys):
    build(inputs, tmp_path / "good")
    assert "warning" not in capsys.readouterr().err
    with open(inputs.glove) as f:
        lines = f.readlines()
    few = tmp_path / "few.txt"
    few.write_text("".join(lines[:12]))          # the most frequent words only
    summary = build(Q.Inputs("gqa", inputs.questions, str(few), inputs.cache), tmp_path / "few")
    err = capsys.readouterr().err
    assert summary["glove_coverage"]["tokens"] < Q.cache.MIN_GLOVE_TOKEN_COVERAGE
    assert err.count("\n") == 1 and err.startswith(f"warning: {few} covers only")


def test_a_features_tsv_given_as_glove_is_one_short_line(inputs, tmp_path):
    from helpers import REAL_TSV
    out = subprocess.run([sys.executable, os.path.join(ROOT, "converters", "questions_to_shards.py"),
                          "--questions", inputs.questions, "--glove", REAL_TSV, "--cache", inputs.cache,
                          "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and len(out.stderr) < 400, out.stderr[:500]
    assert REAL_TSV in out.stderr and "COCO_train2014" in out.stderr


def test_ids_in_another_format_are_refused_showing_both_sides(small_run, tmp_path, capsys):
    root, data, _ = small_run
    qdir = shutil.copytree(os.path.join(root, "GQA-Questions"), tmp_path / "q")
    path = qdir / "train_balanced_questions.json"
    with open(path) as f:
        qs = json.load(f)
    for q in qs.values():       # VQA-style: the questions say 2300000, the store COCO_..._000002300000
        q["imageId"] = f"COCO_train2014_{int(q['imageId']):012d}"
    with open(path, "w") as f:
        json.dump(qs, f)
    cache = copy_stores(root, tmp_path / "cache")
    for flags in ([], ["--drop-missing"]):
        with pytest.raises(ValueError) as e:
            build_questions(qdir, data[3], cache, *flags)
        message = str(e.value)
        assert "95 of 95 train question(s)" in message and "COCO_train2014_0000023" in message
        store_ids = schema.read_image_ids(os.path.join(cache, "trainval.zarr"))[:5]
        assert all(i in message for i in store_ids), message       # the store's ids beside the questions'
    assert not os.path.exists(os.path.join(cache, "questions"))


def test_question_files_with_a_bom(tmp_path):
    (tmp_path / "q.json").write_bytes(BOM + json.dumps({"q1": {"question": "Is it?"}}).encode())
    assert list(object_items(str(tmp_path / "q.json"))) == [("q1", {"question": "Is it?"})]
    (tmp_path / "q.jsonl").write_bytes(BOM + b'{"identifier": "dev-1-0-0"}\n{"identifier": "dev-1-0-1"}\n')
    assert [v["identifier"] for _, v in json_lines(str(tmp_path / "q.jsonl"))] == ["dev-1-0-0", "dev-1-0-1"]


def test_every_missing_input_is_named_at_once_before_any_work(inputs, tmp_path):
    os.remove(question_file(inputs, "val"))
    os.remove(question_file(inputs, "test"))
    os.remove(inputs.glove)
    with pytest.raises(FileNotFoundError) as missing:
        build(inputs, tmp_path / "out")
    text = str(missing.value)
    assert "3 input(s) not found" in text
    for name in ("val_balanced_questions.json", "test_balanced_questions.json", "glove.6B.300d.txt"):
        assert name in text
    assert not (tmp_path / "out").exists()
