"""GQA's whole official evaluation: evaluate.py on a set in the official layouts, built from the 155
real GQA questions of tests/data (their real ``entailed``, ``groups``, ``semantic``, ``annotations``
and ``types``), checked figure by figure against the transcription of the official eval.py
(``butd.reference.gqa_eval``) run on the files evaluate.py wrote; what it says without the optional
files; the attentions file; an answer spelled in two ways."""
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from butd import questions  # noqa: E402
from butd.evaluation.gqa_official import JsonArrayWriter  # noqa: E402
from butd.evaluation.report import report_path  # noqa: E402
from butd.features.reader import FeatureStore  # noqa: E402
from butd.reference.gqa_eval import gqa_eval  # noqa: E402
from butd.synthetic.scene import SceneModel, write_glove, write_tsv  # noqa: E402
from butd.tasks.gqa_metrics import METRICS, OfficialFiles, official_paths, steps_number  # noqa: E402
from butd.text import split_batch  # noqa: E402

import evaluate  # noqa: E402  (evaluate.py and train.py live at the repository root)
import train  # noqa: E402
from helpers import REAL_QUESTIONS, check_confusions, check_page  # noqa: E402

EMB = 16
FAST = ["--hidden", "32", "--bsz", "32", "--emb_dim", str(EMB), "--accelerator", "cpu", "--log_every", "5",
        "--answer_dropout", "0", "--attention_dropout", "0", "--lr", "0.01"]
SPELLED_TWICE = "Yes"      # one train and one testdev answer written so; every other one "yes"


# ---- the set: the real questions in the official layouts --------------------------------------------

def _box(row, k):
    """A scene-graph box (integer x, y, w, h in pixels) over feature box ``k % num_boxes`` of ``row``."""
    x0, y0, x1, y1 = row.boxes[k % row.num_boxes].tolist()
    return {"x": int(x0), "y": int(y0), "w": max(1, int(round(x1 - x0))), "h": max(1, int(round(y1 - y0)))}


