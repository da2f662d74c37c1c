"""BatchDataset / GQADataModule: every batch is the store's rows for its questions, whatever the
worker count, store compression or feature cache; broken inputs fail naming what is wrong."""
import os

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from butd import schema
from butd.data import BatchDataset, GQADataModule, ThreadedLoader, make_loader
from butd.questions import QuestionArrays
from butd.sampler import ShardedBatchSampler
from butd.store import FeatureStore, StoreError
from test_store import write_store

NUM_Q = 150


def questions_for(image_ids, num_q=NUM_Q, seed=0, rows=None):
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(image_ids), num_q) if rows is None else np.asarray(rows)
    return QuestionArrays(
        question_ids=np.array([f"q{i}" for i in range(len(rows))]),
        image_ids=np.array([f"img{seed}_{r}" for r in rows]), image_rows=rows.astype(np.int64),
        tokens=rng.integers(0, 50, (len(rows), 40)), labels=rng.integers(-1, 9, len(rows)),
        structural=np.full(len(rows), ""), semantic=np.full(len(rows), ""))


def loader(dataset, workers=0, seed=1, epoch=0, batch_size=32):
    sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=workers,
                      collate_fn=lambda b: b, persistent_workers=workers > 0)


def check_aligned(batches, store_path, questions):
    """Each batch holds, for its questions (by ``index``), their tokens, labels and image rows."""
    group = zarr.open_group(str(store_path), mode="r")
    features, spatials = group["features"][:], group["spatials"][:]
    seen = []
    for b in batches:
        idx = b["index"].numpy()
        rows = questions.image_rows[idx]
        assert np.all(np.diff(rows) >= 0)  # sorted by feature row for sequential reads
        np.testing.assert_array_equal(b["features"].numpy(), features[rows])
        np.testing.assert_array_equal(b["spatials"].numpy(), spatials[rows])
        np.testing.assert_array_equal(b["tokens"].numpy(), questions.tokens[idx])
        np.testing.assert_array_equal(b["labels"].numpy(), questions.labels[idx])
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(questions)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "s.zarr"
    return path, questions_for(write_store(path))


def as_numpy(batches):
    return [{k: v.cpu().numpy().copy() for k, v in b.items()} for b in batches]


def test_batches_align_with_store_and_survive_being_held(store):
    path, qs = store
    batches = list(loader(BatchDataset(qs, FeatureStore(path))))  # all held at once: no buffer reuse
    check_aligned(batches, path, qs)
    assert batches[0]["features"].dtype == torch.float16 and batches[0]["tokens"].dtype == torch.int64


def test_zero_and_two_workers_give_the_same_batches(store):
    path, qs = store
    dataset = BatchDataset(qs, FeatureStore(path))
    zero, two = make_loader(dataset, 32, shuffle=True, seed=4), make_loader(dataset, 32, shuffle=True, seed=4,
                                                                           num_workers=2)
    assert isinstance(zero, ThreadedLoader)
    zero.sampler.set_epoch(3), two.sampler.set_epoch(3)
    zero, two = list(zero), as_numpy(two)  # the threaded batches all held at once: no buffer reuse
    check_aligned(zero, path, qs)
    assert len(zero) == len(two)
    for a, b in zip(as_numpy(zero), two):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_threaded_loader_raises_the_gather_error(tmp_path):
    path = tmp_path / "s.zarr"
    qs = questions_for(write_store(path))
    os.remove(os.path.join(path, "features", "c", "3", "0", "0"))
    with pytest.raises(StoreError, match=r"c/3/0/0: chunk 3 .* is missing"):
        list(make_loader(BatchDataset(qs, FeatureStore(path)), 32))


