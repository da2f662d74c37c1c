"""feature_cache="auto": a compressed store decoded once into memory when it fits, streamed when
not; the memory a cgroup leaves; the DataModule's choice over its train and validation stores."""
import os

import numpy as np
import pytest
import torch

from butd.features.reader import FeatureStore
from butd.loading import VQADataModule, cache_choice
from butd.loading.cache_choice import auto_cache, cgroup_room, resident_nbytes

from helpers import as_tensors, build_gqa_caches, write_store

GiB = 2 ** 30


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("choice")
    write_store(root / "raw.zarr")
    write_store(root / "zstd.zarr", compressor="zstd")
    return FeatureStore(root / "raw.zarr"), FeatureStore(root / "zstd.zarr")


def test_resident_bytes_are_the_decoded_fields(stores):
    raw, _ = stores
    # 37 images x 5 boxes: float16 features of 8, float32 spatials of 6
    exact = 37 * 5 * 8 * 2 + 37 * 5 * 6 * 4
    want = sum(1 << (n - 1).bit_length() for n in (37 * 5 * 8 * 2, 37 * 5 * 6 * 4)) if torch.cuda.is_available() else exact
    assert resident_nbytes(raw) == want


def test_compressed_store_is_resident_only_when_it_fits(stores):
    raw, zstd = stores
    need = resident_nbytes(zstd)
    assert auto_cache(raw, available=100 * GiB)[0] == "none"          # the page cache serves it at memory speed
    assert auto_cache(zstd, available=2 * need)[0] == "pinned"
    cache, why = auto_cache(zstd, available=2 * need - 1)
    assert cache == "none" and "would not fit" in why
    # every DDP rank of the machine holds a copy, and other resident stores count
    assert auto_cache(zstd, copies=2, available=4 * need)[0] == "pinned"
    assert auto_cache(zstd, copies=3, available=4 * need)[0] == "none"
    assert auto_cache(zstd, reserved=need, available=4 * need)[0] == "pinned"
    assert auto_cache(zstd, reserved=need + 1, available=4 * need)[0] == "none"


def _cgroup(tmp_path, proc_line: str, levels: dict):
    """A fake cgroup tree: ``levels`` maps a cgroup path to its (limit, usage, stat) files."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cgroup").write_text(proc_line + "\n")
    for path, files in levels.items():
        folder = tmp_path / "sys" / path.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (folder / name).write_text(text)
    return str(tmp_path / "cgroup"), str(tmp_path / "sys")


def test_cgroup_v2_room_is_the_tightest_level_less_what_is_not_page_cache(tmp_path):
    proc, root = _cgroup(tmp_path, "0::/jobs/me", {
        "/jobs/me": {"memory.max": "max\n", "memory.current": "100\n", "memory.stat": "anon 40\nfile 60\n"},
        "/jobs": {"memory.max": "1000\n", "memory.current": "700\n",
                  "memory.stat": "anon 450\nfile 250\nshmem 50\n"},
    })
    # the parent's limit binds; its page cache is reclaimable, its shared memory (in "file") is not
    assert cgroup_room(proc, root) == 1000 - 500


def test_cgroup_v1_room_and_no_limit(tmp_path):
    proc, root = _cgroup(tmp_path, "4:memory:/job\n3:cpu:/", {
        "memory/job": {"memory.limit_in_bytes": "2000\n", "memory.usage_in_bytes": "900\n",
                       "memory.stat": "cache 300\ntotal_cache 450\ntotal_shmem 50\nrss 500\n"},
        "memory": {"memory.limit_in_bytes": str(2 ** 63 - 4096), "memory.usage_in_bytes": "5",
                   "memory.stat": "total_cache 0\n"},
    })
    assert cgroup_room(proc, root) == 2000 - (900 - 400)
    proc, root = _cgroup(tmp_path / "free", "0::/", {"/": {"memory.max": "max", "memory.current": "1",
                                                          "memory.stat": "file 0\n"}})
    assert cgroup_room(proc, root) is None
    assert cgroup_room(str(tmp_path / "absent"), root) is None
    # a blank or odd line is passed over; a limit without statistics counts all its usage
    proc, root = _cgroup(tmp_path / "odd", "\nnonsense\n0::/job", {"/job": {"memory.max": "3000",
                                                                              "memory.current": "1000"}})
    assert cgroup_room(proc, root) == 2000


@pytest.fixture(scope="module")
def zstd_cache(sample_dir, tmp_path_factory):
    """The seeded sample's caches with zstd-compressed feature stores."""
    cache = tmp_path_factory.mktemp("gqa_zstd")
    build_gqa_caches(sample_dir, cache, compressor="zstd")
    return cache


def test_datamodule_auto_decodes_a_compressed_store_that_fits(zstd_cache, gqa_cache, monkeypatch):
    def batches(cache, feature_cache, workers):
        dm = VQADataModule("gqa", cache, batch_size=16, num_workers=workers, feature_cache=feature_cache)
        dm.setup("fit")
        loader = dm.train_dataloader()
        return dm, getattr(loader, "num_workers", 0), as_tensors(loader)   # a ThreadedLoader has none

    reference = batches(gqa_cache, "none", 0)[2]
    dm, workers, got = batches(zstd_cache, "auto", 2)
    assert dm.store("train").residency.name == "pinned" and workers == 0    # resident: gathered in the main process
    assert dm.store("testdev").residency.name == "pinned"                    # the validation store, beside it
    assert len(got) == len(reference)
    for a, b in zip(got, reference):   # the same batches as the uncompressed store's
        assert torch.equal(a["index"], b["index"])
        np.testing.assert_array_equal(a["features"].numpy(), b["features"].numpy())
        np.testing.assert_array_equal(a["spatials"].numpy(), b["spatials"].numpy())

    monkeypatch.setattr(cache_choice, "available_memory", lambda: 1000)   # too little: streamed
    dm, workers, got = batches(zstd_cache, "auto", 2)
    assert dm.store("train").residency.name == "none" and workers == 2
    assert [b["index"].tolist() for b in got] == [b["index"].tolist() for b in reference]
    dm, workers, _ = batches(gqa_cache, "auto", 1)
    assert dm.store("train").residency.name == "none" and workers == 1       # uncompressed: always streamed