def build_official_set(root, seed=0):
    """Under ``root``: GQA-Questions with the balanced files, ``testdev_all_questions/`` (the
    official chunked folder: the 155 balanced questions and unbalanced copies of some, which their
    originals entail), ``testdev_choices.json`` and ``testdev_sceneGraphs.json``; GQA-Features with
    the 5 images (20 to 36 boxes, so that some rows are padding); a GloVe file. Returns the paths."""
    with open(REAL_QUESTIONS) as f:
        real = json.load(f)
    rng = np.random.default_rng(seed)
    model = SceneModel(rng, 16)
    images = sorted({q["imageId"] for q in real.values()})
    rows = {img: model.image(rng, img, num_boxes=int(rng.integers(20, 37))) for img in images}
    qdir = os.path.join(root, "GQA-Questions")
    os.makedirs(qdir)
    # Unbalanced copies of every 4th question (same image and text), entailed by their original; every
    # other copy with another answer, so that the entailed questions are right and wrong.
    testdev, extras = {}, {}
    for k, (qid, q) in enumerate(real.items()):
        q = json.loads(json.dumps(q))
        if k % 4 == 0:
            copy = {**q, "isBalanced": False, "entailed": [], "equivalent": []}
            if k % 8 == 0:
                copy["answer"] = "no" if q["answer"] != "no" else "yes"
            extras["9" + qid] = copy
            q["entailed"] = q["entailed"] + ["9" + qid]
        testdev[qid] = q
    every = {**testdev, **extras}
    for q in every.values():   # the entailed ids this set holds (the rest are not in the excerpt)
        q["entailed"] = [e for e in q["entailed"] if e in every]
    spelled = next(qid for qid, q in testdev.items() if q["answer"] == "yes")
    testdev[spelled]["answer"] = SPELLED_TWICE
    assert sum(bool(q["entailed"]) for q in testdev.values()) > 40
    with open(os.path.join(qdir, "testdev_balanced_questions.json"), "w") as f:
        json.dump(testdev, f)
    chunks = os.path.join(qdir, "testdev_all_questions")
    os.makedirs(chunks)
    items = list(every.items())
    for c in range(3):
        with open(os.path.join(chunks, f"testdev_all_questions_{c}.json"), "w") as f:
            json.dump(dict(items[c::3]), f)
    # choices: valid the answers of the questions of the same detailed type, plausible a third of them
    by_type = {}
    for q in every.values():
        by_type.setdefault(q["types"]["detailed"], []).append(q["answer"])
    choices = {}
    for qid, q in every.items():
        valid = sorted(set(by_type[q["types"]["detailed"]]) | ({"yes", "no"} if q["types"]["structural"] != "query"
                                                               else set()))
        choices[qid] = {"valid": valid, "plausible": sorted({q["answer"], *valid[::3]})}
    with open(os.path.join(qdir, "testdev_choices.json"), "w") as f:
        json.dump(choices, f)
    scenes = {}
    for img in images:
        pointers = {p for q in every.values() if q["imageId"] == img
                    for part in ("question", "fullAnswer", "answer") for p in q["annotations"][part].values()}
        row = rows[img]
        objects = {oid: {"name": "thing", **_box(row, int(oid) * 7), "attributes": [], "relations": []}
                   for oid in sorted(pointers | {"999"})}
        scenes[img] = {"width": row.img_w, "height": row.img_h, "objects": objects}
    with open(os.path.join(qdir, "testdev_sceneGraphs.json"), "w") as f:
        json.dump(scenes, f)
    # train: the same questions (new ids), first one answered "Yes"; val and test a few
    train_qs = {"1" + qid: q for qid, q in testdev.items()}
    first = {"10000000": {**next(iter(testdev.values())), "answer": SPELLED_TWICE}}
    for name, split in (("train", {**first, **train_qs}),
                        ("val", {"2" + qid: q for qid, q in list(testdev.items())[:10]}),
                        ("test", {"3" + qid: {"question": q["question"], "imageId": q["imageId"], "isBalanced": True}
                                  for qid, q in list(testdev.items())[:10]})):
        with open(os.path.join(qdir, f"{name}_balanced_questions.json"), "w") as f:
            json.dump(split, f)
    features = os.path.join(root, "GQA-Features")
    write_tsv(os.path.join(features, "vg_gqa_obj36.tsv"), rows.values())
    write_tsv(os.path.join(features, "gqa_testdev_obj36.tsv"), rows.values())
    words, _ = split_batch([q["question"] for q in every.values()])
    glove = os.path.join(root, "GloVe", "glove.txt")
    write_glove(glove, rng, sorted(set(words)), EMB)
    return {"questions": qdir, "glove": glove, "rows": rows, "testdev": testdev, "every": every,
            "spelled": spelled}


@pytest.fixture(scope="module")
def official_set(tmp_path_factory, one_thread):
    """The set, and a BUTD and a FiLM checkpoint trained on it (the caches built on the way)."""
    root = str(tmp_path_factory.mktemp("gqa_official"))
    built = build_official_set(root)
    ckpt = str(tmp_path_factory.mktemp("ckpt"))
    data = ["--data", root, "--glove", built["glove"], "--checkpoint", ckpt, *FAST]
    _, butd = train.main(["--run_name", "official", *data, "--epochs", "12"])
    _, film = train.main(["--run_name", "film", "--model", "film", *data, "--epochs", "1"])
    return {**built, "root": root, "butd": butd.best_model_path, "film": film.best_model_path}


def run_evaluate(checkpoint, out, capsys, *argv):
    capsys.readouterr()
    scores = evaluate.main(["--checkpoint", checkpoint, "--out", str(out), *argv])
    return scores, capsys.readouterr().out


# ---- the printed block, read back ----------------------------------------------------------------

