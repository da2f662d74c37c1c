"""The real-format sets of tests/data/real/ (tests/data/make_real_sets.py): each is what the script
writes, every question's image is a row of the feature TSV of its split's store, every row is a real
row under a new id, and README's "First, on the real-format samples" commands, run as printed (in a
temporary directory in place of data/sample), go from the copy to the evaluation of each set."""
import hashlib
import json
import os
import re
import subprocess
import sys

import pytest

from butd.tasks import get_task

from helpers import DATA, REAL_TSV, store_files

ROOT = os.path.dirname(os.path.dirname(DATA))
sys.path.insert(0, DATA)
import make_real_sets  # noqa: E402  (tests/data/ is no package)

REAL = os.path.join(DATA, "real")
DATASETS = ("gqa", "vqa2", "nlvr2")
# where the commands evaluate, and how many questions that split holds
EVALUATED = {"gqa": ("testdev", 22), "vqa2": ("val2014", 1), "nlvr2": ("dev", 2)}


def digests(path) -> dict:
    """{file under path: its sha256} (a difference is then reported by file, without a byte diff)."""
    return {name: hashlib.sha256(data).hexdigest() for name, data in store_files(path).items()}


def tsv_ids(path) -> list:
    with open(path) as f:
        return [line.split("\t", 1)[0] for line in f]


def readme_commands() -> dict:
    """{dataset: the README's bash block that runs the walk-through on tests/data/real/<dataset>}."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"^```bash\n(.*?)^```", f.read(), flags=re.S | re.M)
    return {re.search(r"tests/data/real/(\w+)", b).group(1): b for b in blocks if "tests/data/real/" in b}


def test_the_sets_are_what_the_script_writes(tmp_path):
    make_real_sets.main(str(tmp_path / "real"))
    assert digests(tmp_path / "real") == digests(REAL)


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_question_image_is_a_row_of_its_splits_feature_file(dataset):
    task, root = get_task(dataset), os.path.join(REAL, dataset)
    features = os.path.join(root, task.features_dir)
    rows = {store: {task.image_key(i) for name in names for i in tsv_ids(os.path.join(features, name))}
            for store, names in task.stores.items()}
    assert all(rows.values()), rows   # every store has rows (the converter makes every store)
    for split in task.splits:
        if split.optional and not task.question_files(os.path.join(root, task.questions_dir), split.name):
            continue
        raw = task.read_split(os.path.join(root, task.questions_dir), split.name)
        assert len(raw) > 0, split.name
        asked = {task.image_key(i) for images in raw.image_ids for i in images}
        assert asked <= rows[split.store], (split.name, asked - rows[split.store])
    # one row per image, no row without a question
    assert sum(len(tsv_ids(os.path.join(features, n))) for names in task.stores.values() for n in names) == \
        sum(len(r) for r in rows.values())


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_row_is_a_real_row_under_another_id(dataset):
    with open(REAL_TSV) as f:
        real = {line.split("\t", 1)[1] for line in f}
    features = os.path.join(REAL, dataset, get_task(dataset).features_dir)
    for name in os.listdir(features):
        with open(os.path.join(features, name)) as f:
            assert all(line.split("\t", 1)[1] in real for line in f), name


def test_the_readme_has_the_commands_of_every_set():
    assert sorted(readme_commands()) == sorted(DATASETS)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", DATASETS)
def test_the_readme_commands_run_on_the_set(dataset, tmp_path):
    block = readme_commands()[dataset]
    assert block.count("data/sample") >= 5
    script = "set -euo pipefail\n" + re.sub(r"^python ", f"{sys.executable} ", block.replace("data/sample", str(tmp_path)),
                                            flags=re.M)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # the question cache kept every question (a question without its image's row would have failed it)
    summary = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('{"task"')))
    assert summary["task"] == dataset and not any(summary["dropped"].values())
    split, count = EVALUATED[dataset]
    assert summary["questions"][split] == count
    assert re.search(rf"^\[\*\] predictions \({count}\): ", done.stdout, flags=re.M), done.stdout[-2000:]
