"""The question shards: the fast writer against webdataset.TarWriter byte for byte and tarfile member
by member, and stream_shards' equal shares for every (DDP rank, DataLoader worker)."""
import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds
from torch.utils.data import DataLoader

from butd.questions import QuestionArrays, shards, stream

MTIME = 1_700_000_000


def odd_questions(n=23, seed=0):
    """Two-image questions with what a writer can get wrong: a non-ASCII id and one over tar's 100
    characters (both need PAX headers), quotes, backslashes, % and non-ASCII in strings, negative
    labels, float 2-D targets, numbers of many widths, an empty type."""
    rng = np.random.default_rng(seed)
    ids = [f"q{i:03d}" for i in range(n)]
    ids[3], ids[5] = "q\u00e9\u4e2d3", "q" + "x" * 120
    types = np.array(['say "hi"', "50% \\ off", "\u00fcber", ""] * n)[:n]
    return QuestionArrays(
        question_ids=np.array(ids), image_ids=np.array([[f"img{i}", f"n{i}\u00e9"] for i in range(n)]),
        image_rows=rng.integers(0, 10 ** rng.integers(1, 7, (n, 2)), (n, 2)),
        tokens=rng.integers(0, 1000, (n, 14)).astype(np.int32),
        targets={"labels": rng.integers(-1, 3000, n), "scores": rng.random((n, 3)).astype(np.float32)},
        types={"structural": types, "a %s key": types[::-1].copy()})


def write(tmp_path, arrays, shard_samples, monkeypatch, workers=2, meanwhile=None):
    monkeypatch.setattr(shards, "SHARD_SAMPLES", shard_samples)
    count = shards.write_shards(str(tmp_path), {"train": arrays}, MTIME, workers, False, meanwhile)["train"]
    return [shards.shard_path(str(tmp_path), "train", k) for k in range(count)]


# ---- Writing ----

def test_writer_bytes_equal_webdataset_tarwriter(tmp_path, monkeypatch):
    arrays = odd_questions()
    called = []
    paths = write(tmp_path, arrays, 10, monkeypatch, meanwhile=lambda: called.append(True))
    assert called == [True] and len(paths) == 3
    samples = list(shards.sample_dicts(arrays))
    for k, path in enumerate(paths):
        reference = str(tmp_path / f"reference-{k}.tar")
        with wds.TarWriter(reference, encoder=False, mtime=MTIME) as writer:
            for sample in samples[10 * k:10 * (k + 1)]:
                writer.write({"__key__": sample["question_id"], "json": json.dumps(sample).encode()})
        with open(path, "rb") as f, open(reference, "rb") as g:
            assert f.read() == g.read(), path


def test_members_read_back_with_tarfile(tmp_path, monkeypatch):
    arrays = odd_questions(n=7)
    path, = write(tmp_path, arrays, 10, monkeypatch, workers=1)
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        got = [json.loads(tar.extractfile(m).read()) for m in members]
    assert [m.name for m in members] == [q + ".json" for q in arrays.question_ids]
    assert all(m.isreg() and m.mtime == MTIME and m.mode == 0o444 for m in members)
    assert got == json.loads(json.dumps(list(shards.sample_dicts(arrays))))   # floats as JSON rounds them
    assert got[2]["image_ids"] == ["img2", "n2\u00e9"] and got[0]["types"]["structural"] == 'say "hi"'


# ---- Streaming: equal shares ----

def consume(monkeypatch, paths, counts, world_size, workers, **kw):
    """What each (rank, worker) streams, as lists of question ids, rank-major."""
    parts = []
    for rank in range(world_size):
        for worker in range(workers):
            for k, v in {"RANK": rank, "WORLD_SIZE": world_size, "WORKER": worker, "NUM_WORKERS": workers}.items():
                monkeypatch.setenv(k, str(v))
            parts.append([s["question_id"] for s in stream.stream_shards(paths, counts, **kw)])
    return parts


@pytest.mark.parametrize("drop_last", [False, True])
def test_two_ranks_two_workers_get_equal_contiguous_shares(tmp_path, monkeypatch, drop_last):
    arrays = odd_questions(n=23)
    paths = write(tmp_path, arrays, 5, monkeypatch)   # shards of 5, 5, 5, 5, 3
    parts = consume(monkeypatch, paths, shards.shard_counts(23, 5), 2, 2, drop_last=drop_last)
    ids = arrays.question_ids.tolist()
    per = 5 if drop_last else 6
    # Consumer c reads positions c*per ... (c+1)*per - 1, wrapping to the start (padding).
    assert parts == [[ids[(c * per + i) % 23] for i in range(per)] for c in range(4)]
    flat = [q for p in parts for q in p]
    assert sorted(flat) == sorted(ids[:20] if drop_last else ids + ids[:1])   # the split, or it + padding


def test_three_ranks_over_one_shard(tmp_path, monkeypatch):
    arrays = odd_questions(n=7)
    paths = write(tmp_path, arrays, 2000, monkeypatch, workers=1)
    assert len(paths) == 1
    parts = consume(monkeypatch, paths, [7], 3, 1)
    assert [len(p) for p in parts] == [3, 3, 3]
    ids = arrays.question_ids.tolist()
    assert sorted(q for p in parts for q in p) == sorted(ids + ids[:2])   # padded with the first two
    assert consume(monkeypatch, paths, [7], 8, 1, drop_last=True) == [[]] * 8   # fewer samples than ranks
    assert [len(p) for p in consume(monkeypatch, paths, [7], 8, 1)] == [1] * 8


def test_shuffled_shard_order_stays_a_partition_and_changes_with_the_epoch(tmp_path, monkeypatch):
    arrays = odd_questions(n=40)
    paths = write(tmp_path, arrays, 4, monkeypatch)
    counts = shards.shard_counts(40, 4)

    def epoch(e):
        parts = []
        for rank in range(2):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", "2")
            shuffled = stream.stream_shards(paths, counts, shard_shuffle=True, seed=3).shuffle(0)
            shuffled.set_epoch(e)   # through the copy that .shuffle made
            parts.append([s["question_id"] for s in shuffled])
        return parts
    first, again, second = epoch(0), epoch(0), epoch(1)
    assert first == again and first != second
    for parts in (first, second):
        assert [len(p) for p in parts] == [20, 20]
        assert sorted([q for p in parts for q in p]) == sorted(arrays.question_ids.tolist())


def test_empty_shard_streams_nothing_and_never_raises(tmp_path, monkeypatch):
    path = str(tmp_path / "empty.tar")
    wds.TarWriter(path).close()
    assert consume(monkeypatch, [path], [0], 2, 2) == [[]] * 4


def test_dataloader_workers_get_equal_shares(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "WORKER", "NUM_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    arrays = odd_questions(n=11)
    paths = write(tmp_path, arrays, 5, monkeypatch)
    loader = DataLoader(stream.stream_shards(paths, shards.shard_counts(11, 5)), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
    got = [s["question_id"] for s in loader]
    ids = arrays.question_ids.tolist()
    # Worker 0 reads questions 0-5, worker 1 questions 6-10 and (padding) 0; the DataLoader alternates.
    assert got == [q for pair in zip(ids[:6], ids[6:] + ids[:1]) for q in pair]


def test_damaged_shard_raises_naming_it(tmp_path, monkeypatch):
    paths = write(tmp_path, odd_questions(n=6), 10, monkeypatch, workers=1)
    with pytest.raises(ValueError, match=os.path.basename(paths[0])):
        list(stream.stream_shards(paths, [9]))
    with pytest.raises(ValueError, match="2 shard paths but 1"):
        stream.stream_shards(paths * 2, [6])