def printed_metrics(text):
    """{metric: its printed value text} from evaluate.py's official block."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"(\w+)\s+(not available \(.*\)|-?[\d.]+%?)( \(lower is better\))?$", line)
        if m and m.group(1) in METRICS:
            found[m.group(1)] = m.group(2)
    assert set(found) == set(METRICS), text
    return found


def printed_rows(text):
    """{(group, type): (accuracy text, count)} of evaluate.py's table, rows with questions only."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"(answer_type|structural|semantic|steps|words)\s+(\S+)\s+([\d.]+)%\s+(\d+)$", line)
        if m:
            rows[(m.group(1), m.group(2))] = (m.group(3), int(m.group(4)))
    return rows


def reference_rows(printed):
    """The same from the official script's lines: per structural, semantic type, steps, words."""
    groups = {"Accuracy / structural type:": "structural", "Accuracy / semantic type:": "semantic",
              "Accuracy / steps number:": "steps", "Accuracy / words number:": "words"}
    rows, group = {}, None
    for line in printed:
        if line in groups:
            group = groups[line]
        m = re.match(r"  (\S+): ([\d.]+)% \((\d+) questions\)$", line)
        if m:
            rows[(group, m.group(1))] = (m.group(2), int(m.group(3)))
    return rows


def reference_metrics(printed):
    return {m.group(1).lower(): m.group(2) for line in printed
            if (m := re.match(r"(\w+): ([\d.]+%?)", line)) and m.group(1).lower() in METRICS}


# ---- the tests -------------------------------------------------------------------------------------

def test_every_figure_equals_the_official_script_on_the_files_written(official_set, tmp_path, capsys, monkeypatch):
    s = official_set
    out = tmp_path / "testdev-predictions.json"
    scores, text = run_evaluate(s["butd"], out, capsys)
    attentions = tmp_path / "testdev-predictions-attentions.json"
    with open(out) as f:
        predictions = json.load(f)
    assert sorted(p["questionId"] for p in predictions) == sorted(s["every"])       # every question
    monkeypatch.chdir(s["questions"])    # the script finds the chunked folder relative to its directory
    printed, reference = gqa_eval(tier="testdev", questions="testdev_all_questions.json", predictions=str(out),
                                  attentions=str(attentions), consistency=True, grounding=True, objectFeatures=True)
    ours, theirs = printed_metrics(text), reference_metrics(printed)
    assert set(theirs) == set(METRICS)
    assert ours == {m: theirs[m] for m in METRICS}, (text, printed)
    for metric in METRICS:           # the scores file, to more than the printed 2 decimals
        assert scores["official"][metric] == pytest.approx(reference[metric], rel=1e-9, abs=1e-9), metric
    rows = printed_rows(text)
    assert {k: v for k, v in rows.items() if k[0] != "answer_type"} == reference_rows(printed)
    assert rows[("answer_type", "binary")][0] == theirs["binary"].rstrip("%")
    # the figures are not vacuous: every one computed, most neither 0 nor 100
    assert 0 < scores["official"]["accuracy"] < 100 and 0 < scores["official"]["consistency"] < 100
    assert 0 < scores["official"]["validity"] < 100 and 0 < scores["official"]["grounding"]
    assert len({steps_number(q["semantic"]) for q in s["testdev"].values()}) > 2
    assert scores["overall"]["count"] == len(s["testdev"]) and scores["steps"] and scores["words"]


