"""Padding boxes are ignored: an image's logits are the same alone and padded to 36 or 100 boxes,
for BUTD (masked attention) and FiLM (masked average), in the models and through a real feature
store and the loader. Without ``num_boxes`` the padded image gives other logits, so the test can fail."""
import numpy as np
import pytest
import torch

from butd.features.convert import convert_tsv
from butd.features.reader import FeatureStore
from butd.loading.batches import BatchDataset
from butd.models import build_model
from butd.questions import QuestionArrays
from butd.synthetic.scene import SceneModel, write_tsv

V_DIM, NTOKEN, L = 16, 20, 14


def seeded_model(name: str):
    torch.manual_seed(0)
    return build_model(name, ntoken=NTOKEN, num_answers=7, v_dim=V_DIM, hidden=32, emb_dim=8).eval()


def padded(x: torch.Tensor, boxes: int) -> torch.Tensor:
    out = torch.zeros((x.shape[0], boxes) + x.shape[2:], dtype=x.dtype)
    out[:, :x.shape[1]] = x
    return out


@pytest.mark.parametrize("name", ["butd", "film"])
def test_an_image_padded_to_36_or_100_boxes_gives_its_own_logits(name):
    model = seeded_model(name)
    g = torch.Generator().manual_seed(1)
    features, spatials = torch.rand(3, 10, V_DIM, generator=g) * 3, torch.rand(3, 10, 6, generator=g)
    tokens = torch.randint(0, NTOKEN + 1, (3, L), generator=g)
    with torch.no_grad():
        alone = model(features, spatials, tokens)
        for boxes in (36, 100):
            f, s = padded(features, boxes), padded(spatials, boxes)
            masked = model(f, s, tokens, torch.full((3, 1), 10, dtype=torch.int32))
            torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-5)
            unmasked = model(f, s, tokens)
            assert (unmasked - alone).abs().max() > 1e-3, f"padding to {boxes} changed nothing without num_boxes"


@pytest.mark.parametrize("name", ["butd", "film"])
def test_each_question_of_a_batch_is_masked_by_its_own_box_count(name):
    model = seeded_model(name)
    g = torch.Generator().manual_seed(2)
    counts = [10, 4, 36]
    tokens = torch.randint(0, NTOKEN + 1, (len(counts), L), generator=g)
    images = [(torch.rand(1, k, V_DIM, generator=g), torch.rand(1, k, 6, generator=g)) for k in counts]
    with torch.no_grad():
        alone = torch.cat([model(f, s, tokens[i:i + 1]) for i, (f, s) in enumerate(images)])
        f = torch.cat([padded(f, 36) for f, _ in images])
        s = torch.cat([padded(s, 36) for _, s in images])
        together = model(f, s, tokens, torch.tensor(counts, dtype=torch.int32).view(-1, 1))
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def _store_with(tmp_path, rows, name):
    tsv = tmp_path / f"{name}.tsv"
    write_tsv(str(tsv), rows, "anderson")
    convert_tsv(str(tsv), str(tmp_path / f"{name}.zarr"), workers=1, progress=False, chunk_images=2)
    return FeatureStore(str(tmp_path / f"{name}.zarr"))


@pytest.mark.parametrize("name", ["butd", "film"])
def test_through_the_store_and_loader_a_10_box_image_scores_the_same_beside_36_or_100_box_images(tmp_path, name):
    """Adaptive features (Anderson's 10-100 boxes): the store pads every image to its largest count
    and the loader says how many rows are real."""
    rng = np.random.default_rng(3)
    scenes = SceneModel(rng, V_DIM)
    image = scenes.image(rng, "458752", num_boxes=10)
    model = seeded_model(name)
    tokens = torch.randint(0, NTOKEN + 1, (1, L), generator=torch.Generator().manual_seed(4))
    logits = {}
    for boxes in (10, 36, 100):
        others = [scenes.image(rng, str(900 + i), num_boxes=boxes) for i in range(2)]
        store = _store_with(tmp_path, [others[0], image, others[1]], f"max{boxes}")
        assert store.max_boxes == boxes
        questions = QuestionArrays(np.array(["1"]), np.array([["458752"]]), np.array([[1]]), tokens.numpy())
        batch = BatchDataset(questions, store)[[0]]
        assert ("num_boxes" in batch) == (boxes > 10)
        with torch.no_grad():
            logits[boxes] = model(batch["features"], batch["spatials"], batch["tokens"], batch.get("num_boxes"))
            if boxes > 10:
                unmasked = model(batch["features"], batch["spatials"], batch["tokens"])
                assert (unmasked - logits[10]).abs().max() > 1e-3
    torch.testing.assert_close(logits[36], logits[10], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[100], logits[10], rtol=1e-5, atol=1e-5)
