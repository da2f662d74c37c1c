"""Shared fixtures: a tiny seeded GQA-shaped sample (see butd.sample), made once per session."""
import pytest

from butd.sample import generate


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory):
    """A small sample in the real formats: 24 train / 6 val / 6 test / 8 testdev images, 6 questions
    each, 32-d features (the layout is the real one; only the sizes are small)."""
    root = tmp_path_factory.mktemp("sample")
    generate(str(root), seed=1, train_images=24, val_images=6, test_images=6, testdev_images=8,
             questions_per_image=6, feature_dim=32)
    return root