def test_train_and_validation_stores_are_decided_together(zstd_cache, monkeypatch):
    dm = VQADataModule("gqa", zstd_cache, batch_size=16, num_workers=2, feature_cache="auto")
    dm.setup("fit")
    train = resident_nbytes(FeatureStore(os.path.join(zstd_cache, "trainval.zarr")))
    monkeypatch.setattr(cache_choice, "available_memory", lambda: int(train / cache_choice.MEMORY_FRACTION) + 1)
    # room for the train store alone: the validation store, asked for first, still streams
    val = dm.val_dataloader()
    assert dm.store("testdev").residency.name == "none" and dm.store("train").residency.name == "pinned"
    # ... in the main process too: no worker forked beside the resident copy
    assert getattr(val, "num_workers", 0) == 0


def test_a_streamed_training_store_keeps_its_workers_and_every_rank_follows_rank_zero(zstd_cache, monkeypatch):
    from types import SimpleNamespace
    train, val = (os.path.join(zstd_cache, f"{name}.zarr") for name in ("trainval", "testdev"))
    room_for_val = int(resident_nbytes(FeatureStore(val)) / cache_choice.MEMORY_FRACTION) + 1
    assert resident_nbytes(FeatureStore(train)) > resident_nbytes(FeatureStore(val))
    monkeypatch.setattr(cache_choice, "available_memory", lambda: room_for_val)
    dm = VQADataModule("gqa", zstd_cache, batch_size=16, num_workers=2, feature_cache="auto")
    dm.setup("fit")
    # the validation store would fit, the training store not: both stream, by the workers
    assert dm.store("testdev").residency.name == "none" and dm.store("train").residency.name == "none"
    assert getattr(dm.train_dataloader(), "num_workers", 0) == 2

    # two machines, a process each: this one has the memory for both stores, the other for neither
    monkeypatch.setattr(cache_choice, "available_memory", lambda: 100 * 2**30)
    reduced = []

    def reduce(tensor, reduce_op):
        reduced.append((int(tensor), reduce_op))
        return torch.minimum(tensor, torch.tensor(1000))

    def trainer(stage):
        dm = VQADataModule("gqa", zstd_cache, batch_size=16, num_workers=0, feature_cache="auto")
        dm.setup(stage)
        dm.trainer = SimpleNamespace(num_devices=1, world_size=2, global_rank=0,
                                     strategy=SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce))
        return dm

    dm = trainer("fit")
    assert dm.store("train").residency.name == "none" and dm.store("testdev").residency.name == "none"
    assert reduced == [(100 * 2**30, "min")]   # decided from the other machine's memory, not this one's


def test_validating_alone_reserves_no_memory_for_the_training_store(zstd_cache, monkeypatch):
    train = resident_nbytes(FeatureStore(os.path.join(zstd_cache, "trainval.zarr")))
    monkeypatch.setattr(cache_choice, "available_memory", lambda: int(train / cache_choice.MEMORY_FRACTION) + 1)
    for stage, val_cache in (("fit", "none"), ("validate", "pinned")):
        dm = VQADataModule("gqa", zstd_cache, batch_size=16, num_workers=0, feature_cache="auto")
        dm.setup(stage)
        # fitting, the training store takes the room first; validating, the validation store has it
        assert dm.store("testdev").residency.name == val_cache


def test_fitting_after_validating_decides_for_the_training_store(zstd_cache, monkeypatch):
    train = resident_nbytes(FeatureStore(os.path.join(zstd_cache, "trainval.zarr")))
    for room, workers, caches, train_workers in ((100 * 2**30, 2, ("pinned", "pinned"), 0),
                                                 (int(train / cache_choice.MEMORY_FRACTION) + 1, 2, ("none", "none"), 2)):
        monkeypatch.setattr(cache_choice, "available_memory", lambda room=room: room)
        dm = VQADataModule("gqa", zstd_cache, batch_size=16, num_workers=workers, feature_cache="auto")
        dm.setup("validate")
        assert dm.store("testdev").residency.name == "pinned" and getattr(dm.val_dataloader(), "num_workers", 0) == 0
        dm.setup("fit")   # trainer.validate(...), then trainer.fit(...) with the same DataModule
        loader = dm.train_dataloader()
        # without room for both, the training store streams by its workers, and so does the
        # validation store, opened again
        assert (dm.store("train").residency.name, dm.store("testdev").residency.name) == caches
        assert getattr(loader, "num_workers", 0) == train_workers



def test_a_fixed_feature_cache_gives_every_store_its_residency(gqa_cache):
    for name, resident in (("none", False), ("pinned", True)):
        dm = VQADataModule("gqa", gqa_cache, batch_size=16, num_workers=2, feature_cache=name)
        dm.setup("fit")
        assert {dm.store(s).residency.name for s in ("train", "testdev")} == {name}
        assert dm.store("train") is dm.store("train")               # chosen and opened once per store
        assert getattr(dm.train_dataloader(), "num_workers", 0) == (0 if resident else 2)
    with pytest.raises(ValueError, match="--feature_cache must be auto or one of none, pinned, gpu"):
        VQADataModule("gqa", gqa_cache, feature_cache="disk")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--feature_cache gpu .* PyTorch sees none"):
            VQADataModule("gqa", gqa_cache, feature_cache="gpu")
