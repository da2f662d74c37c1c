"""butd.features.batch_io through FeatureStore.gather: every store layout (uncompressed, sharded
zstd/blosc as the converter writes them, the first compressed layout) and every read mode gives the
rows zarr itself reads; the automatic mode moves between memory maps and reads as the page cache
empties and fills; damaged shards name their file and images."""
import os

import numpy as np
import pytest
import torch

from butd.features import batch_io
from butd.features.convert import convert_tsv
from butd.features.reader import FeatureStore, StoreError

from helpers import direct, make_tsv, write_store

ROWS = [40, 0, 7, 8, 8, 20, 3, 35, 16, 39]  # unsorted, repeated, chunk edges, the padded last chunk


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The same 41 images converted uncompressed, zstd and blosc, at two sizes: 36 boxes of 64-d
    make a chunk a whole number of pages (one flat map); 10-35 boxes of 32-d do not (chunks mapped a
    page multiple apart)."""
    root = tmp_path_factory.mktemp("gather")
    paths = {}
    for dim in (32, 64):
        make_tsv(root / f"f{dim}.tsv", n=41, boxes=(36, 36) if dim == 64 else (10, 35), feature_dim=dim)
        for compressor in ("none", "zstd", "blosc"):
            out = str(root / f"{compressor}{dim}.zarr")
            convert_tsv(str(root / f"f{dim}.tsv"), out, compressor=compressor, chunk_images=8, workers=1,
                        progress=False)
            paths[compressor, dim] = out
    write_store(root / "v1.zarr", num_images=41, compressor="zstd")   # the first compressed layout
    paths["v1"] = str(root / "v1.zarr")
    return paths


def check(store: FeatureStore, rows):
    f, s = store.gather(rows)
    ref_f, ref_s = direct(store.path, rows)
    np.testing.assert_array_equal(f.numpy(), ref_f)
    np.testing.assert_array_equal(s.numpy(), ref_s)


@pytest.mark.parametrize("key, layout", [(("none", 32), "raw"), (("none", 64), "raw"), (("zstd", 32), "sharded"),
                                         (("blosc", 64), "sharded"), ("v1", "chunked")])
@pytest.mark.parametrize("mode", batch_io.MODES)
@pytest.mark.parametrize("threads", [1, 3])
def test_every_layout_and_mode_reads_what_zarr_reads(stores, key, layout, mode, threads):
    store = FeatureStore(stores[key], read_mode=mode, threads=threads, io_threads=4)
    assert store.layouts == {"features": layout, "spatials": layout}
    for rows in (ROWS, sorted(ROWS), list(range(41)), ROWS[::-1], [17]):
        check(store, rows)
    if layout == "raw":
        assert store._reader.fields["features"].flat == (key[1] == 64)
    assert len(store.gather([])[0]) == 0


def test_compressed_conversion_shards_one_image_per_inner_chunk(stores):
    import json
    for compressor in ("zstd", "blosc"):
        with open(os.path.join(stores[compressor, 32], "features", "zarr.json")) as f:
            codec = json.load(f)["codecs"][0]
        plain, packed = FeatureStore(stores["none", 32]), FeatureStore(stores[compressor, 32])
        assert codec["name"] == "sharding_indexed"
        assert codec["configuration"]["chunk_shape"] == [1, plain.max_boxes, 32]
        for a, b in zip(plain.gather(ROWS), packed.gather(ROWS)):
            assert torch.equal(a, b)


def test_strided_output_is_filled(stores):
    store = FeatureStore(stores["none", 64])
    features = np.zeros((len(ROWS), 36, 128), np.float16)[:, :, ::2]   # every other value
    spatials = np.zeros((len(ROWS), 36, 6), np.float32)
    store.gather(ROWS, features, spatials)
    np.testing.assert_array_equal(features, direct(store.path, ROWS)[0])


def test_auto_mode_follows_the_page_cache(stores, monkeypatch):
    store = FeatureStore(stores["none", 64], threads=2, io_threads=3)
    check(store, ROWS)                          # starts by reading; found every page cached
    assert store._reader.mode == "map"
    faults = iter(range(10 ** 6))
    monkeypatch.setattr(batch_io, "major_faults", lambda: next(faults))   # every copy "faults"
    check(store, list(range(41)))               # the rest of the batch is read, not mapped
    assert store._reader.mode == "read"
    for rows in (list(range(41)), [3, 5]):      # back to maps, then a fault in a part's last rows
        check(store, rows)


@pytest.mark.skipif(batch_io.NOWAIT is None, reason="needs preadv2 RWF_NOWAIT (Linux)")
@pytest.mark.parametrize("key", [("none", 64), ("zstd", 64), "v1"])
def test_pages_not_cached_are_read_by_the_io_threads(stores, key):
    """Drop the store's pages (posix_fadvise DONTNEED): the page-cache-only reads miss, the I/O
    threads read, the rows are right, and a second pass finds them cached again."""
    store = FeatureStore(stores[key], threads=2, io_threads=3)
    for d, _, files in os.walk(stores[key]):
        for name in files:
            fd = os.open(os.path.join(d, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    check(store, ROWS)
    check(store, ROWS)
    if key == ("none", 64):
        assert store._reader.mode == "map"


def test_misses_go_to_the_io_threads(stores, monkeypatch):
    """Whatever the kernel keeps cached: page-cache-only reads that never succeed still give every row."""
    real = batch_io.read_into

    def cold(fd, view, offset, nowait=False):
        if nowait:
            raise BlockingIOError
        return real(fd, view, offset)

    monkeypatch.setattr(batch_io, "read_into", cold)
    for key in (("none", 32), ("blosc", 32), "v1"):
        store = FeatureStore(stores[key], read_mode="read", threads=2, io_threads=3)
        check(store, ROWS)
        check(store, list(range(41)))


def test_descriptors_are_bounded(stores, monkeypatch):
    from butd.features import reader
    monkeypatch.setattr(reader, "_allow_open_files", lambda wanted, spare=256: 4)
    store = FeatureStore(stores["zstd", 32], threads=2)
    for rows in ([0, 9, 17], [25, 33, 40], ROWS):
        check(store, rows)
        fields = store._reader.fields.values()
        assert all(len(f.fds) <= max(2, len({r // 8 for r in rows})) for f in fields)


def shard_file(path, c=2):
    return os.path.join(path, "features", "c", str(c), "0", "0")


def shorten_first_block(fname):
    """Image 0's block of a shard becomes a valid zstd frame of half its row (the index and its
    crc32c rewritten to match): it decodes without the codec's complaint."""
    import google_crc32c
    import numcodecs.zstd
    with open(fname, "rb") as f:
        data = bytearray(f.read())
    size = 16 * 8 + 4   # the index of a shard of 8 images
    index = np.frombuffer(bytes(data[-size:-4]), "<u8").reshape(8, 2).copy()
    row = numcodecs.zstd.decompress(bytes(data[index[0, 0]:index[0, 0] + index[0, 1]]))
    frame = numcodecs.zstd.compress(np.frombuffer(row, np.uint8)[:len(row) // 2].copy(), 1)
    assert len(frame) <= index[0, 1]
    data[index[0, 0]:index[0, 0] + len(frame)] = frame
    index[0, 1] = len(frame)
    body = index.tobytes()
    data[-size:] = body + google_crc32c.value(body).to_bytes(4, "little")
    with open(fname, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("damage, what", [
    ("truncate", "corrupt index|too short"), ("flip", "cannot be decoded"), ("delete", "missing"),
    ("short", r"cannot be decoded \(image 0: ValueError: the block decodes to 1120 bytes, the output holds 2240")])
def test_damaged_shard_names_file_and_images(stores, tmp_path, damage, what):
    import shutil
    path = str(tmp_path / "z.zarr")
    shutil.copytree(stores["zstd", 32], path)
    fname = shard_file(path)
    if damage == "delete":
        os.remove(fname)
    elif damage == "truncate":
        with open(fname, "r+b") as f:
            f.truncate(os.path.getsize(fname) // 2)
    elif damage == "short":
        shorten_first_block(fname)
    else:   # garble the first image's compressed bytes, keep the index intact
        with open(fname, "r+b") as f:
            f.write(b"\xff" * 64)
    store = FeatureStore(path, io_threads=2)
    store.gather([0, 1])   # other chunks still read
    with pytest.raises(StoreError, match=rf"{fname}: chunk 2 .*({what}).*rows 16\.\.23 \(images "):
        store.gather([3, 16])


def test_a_block_must_decode_to_the_size_of_its_row():
    import numcodecs.blosc
    import numcodecs.zstd
    row = np.arange(600, dtype=np.float32)
    frames = {"zstd": numcodecs.zstd.compress(row, 1), "blosc": numcodecs.blosc.compress(row, b"lz4", 5, 1)}
    for name, frame in frames.items():
        codec = batch_io._Codec([{"name": "bytes", "configuration": {"endian": "little"}}, {"name": name}], "x")
        out = np.empty_like(row)
        codec.decode(memoryview(frame), out)
        np.testing.assert_array_equal(out, row)
        with pytest.raises(ValueError, match="decodes to 2400 bytes, the output holds 4800"):
            codec.decode(memoryview(frame), np.empty(1200, np.float32))
    with pytest.raises(ValueError, match=rf"the block is {len(frames['blosc']) + 1} bytes, its header says"):
        codec.decode(memoryview(frames["blosc"] + b"\0"), out)
    # every width of the frame content size field: 1, 2 (less 256), 4 and 8 bytes
    for n in (0, 1, 255, 256, 257, 65791, 65792, 2 ** 20 + 7):
        assert batch_io.zstd_content_size(numcodecs.zstd.compress(np.zeros(n, np.uint8), 3)[:18]) == n


def test_unreadable_codec_is_refused_by_name(tmp_path):
    import zarr
    path = tmp_path / "g.zarr"
    write_store(path)
    group = zarr.open_group(str(path), mode="r+")
    del group["features"]
    group.create_array("features", shape=(37, 5, 8), chunks=(8, 5, 8), dtype="float16",
                       compressors=[{"name": "gzip", "configuration": {"level": 1}}])
    with pytest.raises(StoreError, match=r"features/zarr\.json: codecs \['bytes', 'gzip'\].*tsv_to_zarr"):
        FeatureStore(path)
