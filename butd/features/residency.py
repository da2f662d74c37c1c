"""Where a feature store's batches are gathered from: one strategy object per store, chosen once.

    FeatureStore(path)                                  # Streamed(): from the store's files
    FeatureStore(path, cache=Pinned())                  # or cache="pinned", a --feature_cache value
    FeatureStore(path, cache=OnDevice())                # cache="gpu": on the current CUDA device

- ``Streamed`` (``"none"``): rows are copied from the chunk files (memory maps of the page cache, or
  ``preadv``: ``butd.features.batch_io``). The pages are the operating system's, shared by every
  process that reads the store, DataLoader workers included.
- ``Pinned`` (``"pinned"``): the whole of ``features`` and ``spatials`` is read once into page-locked
  host memory (plain memory without CUDA), and batches are copied from RAM. PyTorch's pinned
  allocator rounds each tensor up to a power of two: budget up to 2x the store.
- ``OnDevice`` (``"gpu"``): the same on a CUDA device, read through a pinned buffer of a few chunks;
  batches are ``index_select``-ed there and come out on the device.

A resident copy (``resident``) lives in the process that built it: the loaders gather such a store
in their own process, never in worker processes (``butd.loading``). ``on_device`` says that a
batch's ``features`` and ``spatials`` come out on the device, so host buffers hold none of them.
Which residency each store of a run gets is ``butd.loading.cache_choice``'s decision.
"""
from __future__ import annotations

from typing import ClassVar, Optional

import torch


class Residency:
    """How one store holds its batch fields; see the module docstring."""

    name: ClassVar[str]              # the --feature_cache value
    resident: ClassVar[bool]         # a whole copy, in the process that gathers
    on_device: ClassVar[bool] = False

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised tensor for one field of the resident copy."""
        raise TypeError(f"a {self.name!r} store holds no copy")

    @property
    def device(self) -> Optional[torch.device]:
        """Where the copy is: None for host memory."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Streamed(Residency):
    name, resident = "none", False


class Pinned(Residency):
    name, resident = "pinned", True

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=torch.cuda.is_available())


class OnDevice(Residency):
    """``device``: a CUDA device, by default the current one when the object is made. Make it in the
    thread where the rank's device is set (a loader's thread has its own current device)."""
    name, resident, on_device = "gpu", True, True

    def __init__(self, device=None):
        if device is None:
            if not torch.cuda.is_available():
                raise ValueError("cache 'gpu' keeps the store on a GPU, and PyTorch sees none here")
            device = torch.cuda.current_device()
        self._device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)

    @property
    def device(self) -> torch.device:
        return self._device

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, device=self._device)

    def __repr__(self) -> str:
        return f"OnDevice({str(self._device)!r})"


RESIDENCIES = {cls.name: cls for cls in (Streamed, Pinned, OnDevice)}


def residency(cache) -> Residency:
    """The residency of a ``--feature_cache`` value (``"none"``, ``"pinned"``, ``"gpu"``), made now;
    a ``Residency`` is returned as it is. Raises ValueError for another value, or ``"gpu"`` without
    CUDA."""
    if isinstance(cache, Residency):
        return cache
    if cache not in RESIDENCIES:
        raise ValueError(f"cache must be one of {tuple(RESIDENCIES)}, got {cache!r}")
    return RESIDENCIES[cache]()
