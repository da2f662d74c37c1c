"""FeatureStore: memmap / first-layout compressed / resident-cache gathers agree with a direct zarr
read; broken stores fail with errors naming the file and the images. (Every layout and read mode:
test_gather.py.)"""
import os

import numpy as np
import pytest
import torch
import zarr

from butd.features import schema
from butd.features.reader import FeatureStore, StoreError

from helpers import direct, write_store


@pytest.fixture()
def store_path(tmp_path):
    write_store(tmp_path / "s.zarr")
    return tmp_path / "s.zarr"


ROWS = [36, 0, 7, 8, 8, 20, 3, 35, 16]  # unsorted, repeated, chunk edges and the padded last chunk


@pytest.mark.parametrize("sort", [False, True])
def test_memmap_gather_matches_zarr(store_path, sort):
    rows = sorted(ROWS) if sort else ROWS
    store = FeatureStore(store_path)
    assert store.layouts == {"features": "raw", "spatials": "raw"}
    f, s = store.gather(rows)
    ref_f, ref_s = direct(store_path, rows)
    assert f.dtype == torch.float16 and s.dtype == torch.float32
    np.testing.assert_array_equal(f.numpy(), ref_f)
    np.testing.assert_array_equal(s.numpy(), ref_s)
    assert (store.num_images, store.max_boxes, store.feature_dim) == (37, 5, 8)


def test_gather_into_given_buffers(store_path):
    store = FeatureStore(store_path)
    fo, so = torch.zeros(3, 5, 8, dtype=torch.float16), np.zeros((3, 5, 6), np.float32)
    f, s = store.gather([1, 2, 30], fo, so)
    assert f.data_ptr() == fo.data_ptr() and s.numpy().ctypes.data == so.ctypes.data
    np.testing.assert_array_equal(fo.numpy(), direct(store_path, [1, 2, 30])[0])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_first_compressed_layout_still_reads(tmp_path, dtype):
    path = tmp_path / "z.zarr"
    write_store(path, compressor="zstd", dtype=dtype)   # a compressed block per chunk, before sharding
    store = FeatureStore(path)
    assert store.layouts == {"features": "chunked", "spatials": "chunked"}
    for rows in (ROWS, sorted(ROWS)):
        f, s = store.gather(rows)
        np.testing.assert_array_equal(f.numpy(), direct(path, rows)[0])
        np.testing.assert_array_equal(s.numpy(), direct(path, rows)[1])


def test_pinned_cache_matches(store_path):
    plain, pinned = FeatureStore(store_path), FeatureStore(store_path, cache="pinned")
    for rows in (ROWS, sorted(ROWS)):
        for a, b in zip(plain.gather(rows), pinned.gather(rows)):
            assert torch.equal(a, b)
    assert pinned._resident["features"].shape == (37, 5, 8)


@pytest.mark.parametrize("cache", ["none", "pinned"])
def test_a_store_of_no_images_gathers_empty_batches(tmp_path, cache):
    path = tmp_path / "empty.zarr"
    write_store(path, num_images=0, compressor="zstd")
    f, s = FeatureStore(path, cache=cache).gather(np.array([], np.int64))
    assert f.shape == (0, 5, 8) and s.shape[0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_cache_matches(store_path):
    plain, gpu = FeatureStore(store_path), FeatureStore(store_path, cache="gpu")
    f, s = gpu.gather(ROWS)
    assert f.is_cuda and s.is_cuda
    ref_f, ref_s = plain.gather(ROWS)
    assert torch.equal(f.cpu(), ref_f) and torch.equal(s.cpu(), ref_s)


def test_pickled_store_reopens_lazily(store_path):
    import copy
    store = FeatureStore(store_path)
    store.gather([1])
    clone = copy.deepcopy(store)  # goes through __getstate__, like a spawned worker
    assert clone._reader is None
    np.testing.assert_array_equal(clone.gather([5])[0].numpy(), direct(store_path, [5])[0])


def test_missing_store(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.zarr.*tsv_to_zarr\.py"):
        FeatureStore(tmp_path / "nope.zarr")


def test_incomplete_store(tmp_path):
    write_store(tmp_path / "half.zarr", complete=False)
    with pytest.raises(StoreError, match=r"half\.zarr.*incomplete.*tsv_to_zarr\.py"):
        FeatureStore(tmp_path / "half.zarr")


def test_wrong_shape_is_rejected(tmp_path):
    path = tmp_path / "s.zarr"
    write_store(path)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["feature_dim"] = 16
    with pytest.raises(StoreError, match=r"features.zarr\.json.*promise"):
        FeatureStore(path)


def chunk_of(path, c, field="features"):
    return schema.chunk_file(str(path), next(f for f in schema.FIELDS if f.name == field), c)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_corrupt_chunk_names_file_and_images(tmp_path, damage, compressor):
    path = tmp_path / "s.zarr"
    write_store(path, compressor=compressor)
    fname = chunk_of(path, 2)
    if damage == "delete":
        os.remove(fname)
    else:
        with open(fname, "r+b") as f:
            f.truncate(os.path.getsize(fname) // 2)
    store = FeatureStore(path)
    store.gather([0, 1])  # other chunks still read
    with pytest.raises(StoreError, match=rf"{fname}.*rows 16\.\.23 \(images img0_16, img0_17, img0_18, \.\.\. img0_23\)"):
        store.gather([3, 17])


def test_row_past_store(store_path):
    with pytest.raises(IndexError, match=r"row 37 .*37 images"):
        FeatureStore(store_path).gather([1, 37])


def test_a_stores_residency_is_one_object_chosen_when_it_is_made(store_path):
    from butd.features.residency import Pinned, Streamed
    assert type(FeatureStore(store_path).residency) is Streamed and not FeatureStore(store_path).residency.resident
    pinned = Pinned()
    store = FeatureStore(store_path, cache=pinned)             # an object, or its --feature_cache name
    assert store.residency is pinned and store.residency.resident and not store.residency.on_device
    assert type(FeatureStore(store_path, cache="pinned").residency) is Pinned
    with pytest.raises(ValueError, match="cache must be one of"):
        FeatureStore(store_path, cache="disk")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="PyTorch sees none"):   # refused when made, not at the first batch
            FeatureStore(store_path, cache="gpu")