@pytest.mark.parametrize("cache", ["pinned", pytest.param("gpu", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_resident_caches_give_the_same_batches(store, cache):
    path, qs = store
    ref = as_numpy(loader(BatchDataset(qs, FeatureStore(path))))
    got = as_numpy(loader(BatchDataset(qs, FeatureStore(path, cache=cache))))
    for a, b in zip(ref, got):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_compressed_store_gives_the_same_batches(tmp_path, store):
    path, qs = store
    zpath = tmp_path / "z.zarr"
    write_store(zpath, compressor="zstd")
    ref = as_numpy(loader(BatchDataset(qs, FeatureStore(path))))
    got = as_numpy(loader(BatchDataset(qs, FeatureStore(zpath))))
    for a, b in zip(ref, got):
        assert all(np.array_equal(a[k], b[k]) for k in a)


def test_question_past_the_store_names_question_and_image(store):
    path, _ = store
    qs = questions_for(np.arange(37), rows=[3, 36, 37, 40])
    with pytest.raises(IndexError, match=r"question q2 \(image img0_37\) points at feature row 37.*37 images"):
        BatchDataset(qs, FeatureStore(path))


def test_single_index_is_refused_with_the_fix(store):
    path, qs = store
    with pytest.raises(TypeError, match="use_distributed_sampler=False"):
        BatchDataset(qs, FeatureStore(path))[3]


# -- the DataModule over a real cache: converter stores + question shards of the seeded sample ------

@pytest.fixture(scope="module")
def cache_dir(sample_dir, tmp_path_factory):
    from butd.convert import convert_tsv
    from butd.questions import build
    cache = tmp_path_factory.mktemp("cache")
    feats = os.path.join(sample_dir, "GQA-Features")
    for store_name, tsv in (("trainval", "vg_gqa_obj36.tsv"), ("testdev", "gqa_testdev_obj36.tsv")):
        convert_tsv(os.path.join(feats, tsv), str(cache / f"{store_name}.zarr"), chunk_images=8, workers=1,
                    progress=False)
    build(os.path.join(sample_dir, "GQA-Questions"), os.path.join(sample_dir, "GloVe", "glove.6B.300d.txt"),
          str(cache / "questions"), str(cache), workers=1, progress=False)
    return cache


def test_datamodule_batches_match_the_store_by_image_id(cache_dir):
    dm = GQADataModule(cache_dir, batch_size=16, num_workers=0)
    dm.setup("fit")
    assert dm.v_dim == 32 and dm.glove.shape[0] == dm.ntoken and dm.num_answers == len(dm.label2ans)
    for split, shuffle in (("train", True), ("testdev", False)):
        qs = dm.questions(split)
        group = zarr.open_group(str(cache_dir / f"{'testdev' if split == 'testdev' else 'trainval'}.zarr"))
        row_of = {i: r for r, i in enumerate(group["image_ids"][:].tolist())}
        batches = list(dm.dataloader_for(split, shuffle=shuffle))
        seen = np.concatenate([b["index"].numpy() for b in batches])
        assert sorted(seen) == list(range(len(qs)))
        for b in batches:
            rows = [row_of[qs.image_ids[i]] for i in b["index"].numpy()]  # found by image id, not row
            np.testing.assert_array_equal(b["features"].numpy(), group["features"][:][rows])
            np.testing.assert_array_equal(b["tokens"].numpy(), qs.tokens[b["index"].numpy()])
    val = list(dm.val_dataloader())
    # validation runs in question order, batch by batch (within a batch, sorted by feature row)
    assert [sorted(b["index"].tolist()) for b in val] == [list(range(i, min(i + 16, len(dm.questions("testdev")))))
                                                        for i in range(0, len(dm.questions("testdev")), 16)]


def test_lightning_sets_the_epoch_and_keeps_our_sampler(cache_dir):
    import pytorch_lightning as pl

    class Record(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.epochs = {}

        def training_step(self, batch, _):
            self.epochs.setdefault(self.current_epoch, []).extend(batch["index"].tolist())
            return (self.w * batch["features"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Record()
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         use_distributed_sampler=False)
    dm = GQADataModule(cache_dir, batch_size=32, num_workers=0)
    trainer.fit(model, datamodule=dm)
    n = len(dm.questions("train"))
    assert sorted(model.epochs[0]) == sorted(model.epochs[1]) == list(range(n))
    assert model.epochs[0] != model.epochs[1]


def test_missing_inputs_name_the_file_and_command(cache_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"questions.*questions_to_shards\.py"):
        GQADataModule(tmp_path).setup()
    os.symlink(cache_dir / "questions", tmp_path / "questions")
    with pytest.raises(FileNotFoundError, match=r"trainval\.zarr.*tsv_to_zarr\.py"):
        GQADataModule(tmp_path).setup()


def test_questions_built_against_another_store_are_refused(cache_dir, tmp_path):
    from butd.convert import convert_tsv
    from butd.questions import StaleCacheError
    for name in ("questions", "trainval.zarr"):
        os.symlink(cache_dir / name, tmp_path / name)
    # the same TSV converted again with other settings: another store, whose rows the shards do not index
    source = schema.read_attrs(str(cache_dir / "testdev.zarr")).source["path"]
    convert_tsv(source, str(tmp_path / "testdev.zarr"), chunk_images=4, workers=1, progress=False)
    with pytest.raises(StaleCacheError, match=r"testdev\.zarr.*questions_to_shards\.py"):
        GQADataModule(tmp_path).setup()
