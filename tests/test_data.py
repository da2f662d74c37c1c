"""BatchDataset / loaders / VQADataModule: every batch is the store's rows for its questions, whatever the
worker count, store compression or feature cache; broken inputs fail naming what is wrong; a loader
saves the position its consumer reached, and resumes there."""
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from butd.features import schema
from butd.features.reader import FeatureStore, StoreError
from butd.loading import BatchDataset, ShardedBatchSampler, ThreadedLoader, VQADataModule, make_loader

from helpers import as_tensors, questions_for, write_store


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
        rows = questions.image_rows[idx, 0]
        assert np.all(np.diff(rows) >= 0)  # sorted by feature row for sequential reads
        np.testing.assert_array_equal(b["features"].numpy(), features[rows])
        np.testing.assert_array_equal(b["spatials"].numpy(), spatials[rows])
        np.testing.assert_array_equal(b["tokens"].numpy(), questions.tokens[idx])
        np.testing.assert_array_equal(b["labels"].numpy(), questions.targets["labels"][idx])
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
    zero, two = as_numpy(zero), as_numpy(two)   # each copied before the next is requested
    check_aligned([{k: torch.from_numpy(v) for k, v in b.items()} for b in zero], path, qs)
    assert len(zero) == len(two)
    for a, b in zip(zero, two):
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_threaded_loader_reuses_a_fixed_ring_of_buffers(store):
    """Batches are gathered into a ring of slots allocated once: memory comes back every ring turn,
    and a slot is rewritten only after the consumer asked for the next batch (until then it holds it)."""
    path, qs = store
    loader = make_loader(BatchDataset(qs, FeatureStore(path)), 16, shuffle=True, seed=2, prefetch_factor=2)
    size = loader.ring().size
    pointers = []
    for j, batch in enumerate(loader):
        pointers.append(batch["features"].data_ptr())
        if j < size:   # the producer runs ahead, but never into the batch the consumer holds
            copy = batch["features"].clone()
            time.sleep(0.05)
            assert torch.equal(batch["features"], copy)
    assert len(pointers) > size and pointers[size] == pointers[0] and len(set(pointers)) == size
    for _ in range(2):   # a new epoch, and one abandoned after a batch, restart the ring cleanly
        next(iter(loader))
    check_aligned(as_tensors(loader), path, qs)


class _FilledBy(BatchDataset):
    """Also writes the filling process's id into the batch's ``tokens``."""

    def fill(self, indices, out):
        batch = super().fill(indices, out)
        batch["tokens"][:, 0] = os.getpid()
        return batch


def test_worker_loader_fills_a_shared_ring_allocated_once(store):
    """Worker processes write each batch into a slot of one shared ring; the main process reads the
    very memory (no per-batch tensors cross processes), and an abandoned pass leaves no worker stuck."""
    path, qs = store
    loader = make_loader(BatchDataset(qs, FeatureStore(path)), 16, shuffle=True, seed=2, num_workers=2)
    size = loader.ring().size
    slots = {t.data_ptr() for slot in loader.ring().slots for t in slot.values()}
    pointers = [batch["features"].data_ptr() for batch in loader]
    assert len(pointers) > size and set(pointers) <= slots and len(set(pointers)) <= size
    next(iter(loader))                       # a pass left after one batch
    check_aligned(as_tensors(loader), path, qs)


def test_worker_processes_serve_every_pass_and_a_pass_left_early_does_not_disturb_the_next(store):
    """The same workers (kept store, kept page mappings) fill every epoch; passes left after 1 and
    after ring-size + 1 batches (with batches of the left pass still queued or being written) are
    followed by complete, correct ones."""
    path, qs = store
    loader = make_loader(_FilledBy(qs, FeatureStore(path)), 8, shuffle=True, seed=2, num_workers=2)
    def fillers(batches):
        return {int(b["tokens"][0, 0]) for b in batches}
    first = fillers(loader)
    assert len(first) == 2 and os.getpid() not in first
    for leave_after in (1, loader.ring().size + 1, 1):
        loader.sampler.set_epoch(leave_after)
        passing = iter(loader)
        for _ in range(leave_after):
            next(passing)
        passing.close()
        batches = as_tensors(loader)
        assert fillers(batches) == first
        for b in batches:
            b["tokens"][:, 0] = torch.from_numpy(qs.tokens[b["index"].numpy(), 0])
        check_aligned(batches, path, qs)


def test_ctrl_c_reaching_the_workers_leaves_them_serving(store):
    """A terminal's Ctrl-C reaches the workers too: they ignore it, and the next pass uses them."""
    path, qs = store
    loader = make_loader(_FilledBy(qs, FeatureStore(path)), 8, shuffle=True, seed=2, num_workers=2)
    workers = {int(b["tokens"][0, 0]) for b in loader}
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    time.sleep(0.2)
    assert {int(b["tokens"][0, 0]) for b in loader} == workers


class _Slow(_FilledBy):
    def fill(self, indices, out):
        time.sleep(0.05)   # workers are caught writing a slot
        return super().fill(indices, out)


