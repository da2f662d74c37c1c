"""evaluate.py --report: the page of each task's sample (GQA, VQA v2, NLVR2; BUTD and FiLM), with and
without --images, parsed and checked against the model's own outputs: every section there, the
gallery's size and spread, every box drawn inside its picture and where the store puts it, the
attention labels equal to the attention the model gave those questions, the top answers and their
probabilities, the confusions against a count made from the predictions file, and nothing that
reaches outside the file. A slow test opens the page in headless Chromium."""
import os
import re
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from butd.evaluation.report import gather, report_path
from butd.loading import VQADataModule
from butd.synthetic import generator
from butd.tasks import get_task
from butd.training.config import load_config, parse_evaluate

import evaluate
import train
from helpers import SMALL_FLAGS, Page, check_confusions, check_page, cli_run, read_page

TINY = ["--accelerator", "cpu", "--hidden", "32", "--bsz", "16", "--num_workers", "0", "--log_every", "5",
        "--epochs", "2", "--lr", "0.01"]
EMB = 16
CHROMIUM = "/usr/bin/chromium"


def write_images(checkpoint: str, split: str, directory, every: int = 2) -> int:
    """JPEGs (half the store's size, so that the boxes must scale) for every ``every``-th image of the
    split, named as the task names them; returns how many were written."""
    config = load_config(checkpoint)
    task = get_task(config.data.dataset)
    dm = VQADataModule(task.name, config.data.paths()["cache"], batch_size=8, pin_memory=False)
    dm.setup("predict")
    arrays = dm.questions(split)
    ids, first = np.unique(arrays.image_ids.reshape(-1), return_index=True)
    sizes = dm.store(split).image_sizes(arrays.image_rows.reshape(-1)[first])
    rng = np.random.default_rng(0)
    os.makedirs(directory, exist_ok=True)
    for image_id, (w, h) in list(zip(ids.tolist(), sizes.tolist()))[::every]:
        pixels = rng.integers(0, 255, (max(1, h // 2), max(1, w // 2), 3), dtype=np.uint8)
        # the last name a task gives: NLVR2's JPEG rather than its PNG
        Image.fromarray(pixels).save(os.path.join(directory, task.image_files(image_id, split)[-1]), "JPEG")
    return len(ids[::every])


# ---- the runs: each task's sample, trained briefly -------------------------------------------------

@pytest.fixture(scope="module")
def runs(small_run, tmp_path_factory, one_thread):
    """{name: (checkpoint, split)}: GQA BUTD (conftest's ``small_run``), GQA FiLM on the same sample,
    VQA v2 and NLVR2 BUTD on small generated samples."""
    root, data, gqa = small_run
    made = {"gqa": (gqa, "testdev")}
    ckpt = str(tmp_path_factory.mktemp("report_ckpt"))
    _, film = train.main(["--run_name", "film", *data, "--checkpoint", ckpt, *SMALL_FLAGS, "--epochs", "1",
                          "--model", "film"])
    made["gqa-film"] = (film.best_model_path, "testdev")
    for task, sizes in (("vqa2", dict(train_images=40, val_images=8, test_images=2, questions_per_image=4,
                                      feature_dim=16, num_boxes=10)),
                        ("nlvr2", dict(train_sets=4, dev_sets=2, test_sets=1, feature_dim=16, num_boxes=7))):
        sample = str(tmp_path_factory.mktemp(f"report_{task}"))
        paths = generator(task).generate(sample, seed=3, emb_dim=EMB, **sizes)
        _, best = train.main(["--run_name", task, "--dataset", task, "--data", sample, "--glove", paths["glove"],
                              "--emb_dim", str(EMB), "--checkpoint", ckpt, *TINY])
        made[task] = (best.best_model_path, get_task(task).val_split)
    return made


def run_report(checkpoint, split, out, *flags):
    scores = evaluate.main(["--checkpoint", checkpoint, "--split", split, "--out", str(out), "--report", *flags])
    return scores, report_path(str(out))


@pytest.mark.parametrize("name", ["gqa", "gqa-film", "vqa2", "nlvr2"])
def test_the_report_without_images_draws_every_box_on_a_blank_canvas(runs, name, tmp_path, capsys):
    checkpoint, split = runs[name]
    task = get_task(load_config(checkpoint).data.dataset)
    out = tmp_path / f"{split}-predictions{task.predictions_suffix}"
    capsys.readouterr()
    run_report(checkpoint, split, out, "--report_examples", "12")
    page_file = report_path(str(out))
    assert f"[*] report: {page_file}" in capsys.readouterr().out
    page = check_page(page_file, checkpoint, split, 12, images_found=lambda page: 0)
    check_confusions(page, checkpoint, split, str(out))
    with open(page_file, encoding="utf-8") as f:
        assert "No image directory was given" in f.read()
    # the sample spreads over the types and results of the split (here 12 >= their strata)
    kind = "data-type-" + re.sub(r"[^a-z0-9]+", "-", task.gallery_type or "gold answer")
    assert len({c["attrs"][kind] for c in page.cards}) > 1
    assert {"result", *(k for k in page.filters if k.startswith("type-"))} == set(page.filters)
    assert kind[len("data-"):] in page.filters


@pytest.mark.parametrize("name", ["gqa", "vqa2", "nlvr2"])
def test_the_report_with_images_shows_the_files_found_and_says_which_are_missing(runs, name, tmp_path):
    checkpoint, split = runs[name]
    task = get_task(load_config(checkpoint).data.dataset)
    images = tmp_path / "images"
    write_images(checkpoint, split, images)
    found = {f for f in os.listdir(images)}

    def expected(page):
        return sum(bool(found & set(task.image_files(svg["attrs"]["data-image-id"], split)))
                   for card in page.cards for svg in card["svgs"])
    out = tmp_path / f"{split}-predictions{task.predictions_suffix}"
    run_report(checkpoint, split, out, "--images", str(images))   # the default gallery: 48, or the whole split
    page = check_page(report_path(str(out)), checkpoint, split, 48, images_found=expected)
    shown = sum(svg["href"] is not None for card in page.cards for svg in card["svgs"])
    assert 0 < shown < sum(len(card["svgs"]) for card in page.cards)
    with open(report_path(str(out)), encoding="utf-8") as f:
        text = f.read()
    assert f"found in {images}" in text and "blank canvas:" in text
    # counted once per image, however many cards show it (an NLVR2 image is on two statements' cards)
    ids = {svg["attrs"]["data-image-id"] for card in page.cards for svg in card["svgs"]}
    there = {i for i in ids if found & set(task.image_files(i, split))}
    assert f"{len(there)} of {len(ids)} images found in {images}" in text


def test_a_split_without_answers_gets_a_report_of_its_predictions(runs, tmp_path):
    checkpoint, _ = runs["gqa"]
    out = tmp_path / "test-predictions.json"
    scores, page_file = run_report(checkpoint, "test", out, "--report_examples", "6")
    assert scores["overall"]["count"] == 0
    page = check_page(page_file, checkpoint, "test", 6)
    assert {c["attrs"]["data-result"] for c in page.cards} == {"unscored"} and not page.confusions
    with open(page_file, encoding="utf-8") as f:
        text = f.read()
    assert "This split has no gold answers" in text and "No gold answers in this split" in text
    _, page_file = run_report(checkpoint, "test", out, "--report_examples", "0")
    _, page = read_page(page_file)
    assert not page.cards and page.sections[-1] == "gallery"


def test_report_flags_given_wrong_are_one_line_errors_before_any_inference(small_run, tmp_path, capsys):
    checkpoint = small_run[2]
    for flags, message, code in ((["--report", "--report_examples", "-1"], "'-1' is not an integer >= 0", 2),
                                 (["--images", str(tmp_path)], "add --report", 1),
                                 (["--report", "--images", str(tmp_path / "nowhere")], "nowhere: no such directory", 1)):
        status, err = cli_run(evaluate.main, ["--checkpoint", checkpoint, "--out", str(tmp_path / "p.json"), *flags],
                              capsys)
        assert status == code and err.count("\n") == 1 and message in err, (flags, err)
    assert not os.listdir(tmp_path)


def test_weight_labels_of_boxes_sharing_a_corner_do_not_overlap():
    from butd.evaluation.report.images import LABEL_SIZE, label_positions
    w, h = LABEL_SIZE
    rects = [(100, 50, 80, 60), (100, 50, 40, 100), (101, 51, 120, 30), (0, 0, 360, 240), (300, 200, 60, 40)]
    placed = label_positions(rects, (360, 240))
    for i, (x, y) in enumerate(placed):
        assert 0 <= x <= 360 - w and h <= y <= 240, (i, x, y)
        for j, (px, py) in enumerate(placed[:i]):
            assert not (x < px + w and px < x + w and y - h < py and py - h < y), (i, j, placed)
    assert placed[0] == (103, 50 + h + 1)     # the most attended box keeps its top-left corner


def test_the_gallery_samples_every_type_and_result_in_turn():
    kinds = ["a"] * 50 + ["b"] * 5 + ["c"] * 2
    results = ["right"] * 40 + ["wrong"] * 10 + ["wrong"] * 5 + ["right", "unscored"]
    picked = gather.sample_gallery(kinds, results, 8, seed=1)
    strata = Counter((kinds[p], results[p]) for p in picked)
    assert set(strata) == {("a", "right"), ("a", "wrong"), ("b", "wrong"), ("c", "right"), ("c", "unscored")}
    assert len(picked) == 8 and max(strata.values()) - min(strata.values()) <= 1 + 1   # c runs out first
    assert len(set(picked.tolist())) == len(picked)
    first = [(kinds[p], results[p]) for p in picked[:5]]
    assert len(set(first)) == 5                             # one of each stratum before any repeats
    np.testing.assert_array_equal(picked, gather.sample_gallery(kinds, results, 8, seed=1))   # seeded
    assert len(gather.sample_gallery(kinds, results, 100)) == len(kinds)


def test_confusions_count_only_questions_not_right_against_their_reference_answer():
    reference = np.array(["yes", "yes", "red", "red", "red", "2", "2", ""])
    predicted = np.array(["no", "yes", "blue", "blue", "green", "2", "3", "x"])
    scores = np.array([0.0, 1.0, 0.0, 0.0, 0.0, 0.3, 0.6, np.nan])   # a partly right "2": not a confusion
    rows, total = gather.confusions(reference, predicted, scores)
    assert rows == [("red", "blue", 2), ("2", "3", 1), ("red", "green", 1), ("yes", "no", 1)]
    assert total == 5


def test_the_report_flags_default_to_a_gallery_of_48():
    options = parse_evaluate(["--checkpoint", "c.ckpt"])
    assert (options.report, options.report_examples, options.images) == (False, 48, None)
    options = parse_evaluate(["--checkpoint", "c.ckpt", "--report", "--report_examples", "5", "--images", "d"])
    assert (options.report, options.report_examples, options.images) == (True, 5, "d")


# ---- a real browser ---------------------------------------------------------------------------------

def chromium(url: str, user_data, *flags) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={user_data}", "--enable-logging=stderr", "--v=0", *flags, url],
                          capture_output=True, text=True, timeout=120)


def page_errors(stderr: str) -> list:
    """Chromium's console errors and uncaught exceptions in its log."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
            or "Uncaught" in line or "Failed to load resource" in line]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"headless Chromium not installed ({CHROMIUM} absent; "
                                                          "`apt-get install chromium`)")
@pytest.mark.parametrize("name", ["gqa", "nlvr2"])
def test_the_report_renders_in_a_browser_and_its_filter_works(runs, name, tmp_path):
    checkpoint, split = runs[name]
    task = get_task(load_config(checkpoint).data.dataset)
    images = tmp_path / "images"
    write_images(checkpoint, split, images)
    out = tmp_path / f"{split}-predictions{task.predictions_suffix}"
    _, page_file = run_report(checkpoint, split, out, "--images", str(images))
    url = "file://" + os.path.abspath(page_file)
    shot = tmp_path / "page.png"
    done = chromium(url, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    assert not page_errors(done.stderr), page_errors(done.stderr)
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50, "a blank page"
    # the filter, from the address: only the wrong answers stay
    _, page = read_page(page_file)
    wrong = sum(c["attrs"]["data-result"] == "wrong" for c in page.cards)
    done = chromium(url + "#result=wrong", tmp_path / "profile", "--dump-dom")
    assert done.returncode == 0 and not page_errors(done.stderr), done.stderr[-2000:]
    dom = Page(done.stdout)
    assert 'data-ready="true"' in done.stdout
    kept = [c for c in dom.cards if "hidden" not in c["attrs"]]
    assert len(kept) == wrong and all(c["attrs"]["data-result"] == "wrong" for c in kept)
    assert f'id="shown">{wrong}<' in done.stdout
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
