"""The feature layouts a conversion reads, one module each behind ``base.FeatureInput``:

- ``tsv``: features TSVs, the 10-column obj36 layout and the 6-column Anderson one;
- ``hdf5``: the HDF5 caches of the specification and hengyuan-hu (``image_features`` [N, 36, D],
  ``image_bb``, ``spatial_features``) and ban-vqa's adaptive one (flat [boxes, D] with
  ``pos_boxes``), each with its pickled ``{image id: row}`` beside it;
- ``npz``: folders of per-image ``.npz`` from bottom-up-attention.pytorch (``x`` [n, D]) and MCAN
  (``.jpg.npz``, ``x`` [D, n]);
- ``npy``: folders of MMF's ``<image>.npy`` with ``<image>_info.npy``.

``open_input`` recognises the layout from the input itself (``format`` overrides); every pickle
these files hold is read by ``safe_pickle``, which runs nothing.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from butd.features.inputs.base import FeatureInput, ImageKey, InputError

FORMATS = ("tsv", "hdf5", "npz", "npy")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_SUFFIXES = (".hdf5", ".h5")


def _signature_format(path: str, format: str) -> Optional[str]:
    """The format an input shows whatever ``--format`` says: ``format`` for a folder that holds its
    files (``--format`` picks one layout of a folder that mixes two), else the one it holds, or an
    HDF5 file's signature; None for a file without one (a TSV, or an unreadable file), or a folder
    with no feature files."""
    if os.path.isdir(path):
        held = {kind for entry in os.scandir(path) for kind in ("npz", "npy") if entry.name.endswith("." + kind)}
        return format if format in held else next(iter(sorted(held)), None)
    return "hdf5" if _has_hdf5_signature(path) else None


def _has_hdf5_signature(path: str) -> bool:
    """Whether the file at ``path`` starts with HDF5's signature (False where it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(HDF5_MAGIC)) == HDF5_MAGIC
    except OSError:
        return False


def detect_format(path: str) -> str:
    """The format of one input: a folder of ``.npz`` or ``.npy`` files, an HDF5 file (by its
    signature, or its name if it cannot be read), else a TSV. Raises ValueError for a folder that
    mixes both or holds neither."""
    if os.path.isdir(path):
        npz = npy = None
        for entry in os.scandir(path):
            if entry.name.endswith(".npz"):
                npz = npz or entry.path
            elif entry.name.endswith(".npy"):
                npy = npy or entry.path
            if npz and npy:
                raise ValueError(f"{path}: the folder mixes layouts: .npz files (bottom-up-attention.pytorch or "
                                 f"MCAN, e.g. {npz}) and .npy files (MMF, e.g. {npy}); put each layout in a folder "
                                 "of its own and convert each into its own store")
        if not (npz or npy):
            raise ValueError(f"{path}: a folder without .npz or .npy feature files; expected a folder of "
                             "bottom-up-attention.pytorch / MCAN .npz or MMF .npy files")
        return "npz" if npz else "npy"
    if _has_hdf5_signature(path):
        return "hdf5"
    for suffixes, kind in ((HDF5_SUFFIXES, "hdf5"), ((".npz",), "npz"), ((".npy",), "npy")):
        if path.endswith(suffixes):
            return kind
    return "tsv"


def open_input(inputs: Union[str, Sequence[str]], format: Optional[str] = None, ids: Optional[str] = None,
               layout: Optional[str] = None, feature_dim: Optional[int] = None,
               image_key: ImageKey = None) -> FeatureInput:
    """The ``FeatureInput`` of ``inputs`` (one path, or several of one format whose images follow
    each other). ``ids``: an HDF5 cache's id map; ``layout``/``feature_dim``: a TSV's."""
    paths = [os.fspath(inputs)] if isinstance(inputs, (str, os.PathLike)) else [os.fspath(p) for p in inputs]
    if not paths:
        raise ValueError("no input given")
    if format is not None and format not in FORMATS:
        raise ValueError(f"format {format!r}: expected one of {', '.join(FORMATS)} (or None to recognise it)")
    if format is not None:
        for path in paths:
            shown = _signature_format(path, format)
            if format == "hdf5" and shown is None and os.path.isfile(path):
                raise ValueError(f"{path}: --format hdf5, but it is not an HDF5 file (no HDF5 signature)")
            if shown not in (None, format):
                raise ValueError(f"{path}: --format {format}, but it is {'a folder of' if os.path.isdir(path) else 'an'} "
                                 f"{shown} input; leave --format out to convert it as that")
    kinds = [format or detect_format(p) for p in paths]
    if len(set(kinds)) > 1:
        first = {}
        for path, kind in zip(paths, kinds):
            first.setdefault(kind, path)
        raise ValueError("inputs of different layouts: " + ", ".join(f"{p} ({k})" for k, p in first.items())
                         + "; convert each layout into its own store")
    kind = kinds[0]
    if ids is not None and kind != "hdf5":
        raise ValueError(f"--ids names the id map of an HDF5 cache, but {paths[0]} is a {kind} input")
    if layout is not None and kind != "tsv":
        raise ValueError(f"--layout is a TSV's layout, but {paths[0]} is a {kind} input")
    if kind == "tsv":
        from butd.features.inputs.tsv import TSVInput
        return TSVInput(paths, image_key, layout=layout, feature_dim=feature_dim)
    if kind == "hdf5":
        from butd.features.inputs.hdf5 import HDF5Input
        return HDF5Input(paths, image_key, ids=ids)
    if kind == "npz":
        from butd.features.inputs.npz import NpzInput
        return NpzInput(paths, image_key)
    from butd.features.inputs.npy import MMFInput
    return MMFInput(paths, image_key)


__all__ = ["FORMATS", "FeatureInput", "InputError", "detect_format", "open_input"]