def test_without_the_optional_files_those_figures_are_not_available(official_set, tmp_path, capsys, monkeypatch):
    s = official_set
    qdir = tmp_path / "q"
    shutil.copytree(s["questions"], qdir)
    shutil.rmtree(qdir / "testdev_all_questions")
    # balanced questions, choices and scene graphs: all but consistency, still the official script's
    out = tmp_path / "balanced.json"
    scores, text = run_evaluate(s["butd"], out, capsys, "--questions", str(qdir))
    figures = printed_metrics(text)
    assert figures["consistency"] == "not available (needs testdev_all_questions.json)"
    assert f"[*] the files a figure needs were looked for in {qdir} (--questions names where they are)" in text
    monkeypatch.chdir(qdir)
    printed, _ = gqa_eval(tier="testdev", questions="testdev_balanced_questions.json", predictions=str(out),
                          attentions=str(tmp_path / "balanced-attentions.json"), grounding=True, objectFeatures=True)
    theirs = reference_metrics(printed)
    assert {m: figures[m] for m in METRICS if m != "consistency"} == {m: theirs[m] for m in METRICS
                                                                      if m != "consistency"}
    assert {k: v for k, v in printed_rows(text).items() if k[0] != "answer_type"} == reference_rows(printed)
    # without choices and scene graphs: validity, plausibility and grounding say what they need
    os.remove(qdir / "testdev_choices.json")
    os.remove(qdir / "testdev_sceneGraphs.json")
    scores, text = run_evaluate(s["butd"], tmp_path / "bare.json", capsys, "--questions", str(qdir))
    figures = printed_metrics(text)
    assert figures["validity"] == figures["plausibility"] == "not available (needs testdev_choices.json)"
    assert figures["grounding"] == "not available (needs testdev_sceneGraphs.json)"
    assert figures["consistency"] == "not available (needs testdev_all_questions.json)"
    assert figures["accuracy"] == theirs["accuracy"] and "0.00" not in "".join(figures.values())
    assert scores["official"]["validity"] is None and scores["not_available"]["validity"] == \
        "needs testdev_choices.json"
    assert os.path.exists(tmp_path / "bare-attentions.json")        # written without scene graphs too
    # FiLM attends over no boxes: no attentions file, and grounding says why
    _, text = run_evaluate(s["film"], tmp_path / "film.json", capsys)
    assert printed_metrics(text)["grounding"] == "not available (FiLM)"
    assert not os.path.exists(tmp_path / "film-attentions.json")


def test_the_attentions_file_has_one_entry_per_balanced_question_over_the_real_boxes(official_set, tmp_path, capsys):
    s = official_set
    out = tmp_path / "p.json"
    run_evaluate(s["butd"], out, capsys)
    with open(tmp_path / "p-attentions.json") as f:
        attentions = json.load(f)
    assert sorted(a["questionId"] for a in attentions) == sorted(s["testdev"])    # the balanced ones only
    store = FeatureStore(os.path.join(s["root"], "GQA-Cache", "testdev.zarr"))
    boxes_of = dict(zip(store.image_ids().tolist(), store.num_boxes().tolist()))
    assert len(set(boxes_of.values())) > 1 and max(boxes_of.values()) == store.max_boxes   # some padding
    for a in attentions:
        cells = np.array(a["attention"], dtype=np.float64)
        image = s["testdev"][a["questionId"]]["imageId"]
        assert cells.shape == (boxes_of[image], 5)               # padded rows left out
        assert ((cells[:, :4] >= 0) & (cells[:, :4] <= 1)).all()
        assert (cells[:, 2] > cells[:, 0]).all() and (cells[:, 3] > cells[:, 1]).all()
        assert cells[:, 4].sum() == pytest.approx(1.0, abs=1e-4) and (cells[:, 4] >= 0).all()
    # the boxes are the image's, over its width and height
    row = s["rows"][image]
    expected = row.boxes[:row.num_boxes] / np.array([row.img_w, row.img_h, row.img_w, row.img_h])
    assert np.abs(cells[:, :4] - np.clip(expected, 0, 1)).max() < 1e-5


def test_the_report_of_an_all_questions_evaluation_shows_its_official_figures_and_the_attention(
        official_set, tmp_path, capsys):
    """--report where every question of the all-questions file is predicted (streamed): the gallery
    and confusions are the balanced questions', boxes of padded images included."""
    s = official_set
    out = tmp_path / "testdev-predictions.json"
    scores, text = run_evaluate(s["butd"], out, capsys, "--report")
    page_file = report_path(str(out))
    assert f"[*] report: {page_file}" in text
    page = check_page(page_file, s["butd"], "testdev", 48)
    check_confusions(page, s["butd"], "testdev", str(out))
    assert {c["attrs"]["data-question-id"] for c in page.cards} <= set(s["testdev"])  # balanced ones only
    with open(page_file, encoding="utf-8") as f:
        html = f.read()
    assert f"consistency   {scores['official']['consistency']:.2f}%" in html      # today's printed table
    assert f"grounding     {scores['official']['grounding']:.2f}%" in html
    assert "Not available:" not in html                                              # every file is there
    assert [i["alt"] for i in page.images][:2] == ["headline figures", "accuracy per answer type"]