def test_a_worker_killed_mid_pass_fails_that_pass_and_the_next_starts_fresh_workers(store):
    """A worker killed (e.g. by the OOM killer) while writing a slot: that pass raises, and the next
    pass, with new workers, reuses the dead writer's slot instead of waiting for it forever."""
    path, qs = store
    loader = make_loader(_Slow(qs, FeatureStore(path)), 8, shuffle=True, seed=2, num_workers=2)
    passing = iter(loader)
    victim = int(next(passing)["tokens"][0, 0])
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="DataLoader worker"):
        for _ in passing:
            pass
    done = []
    thread = threading.Thread(target=lambda: done.append(as_tensors(loader)), daemon=True)
    thread.start()
    thread.join(60)
    assert done, "the pass after a killed worker hangs"
    batches, = done
    assert victim not in {int(b["tokens"][0, 0]) for b in batches}
    for b in batches:
        b["tokens"][:, 0] = torch.from_numpy(qs.tokens[b["index"].numpy(), 0])
    check_aligned(batches, path, qs)


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

def test_datamodule_batches_match_the_store_by_image_id(gqa_cache):
    dm = VQADataModule("gqa", gqa_cache, batch_size=16, num_workers=0)
    dm.setup("fit")
    assert dm.v_dim == 32 and dm.glove.shape[0] == dm.ntoken and dm.num_answers == len(dm.label2ans)
    for split, shuffle in (("train", True), ("testdev", False)):
        qs = dm.questions(split)
        group = zarr.open_group(str(gqa_cache / f"{'testdev' if split == 'testdev' else 'trainval'}.zarr"))
        row_of = {i: r for r, i in enumerate(group["image_ids"][:].tolist())}
        batches = as_tensors(dm.dataloader_for(split, shuffle=shuffle))
        seen = np.concatenate([b["index"].numpy() for b in batches])
        assert sorted(seen) == list(range(len(qs)))
        for b in batches:
            rows = [row_of[qs.image_ids[i, 0]] for i in b["index"].numpy()]  # found by image id, not row
            np.testing.assert_array_equal(b["features"].numpy(), group["features"][:][rows])
            np.testing.assert_array_equal(b["tokens"].numpy(), qs.tokens[b["index"].numpy()])
    val = as_tensors(dm.val_dataloader())
    # validation runs in question order, batch by batch (within a batch, sorted by feature row)
    assert [sorted(b["index"].tolist()) for b in val] == [list(range(i, min(i + 16, len(dm.questions("testdev")))))
                                                        for i in range(0, len(dm.questions("testdev")), 16)]


def test_lightning_sets_the_epoch_and_keeps_our_sampler(gqa_cache):
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
    dm = VQADataModule("gqa", gqa_cache, batch_size=32, num_workers=0)
    trainer.fit(model, datamodule=dm)
    n = len(dm.questions("train"))
    assert sorted(model.epochs[0]) == sorted(model.epochs[1]) == list(range(n))
    assert model.epochs[0] != model.epochs[1]


def test_missing_inputs_name_the_file_and_command(gqa_cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"questions.*questions_to_shards\.py"):
        VQADataModule("gqa", tmp_path).setup()
    os.symlink(gqa_cache / "questions", tmp_path / "questions")
    with pytest.raises(FileNotFoundError, match=r"trainval\.zarr.*tsv_to_zarr\.py"):
        VQADataModule("gqa", tmp_path).setup()


def test_questions_built_against_another_store_are_refused(gqa_cache, tmp_path):
    from butd.features.convert import convert_tsv
    from butd.questions import StaleCacheError
    for name in ("questions", "trainval.zarr"):
        os.symlink(gqa_cache / name, tmp_path / name)
    # the same TSV converted again with other settings: another store, whose rows the shards do not index
    source = schema.read_attrs(str(gqa_cache / "testdev.zarr")).source["path"]
    convert_tsv(source, str(tmp_path / "testdev.zarr"), chunk_images=4, workers=1, progress=False)
    with pytest.raises(StaleCacheError, match=r"testdev\.zarr.*questions_to_shards\.py"):
        VQADataModule("gqa", tmp_path).setup()


@pytest.mark.parametrize("workers", [0, 1])
def test_the_loader_saves_what_its_consumer_took(tmp_path, workers):
    ids = write_store(tmp_path / "s.zarr", num_images=37)
    dataset = BatchDataset(questions_for(ids, 100), FeatureStore(str(tmp_path / "s.zarr")))

    def loader():
        made = make_loader(dataset, batch_size=8, shuffle=True, seed=3, num_workers=workers, prefetch_factor=2)
        made.sampler.set_epoch(1)
        return made
    whole = [b["index"].tolist() for b in loader()]
    first = loader()
    it = iter(first)
    taken = [next(it)["index"].tolist() for _ in range(3)]        # the loader has gathered more by now
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (1, 3) and taken == whole[:3]
    again = loader()
    again.load_state_dict(state)
    again.sampler.set_epoch(1)                                    # as Lightning does on resume
    assert [b["index"].tolist() for b in again] == whole[3:]
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (2, 0)   # a finished epoch
    again.sampler.set_epoch(3)  # set_epoch before the pass begins (a checkpoint saved at epoch start)
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (3, 0)
    again.load_state_dict(state)
    again.sampler.set_epoch(2)  # another epoch than the restored position's: that one starts at 0
    assert (again.state_dict()["epoch"], again.state_dict()["batches"]) == (2, 0)
