"""Which residency (``butd.features.residency``) each feature store of a run gets: the policy of
``--feature_cache``, chosen once per DataModule, which then decides once per store.

    policy = choose("auto", num_workers=2, say=print)        # or "none", "pinned", "gpu": every store alike
    policy.decide([train_path, val_path], train_path, Processes())   # "auto": both stores, together
    FeatureStore(train_path, cache=policy.residency(train_path))
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

``auto`` decides a run's stores together, beside the copies already resident, each process of the
machine holding its own: under DDP from the least memory available to any rank (so that every rank
reads alike and no machine is promised memory only another one has). A streamed training store with
``--num_workers`` keeps its workers: the other stores then stream too, since workers forked beside
a resident copy (and the threads gathering from it) could inherit its locks mid-use.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import psutil
import torch

from butd.features.reader import FeatureStore
from butd.features.residency import RESIDENCIES, Residency, Streamed, residency

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


@dataclass
class Processes:
    """The processes that share a machine's memory: ``copies`` per machine (DDP ranks per node, each
    holding its own resident copy), ``world_size`` in all, and ``least(n)``, the least of ``n`` over
    the ranks (a collective: every rank calls it at the same point)."""
    copies: int = 1
    world_size: int = 1
    least: Callable[[int], int] = int


class FixedCache:
    """``--feature_cache none|pinned|gpu``: every store the same residency."""

    def __init__(self, name: str):
        if name not in RESIDENCIES:
            raise ValueError(f"--feature_cache must be auto or one of {', '.join(RESIDENCIES)}, got {name!r}")
        if RESIDENCIES[name].on_device and not torch.cuda.is_available():
            raise ValueError("--feature_cache gpu keeps the feature stores on a GPU, and PyTorch sees none here; "
                             "use --feature_cache auto (the default), pinned or none")
        self.name = name

    def decide(self, paths, train_path: str, processes) -> list:
        return []          # nothing to decide: returns the stores to reopen, none

    def residency(self, path: str) -> Residency:
        return residency(self.name)

    def gathers_in_main(self, paths) -> bool:
        """Whether the loader of a split whose run has the stores ``paths`` gathers in the main process."""
        return RESIDENCIES[self.name].resident


class AutoCache:
    """``--feature_cache auto``: a compressed store resident (pinned) when it fits, beside the others,
    streamed otherwise; see the module docstring. ``say`` logs each decision (rank zero's logger)."""

    def __init__(self, num_workers: int = 0, say=print):
        self.num_workers, self.say = num_workers, say
        self.chosen: dict = {}     # store path -> its Residency class (Pinned or Streamed), decided so far

    def decide(self, paths, train_path: str, processes) -> list:
        """Decide the stores of ``paths`` not decided yet, together, beside those already resident
        (``processes``: a ``Processes``, or a callable that makes one, called only when there is
        something to decide). Returns the stores decided resident before and streamed now, to be
        opened again."""
        undecided = [p for p in dict.fromkeys(paths) if p not in self.chosen]
        if not undecided:
            return []
        processes = processes() if callable(processes) else processes
        copies, lines = processes.copies, []
        reserved = sum(resident_nbytes(FeatureStore(p)) * copies for p in self._resident_paths())
        available = available_memory()
        if processes.world_size > 1:
            available = processes.least(available)
            lines.append(f"[*] feature caches decided from the least memory available to any of the "
                         f"{processes.world_size} processes")
        whys = {}
        for path in undecided:
            store = FeatureStore(path)
            name, whys[path] = auto_cache(store, copies, reserved, available)
            self.chosen[path] = RESIDENCIES[name]
            if self.chosen[path].resident:
                reserved += resident_nbytes(store) * copies
        demoted = []
        if self.num_workers and self.chosen.get(train_path) is Streamed:
            # a resident store would take the streamed training store's workers away
            demoted = self._resident_paths()
            for path in demoted:
                self.chosen[path] = Streamed
                whys[path] = f"streamed like the training store, by its --num_workers {self.num_workers}"
        lines += [f"[*] feature cache of {path}: {self.chosen[path].name} ({why})" for path, why in whys.items()]
        if self.num_workers and self._resident_paths():
            lines.append(f"[*] batches are gathered in each training process: --num_workers {self.num_workers} is "
                         "unused beside a resident store")
        for line in lines:
            self.say(line)
        return demoted

    def _resident_paths(self) -> list:
        return [p for p, chosen in self.chosen.items() if chosen.resident]

    def residency(self, path: str) -> Residency:
        # a store outside training (evaluation) is read once: streamed
        return self.chosen.get(path, Streamed)()

    def gathers_in_main(self, paths) -> bool:
        """Whether the loader of a split whose run has the stores ``paths`` (its own, the training's
        and the validation's) gathers in the main process: any of them is resident, since workers
        forked beside a resident copy could inherit its locks mid-use."""
        return any(self.chosen.get(p, Streamed).resident for p in paths)


def choose(feature_cache: str, num_workers: int = 0, say=print):
    """The policy of a ``--feature_cache`` value: ``AutoCache`` for ``"auto"``, else ``FixedCache``."""
    return AutoCache(num_workers, say) if feature_cache == "auto" else FixedCache(feature_cache)