def test_printed_accuracy_is_the_exact_match_accuracy_of_the_file_with_an_answer_spelled_twice(
        official_set, tmp_path, capsys):
    s = official_set
    qdir = os.path.join(s["root"], "GQA-Cache", "questions")
    _, label2ans = questions.load_answers(qdir)
    assert SPELLED_TWICE in label2ans and "yes" not in label2ans     # the first spelling met, as the spec
    assert "yes" in questions.load_spellings(qdir)                   # written as most answers spell it
    for extra in ([], ["--questions", str(tmp_path)]):               # with the question files, and from the cache alone
        out = tmp_path / f"p{len(extra)}.json"
        scores, text = run_evaluate(s["butd"], out, capsys, *extra)
        with open(out) as f:
            written = {p["questionId"]: p["prediction"] for p in json.load(f)}
        gold = {qid: q["answer"] for qid, q in s["testdev"].items()}
        exact = np.mean([written[qid] == answer for qid, answer in gold.items()])
        assert printed_metrics(text)["accuracy"] == f"{100 * exact:.2f}%"
        assert scores["overall"]["accuracy"] == pytest.approx(exact) and scores["overall"]["count"] == len(gold)
        assert "yes" in written.values() and SPELLED_TWICE not in written.values()


def test_official_chunks_are_found_in_number_order_and_arrays_stream_as_json_dumps(tmp_path):
    folder = tmp_path / "val_all_questions"
    folder.mkdir()
    for c in (10, 2, 0, 1):
        (folder / f"val_all_questions_{c}.json").write_text("{}")
    (folder / "notes.txt").write_text("")
    assert [os.path.basename(p) for p in official_paths(str(tmp_path), "val_all_questions.json")] == \
        [f"val_all_questions_{c}.json" for c in (0, 1, 2, 10)]
    assert official_paths(str(tmp_path), "val_choices.json") == []
    (tmp_path / "val_choices.json").write_text("{}")
    assert official_paths(str(tmp_path), "val_choices.json") == [str(tmp_path / "val_choices.json")]
    elements = [{"questionId": "1", "attention": [[0.1, 0.2, 0.3, 0.4, 1e-06]]}, {"questionId": "2", "x": []}]
    with JsonArrayWriter(str(tmp_path / "a.json")) as w:
        for e in elements:
            w.add(e)
    assert (tmp_path / "a.json").read_text() == json.dumps(elements)
    with pytest.raises(KeyError):
        with JsonArrayWriter(str(tmp_path / "b.json")) as w:
            w.add({})
            raise KeyError("stopped")
    assert not os.path.exists(tmp_path / "b.json") and not os.path.exists(tmp_path / "b.json.partial")


def edited_all_questions(official_set, tmp_path, edit):
    """A copy of the set's question files whose first testdev all-questions chunk ``edit`` changed
    (in place: a dict of question id -> entry); returns its directory."""
    qdir = tmp_path / "q"
    shutil.copytree(official_set["questions"], qdir)
    chunk = qdir / "testdev_all_questions" / "testdev_all_questions_1.json"
    with open(chunk) as f:
        questions_ = json.load(f)
    edit(questions_)
    with open(chunk, "w") as f:
        json.dump(questions_, f)
    return qdir


