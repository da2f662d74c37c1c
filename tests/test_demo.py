"""The demo and its generators never write over a user's files, and the demos of the three datasets
leave each other alone."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from butd import demo
from butd.synthetic import generator
from butd.synthetic.guard import RECORD

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"gqa": dict(train_images=4, val_images=2, test_images=2, testdev_images=2, questions_per_image=2,
                    feature_dim=8, num_boxes=4),
        "vqa2": dict(train_images=4, val_images=2, test_images=2, questions_per_image=2, feature_dim=8,
                     num_boxes=4),
        "nlvr2": dict(train_sets=2, dev_sets=1, test_sets=1, feature_dim=8, num_boxes=4)}
# Where the README puts each task's real data under data/, and what a generator would write there.
REAL = {"gqa": ["GQA-Questions/train_balanced_questions.json", "GQA-Questions/testdev_balanced_questions.json",
                "GQA-Features/vg_gqa_obj36.tsv"],
        "vqa2": ["VQA2-Questions/v2_OpenEnded_mscoco_train2014_questions.json",
                 "VQA2-Features/train2014_obj36.tsv"],
        "nlvr2": ["NLVR2-Questions/train.json", "NLVR2-Features/train_obj36.tsv"],
        "glove": ["GloVe/glove.6B.300d.txt"]}


def plant(root) -> dict:
    """Real-looking files where the README puts real data: relative path -> sha256."""
    planted = {}
    for k, path in enumerate(p for paths in REAL.values() for p in paths):
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write("the 0.418 0.24968 -0.41242\n" if path.startswith("GloVe") else json.dumps({"user": k}))
        planted[path] = digest(full)
    return planted


def digest(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def unchanged(root, planted) -> bool:
    return all(digest(os.path.join(root, p)) == h for p, h in planted.items())


@pytest.mark.parametrize("task", ["gqa", "vqa2", "nlvr2"])
def test_a_generator_refuses_to_write_over_files_it_did_not_write(task, tmp_path):
    planted = plant(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(FileExistsError, match="not written by this generator") as refused:
        generator(task).generate(str(tmp_path), **TINY[task])
    assert os.path.join(str(tmp_path), REAL[task][0]) in str(refused.value) and "--force" in str(refused.value)
    assert unchanged(tmp_path, planted)
    assert sorted(os.listdir(tmp_path)) == before          # nothing half-written beside them


def test_the_generator_command_refuses_in_one_line(tmp_path):
    planted = plant(tmp_path)
    out = subprocess.run([sys.executable, "-m", "butd.synthetic.nlvr2", "--out", str(tmp_path), "--quick"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: ") and "GloVe" in out.stderr
    assert unchanged(tmp_path, planted)


def test_force_replaces_and_a_sample_is_written_once(tmp_path):
    plant(tmp_path)
    first = generator("gqa").generate(str(tmp_path), force=True, **TINY["gqa"])
    assert first["written"]
    glove = os.path.join(tmp_path, REAL["glove"][0])
    stamp = os.stat(glove).st_mtime_ns
    again = generator("gqa").generate(str(tmp_path), **TINY["gqa"])
    assert not again["written"] and os.stat(glove).st_mtime_ns == stamp
    # other settings: the generator's own files are written anew, without --force
    other = generator("gqa").generate(str(tmp_path), **{**TINY["gqa"], "seed": 1})
    assert other["written"]
    # a file the user edited since is theirs again
    with open(glove, "a") as f:
        f.write("mine 0.1 0.2 0.3\n")
    with pytest.raises(FileExistsError, match="glove.6B.300d.txt"):
        generator("gqa").generate(str(tmp_path), **TINY["gqa"])


def glove_vectors(path) -> dict:
    with open(path) as f:
        return {line.split(" ", 1)[0]: line for line in f}


def test_samples_of_several_tasks_in_one_directory_keep_each_others_words(tmp_path):
    gqa = generator("gqa").generate(str(tmp_path), **TINY["gqa"])
    before = glove_vectors(gqa["glove"])
    generator("nlvr2").generate(str(tmp_path), **TINY["nlvr2"])
    after = glove_vectors(gqa["glove"])
    assert len(after) > len(before) and all(after[w] == line for w, line in before.items())
    # both samples are still whole: neither is rewritten
    assert not generator("gqa").generate(str(tmp_path), **TINY["gqa"])["written"]
    assert not generator("nlvr2").generate(str(tmp_path), **TINY["nlvr2"])["written"]
    with open(os.path.join(tmp_path, RECORD)) as f:
        assert set(json.load(f)["samples"]) == {"gqa", "nlvr2"}


def test_the_demo_works_in_a_directory_of_its_own_per_dataset():
    assert demo.demo_dir("data", "gqa") == os.path.join("data", "demo", "gqa")
    assert demo.demo_dir("data", "nlvr2", quick=True) == os.path.join("data", "demo", "nlvr2-quick")


@pytest.mark.slow
def test_the_demos_leave_real_data_and_each_other_alone(tmp_path, capsys):
    """gqa, nlvr2, vqa2, gqa in one data directory with real-looking files planted where the README
    puts real data: every planted file is unchanged, and the second GQA run scores as the first."""
    planted = plant(tmp_path)
    first = demo.main(["--data", str(tmp_path), "--dataset", "gqa", "--quick"])
    for task in ("nlvr2", "vqa2"):
        other = demo.main(["--data", str(tmp_path), "--dataset", task, "--quick"])
        assert other["scores"]["overall"]["accuracy"] > other["scores"]["baseline_score"] + 0.05, task
    second = demo.main(["--data", str(tmp_path), "--dataset", "gqa", "--quick"])
    assert unchanged(tmp_path, planted)
    assert first["checkpoint"] != second["checkpoint"]            # a second run, not the first one again
    for key in ("overall", "structural", "semantic"):
        assert second["scores"][key] == first["scores"][key]
    assert first["scores"]["overall"]["accuracy"] > first["scores"]["baseline_score"]
    assert f"    report             {second['report']}" in capsys.readouterr().out
    with open(second["report"], encoding="utf-8") as f:
        assert 'data-section="gallery"' in f.read()
    written = {os.path.relpath(os.path.join(d, f), tmp_path) for d, _, files in os.walk(tmp_path) for f in files}
    assert {p for p in written if not p.startswith("demo" + os.sep)} == set(planted)


def test_two_demos_of_one_directory_take_turns(monkeypatch, tmp_path, capsys):
    """A second demo of the same directory waits for the first: running beside it, it evaluated and
    reported the first one's run (the newest in the directory) as its own."""
    import threading

    from butd.build_lock import build_lock
    started, release, held = [], threading.Event(), threading.Event()

    def fake_run(step, args, capture=False):
        started.append(step)
        raise StopIteration

    def first_demo():       # holds the directory as a running demo does
        with build_lock(demo.demo_dir(str(tmp_path), "gqa", quick=True)):
            held.set()
            release.wait(30)

    monkeypatch.setattr(demo, "_run", fake_run)
    holder = threading.Thread(target=first_demo)
    holder.start()
    held.wait(30)
    second = threading.Thread(target=lambda: pytest.raises(StopIteration, demo.main,
                                                           ["--data", str(tmp_path), "--quick"]))
    second.start()
    second.join(1.0)
    assert not started and second.is_alive()                     # waiting, not generating
    release.set()
    second.join(30)
    holder.join(30)
    assert started == ["1. generate the sample"]
    assert "waiting for the other demo in" in capsys.readouterr().out


@pytest.mark.parametrize("written", [True, False])
def test_a_sample_written_anew_makes_its_stores_anew(monkeypatch, tmp_path, written):
    """The demo's sample rewritten (its settings changed since the last demo in that directory): its
    stores are converted again, not refused as made from other input; a sample left as it was keeps them."""
    from butd.synthetic.command import ALREADY_THERE
    ran = []

    def fake_run(step, args, capture=False):
        ran.append(args)
        if len(ran) == 2:
            raise StopIteration      # enough: the conversion's command line is known
        return "[*] written" if written else f"[*] the sample in x {ALREADY_THERE} (same settings)"

    monkeypatch.setattr(demo, "_run", fake_run)
    with pytest.raises(StopIteration):
        demo.main(["--data", str(tmp_path), "--dataset", "nlvr2", "--quick"])
    assert ("--overwrite" in ran[1]) == written
