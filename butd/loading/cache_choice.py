"""What ``feature_cache="auto"`` (train.py's default) means for a store on this machine.

    cache, why = auto_cache(FeatureStore(path), copies=2)   # "pinned" or "none", and why, for the log

Warm, an uncompressed store is read from the page cache at the machine's copy bandwidth, shared
by every process. A compressed store is read at its codec's speed: on a 2-core machine zstd
decodes at 10-20% of that copy, blosc at 20-40% (``benchmarks/loader_speed.py``,
``<compressor>_decode_bound_vs_none_warm``).
Decoded once into a resident copy it is read at memory speed again. So ``auto`` keeps a compressed
store resident (``"pinned"``) when its decoded copy fits in ``MEMORY_FRACTION`` of the memory
available now, and streams it otherwise (``"none"``). Short of that memory, an uncompressed store of
the same images would also fit the page cache only in part, or just (a decoded copy within 2-4x
of the available memory), and be read partly from disk; ``benchmarks/larger_than_ram.py`` compares
the two in the same memory. Uncompressed stores always stream, through the page cache.
"""
from __future__ import annotations

import os

import psutil
import torch

from butd.features.reader import FeatureStore

MEMORY_FRACTION = 0.5   # of the available memory: the rest stays for the page cache, workers and the model


def cgroup_room(proc: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes this process's memory cgroups (v2 or v1, listed in ``proc``, mounted under ``root``)
    still allow: their limit less what they hold beyond page cache, the tightest over the cgroup
    and its parents; None without a limit."""
    try:
        with open(proc) as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    places = []
    for _, controllers, path in (line for line in lines if len(line) == 3):
        if controllers == "":                                     # v2
            places.append((root, path, "memory.max", "memory.current", "file", "shmem"))
        elif "memory" in controllers.split(","):                  # v1
            places.append((os.path.join(root, "memory"), path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "total_cache", "total_shmem"))
    room = None
    for base, path, limit_name, usage_name, cache_key, shmem_key in places:
        while True:
            folder = os.path.join(base, path.lstrip("/"))
            try:
                with open(os.path.join(folder, limit_name)) as f:
                    limit = f.read().strip()
                with open(os.path.join(folder, usage_name)) as f:
                    usage = int(f.read())
                limit = None if limit == "max" or int(limit) >= 1 << 60 else int(limit)  # v1's "none": ~2**63
            except (OSError, ValueError):
                limit = None
            if limit is not None:
                try:   # page cache the cgroup would give back (shared memory it cannot); without statistics, none
                    with open(os.path.join(folder, "memory.stat")) as f:
                        stat = dict(line.split()[:2] for line in f if line.strip())
                    cache = int(stat.get(cache_key, 0)) - int(stat.get(shmem_key, 0))
                except (OSError, ValueError):
                    cache = 0
                free = limit - (usage - cache)
                room = free if room is None else min(room, free)
            if path in ("/", ""):
                break
            path = os.path.dirname(path)
    return room


def available_memory() -> int:
    """Bytes this process could still allocate: the machine's available memory (psutil), within
    the room its memory cgroups leave."""
    room = cgroup_room()
    available = psutil.virtual_memory().available
    return available if room is None else max(0, min(available, room))


def resident_nbytes(store: FeatureStore) -> int:
    """Host memory of ``cache="pinned"`` for ``store``: one tensor per field, each rounded up to a
    power of two where CUDA pins it (PyTorch's pinned host allocator)."""
    total = 0
    for shape, dtype in store.batch_shapes(store.num_images).values():
        n = int(torch.Size(shape).numel()) * dtype.itemsize
        total += 1 << (n - 1).bit_length() if torch.cuda.is_available() and n > 0 else n
    return total


def auto_cache(store: FeatureStore, copies: int = 1, reserved: int = 0, available: int | None = None) -> tuple:
    """``("pinned" | "none", why)`` for ``store`` under ``feature_cache="auto"``. ``copies``: the
    processes on this machine that would each hold the copy (DDP ranks per node); ``reserved``:
    bytes already promised to other resident stores; ``available``: bytes (default
    ``available_memory()``)."""
    if store.attrs.compressor == "none":
        return "none", "uncompressed: read from its files, through the page cache"
    mine = resident_nbytes(store) * max(1, copies)
    available = available_memory() if available is None else available
    sizes = (f"{mine / 2**30:.1f} GiB{f' for {copies} processes' if copies > 1 else ''}"
             f"{f' beside {reserved / 2**30:.1f} GiB of other resident stores' if reserved else ''}, "
             f"{available / 2**30:.1f} GiB available")
    if mine + reserved <= MEMORY_FRACTION * available:
        return "pinned", f"{store.attrs.compressor}-compressed, decoded once into memory: {sizes}"
    return "none", (f"{store.attrs.compressor}-compressed, streamed and decoded batch by batch: decoded it would "
                    f"not fit in {MEMORY_FRACTION:.0%} of the available memory: {sizes}")