def test_an_all_questions_image_without_features_is_named(official_set, tmp_path, capsys):
    s = official_set

    def add_one(questions_):
        questions_["77777777"] = {**next(iter(questions_.values())), "imageId": "n404", "isBalanced": False}
    qdir = edited_all_questions(s, tmp_path, add_one)
    with pytest.raises(questions.QuestionFileError, match=r"testdev_all_questions_1\.json: question 77777777 asks "
                                                          r"about image n404.*--drop_missing"):
        run_evaluate(s["butd"], tmp_path / "p.json", capsys, "--questions", str(qdir))
    assert not os.path.exists(tmp_path / "p.json") and not os.path.exists(tmp_path / "p.json.partial")


def test_consistency_on_a_split_without_an_official_tier_says_so(tmp_path):
    """Only val's and testdev's all-questions files are predicted: train's, even where it is there,
    is not the missing file the figure said it needed."""
    (tmp_path / "train_all_questions.json").write_text("{}")
    assert OfficialFiles.find(str(tmp_path), "train").reasons(True, None)["consistency"] == \
        "computed on val and testdev only (their all-questions files)"
    assert OfficialFiles.find(str(tmp_path), "val").reasons(True, None)["consistency"] == \
        "needs val_all_questions.json"


def test_a_questions_directory_that_is_not_there_is_refused(official_set, tmp_path, capsys):
    """It was accepted, and every official figure but accuracy went missing, each needing a file."""
    with pytest.raises(NotADirectoryError, match=r"--questions .*nowhere: no such directory"):
        run_evaluate(official_set["butd"], tmp_path / "p.json", capsys, "--questions", str(tmp_path / "nowhere"))


def test_an_all_questions_file_without_some_cached_questions_is_refused(official_set, tmp_path, capsys):
    """Scoring the questions it holds would put other questions in the figures than in the
    answer-prior baseline (computed over the question cache) and say nothing."""
    s = official_set

    def remove_one(questions_):
        gone = next(q for q, entry in questions_.items() if entry.get("isBalanced"))
        del questions_[gone]
        for entry in questions_.values():
            entry["entailed"] = [e for e in entry.get("entailed", []) if e != gone]
            entry["equivalent"] = [e for e in entry.get("equivalent", []) if e != gone]
    qdir = edited_all_questions(s, tmp_path, remove_one)
    with pytest.raises(ValueError, match=r"testdev_all_questions \(\d+ chunks\): holds (\d+) of the \d+ testdev "
                                         r"questions of the question cache \(not \d+\): not the all-questions file"):
        run_evaluate(s["butd"], tmp_path / "p.json", capsys, "--questions", str(qdir))
    assert not os.path.exists(tmp_path / "p.json") and not os.path.exists(tmp_path / "p.json.partial")


def test_the_attention_tap_reads_butd_attention_without_changing_the_model():
    import torch

    from butd.evaluation.inference import AttentionTap, BatchPredictions
    from butd.models import BUTD, FiLM
    torch.manual_seed(0)
    model = BUTD(ntoken=20, num_answers=7, v_dim=8, emb_dim=6, hidden=16).eval()
    features, spatials = torch.rand(3, 5, 8), torch.rand(3, 5, 6)
    tokens, num_boxes = torch.randint(0, 21, (3, 4)), torch.tensor([[5], [3], [1]])
    with torch.no_grad():
        plain = model(features, spatials, tokens, num_boxes)
        with AttentionTap(model) as tap:
            tapped = model(features, spatials, tokens, num_boxes)
            weights = tap.weights[..., 0]
    assert torch.equal(plain, tapped) and not model.att._forward_hooks              # removed after use
    assert torch.allclose(weights.sum(dim=1), torch.ones(3)) and (weights[1, 3:] == 0).all() and weights[2, 0] == 1
    assert not AttentionTap(FiLM(ntoken=20, num_answers=7, v_dim=8, emb_dim=6, hidden=16)).available
    out = BatchPredictions(np.arange(3), plain, weights.numpy(), spatials[..., :4].numpy(), np.ones((3, 5), bool))
    labels, probabilities = out.top(3)
    assert (labels[:, 0] == out.labels).all() and (np.diff(probabilities, axis=1) <= 0).all()
    assert np.allclose(probabilities[:, 0], torch.softmax(plain, 1).max(1).values.numpy())
