"""One builder per cache (butd.build_lock): others wait, a crashed holder releases, the same process
re-enters, a file system without locks is named."""
import errno
import os
import subprocess
import sys
import time

import pytest

from butd import build_lock as bl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys, time
from butd.build_lock import build_lock
with build_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(path, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    return proc


def test_a_second_process_waits_for_the_first_and_says_so_once(tmp_path):
    store = tmp_path / "trainval.zarr"
    first = holder(store, 1.5)
    said = []
    start = time.monotonic()
    with bl.build_lock(str(store), say=said.append):
        waited = time.monotonic() - start
    assert waited > 0.5 and len(said) == 1
    assert str(store) in said[0] and "waiting for another process" in said[0]
    first.wait()


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    store = tmp_path / "trainval.zarr"
    first = holder(store, 60)
    first.kill()
    first.wait()
    said = []
    with bl.build_lock(str(store), say=said.append):
        pass
    assert said == []


def test_the_lock_is_reentrant_within_a_thread(tmp_path):
    store = str(tmp_path / "q")
    with bl.build_lock(store, say=pytest.fail):
        with bl.build_lock(store, say=pytest.fail):
            pass
        assert bl.lock_path(store) in bl._HELD.paths
    assert bl.lock_path(store) not in bl._HELD.paths


def test_a_file_system_without_locks_is_named(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(bl.fcntl, "flock", no_locks)
    with pytest.raises(OSError, match=r"trainval\.zarr\.lock: cannot take a file lock here .*prepare the caches once"):
        with bl.build_lock(str(tmp_path / "trainval.zarr")):
            pass


@pytest.mark.parametrize("lock_file_there", [False, True])
def test_an_up_to_date_question_cache_in_a_read_only_directory_is_used(tmp_path, monkeypatch, lock_file_there):
    """A cluster's read-only copy of the caches: no lock file can be made there, and none is needed
    (train.py failed with a bare "[Errno 30] Read-only file system: '.../questions.lock'")."""
    from butd import questions
    from butd.loading.caches import prepare_caches
    from butd.synthetic.gqa import generate

    from helpers import build_gqa_caches
    paths = generate(str(tmp_path), seed=2, train_images=4, val_images=2, test_images=2, testdev_images=2,
                     questions_per_image=2, feature_dim=8, emb_dim=300)
    cache = tmp_path / "GQA-Cache"
    qdir = build_gqa_caches(str(tmp_path), cache)
    inputs = questions.Inputs("gqa", paths["questions"], paths["glove"], str(cache))
    if not lock_file_there:
        os.remove(bl.lock_path(qdir))
    real_open = os.open

    def read_only(path, flags, *mode):      # root writes anywhere: the file system's answer, simulated
        if flags & (os.O_CREAT | os.O_RDWR | os.O_WRONLY):
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *mode)
    monkeypatch.setattr(bl.os, "open", read_only)
    assert questions.build(inputs, qdir, progress=False)["skipped"]
    # train.py's way: the stores, then the questions
    assert prepare_caches(inputs, str(tmp_path / "GQA-Features"), say=lambda line: None) == qdir


def test_a_cache_to_build_where_nothing_can_be_written_is_refused_at_once(tmp_path, monkeypatch):
    """Not after a conversion's plan pass (minutes of reading for a GQA-sized TSV), and naming the
    directory, not the file that failed later."""
    def read_only(path, flags, *mode):
        raise OSError(errno.EROFS, "Read-only file system", path)
    monkeypatch.setattr(bl.os, "open", read_only)
    for usable in (None, lambda: False):
        with pytest.raises(OSError, match=r"cannot write here \(Read-only file system\), where .*x\.zarr is to be "
                                          r"made or brought up to date"):
            with bl.build_lock(str(tmp_path / "x.zarr"), usable=usable):
                pytest.fail("ran unlocked")
