"""Shared fixtures: a tiny seeded GQA-shaped sample (butd.synthetic.gqa) and its caches, made once
per session, and a small run of train.py on another one. Builders and reference code shared by
several test files live in helpers.py."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the commands (train.py, evaluate.py, converters/*.py) are scripts, imported by the tests that run them
sys.path[:0] = [ROOT, os.path.join(ROOT, "converters")]

from butd.synthetic.gqa import generate  # noqa: E402

from helpers import SMALL_FLAGS, build_gqa_caches, make_small_sample  # noqa: E402


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small sample in the real formats: 24 train / 6 val / 6 test / 8 testdev images, 6 questions
    each, 32-d features (the layout is the real one; only the sizes are small)."""
    root = tmp_path_factory.mktemp("sample")
    generate(str(root), seed=1, train_images=24, val_images=6, test_images=6, testdev_images=8,
             questions_per_image=6, feature_dim=32)
    return root


@pytest.fixture(scope="session")
def gqa_cache(sample_dir, tmp_path_factory):
    """The sample's feature stores and question cache, made by the real converters."""
    cache = tmp_path_factory.mktemp("gqa_cache")
    build_gqa_caches(sample_dir, cache)
    return cache


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's training runs: the test machine's cores are shared, and
    one thread is faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """``SMALL_SAMPLE`` and one epoch of train.py on it (which builds the caches on the way):
    (sample root, its --data/--glove flags, the best checkpoint)."""
    import train
    root = tmp_path_factory.mktemp("small_sample")
    data = make_small_sample(root)
    ckpt = tmp_path_factory.mktemp("small_ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, checkpoints = train.main(["--run_name", "t", *data, "--checkpoint", str(ckpt), *SMALL_FLAGS, "--epochs", "1"])
    finally:
        torch.set_num_threads(threads)
    return root, data, checkpoints.best_model_path
