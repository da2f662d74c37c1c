"""Folders of per-image ``.npz`` files as a conversion input: bottom-up-attention.pytorch's and MCAN's.

- bottom-up-attention.pytorch (``utils/extract_utils.py``, ``np.savez_compressed``):
  ``<image>.npz`` with ``x`` [n, D] float32, ``bbox`` [n, 4] float32 pixels (x1 y1 x2 y2),
  ``num_bbox``, ``image_h``, ``image_w`` (0-d integers) and ``info``, a dict pickled into a 0-d
  object array (``image_id``, ``image_h``, ``image_w``, ``num_boxes``, ``objects_id``,
  ``objects_conf`` and, with attributes, ``attrs_id``, ``attrs_conf``);
- MCAN / OpenVQA (the caffe extractor): ``COCO_train2014_000000000009.jpg.npz`` with the same
  members but ``x`` transposed, [D, n], and no ``info``.

Which one a file is comes from ``num_bbox``: the axis of ``x`` that holds ``num_bbox`` rows is the
boxes' axis (a square ``x`` is refused, never guessed). A folder mixing the two is refused.

Every member but ``info`` is read with ``allow_pickle=False``; ``info``, where present, is read by
``safe_pickle`` (which runs nothing) and must agree with ``num_bbox``, ``image_h`` and ``image_w``.
The image id is the file name without ``.npz`` (and the image's own extension before it,
``.jpg.npz``). Kept: features, boxes, box count, image size; not kept: ``info``'s object and
attribute ids and confidences.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from typing import Iterator

import numpy as np

from butd.features.inputs import safe_pickle
from butd.features.inputs.base import InputError
from butd.features.inputs.folder import FolderInput
from butd.features.tsv import ImageRow

MEMBERS = ("x", "bbox", "num_bbox", "image_h", "image_w")
# Bytes of a member read for its header: numpy pads headers to 64 bytes (128 since numpy 2 for long shapes).
HEADER_BYTES = 4096
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class NpzInput(FolderInput):
    suffixes = (".npz",)
    what = ".npz feature file"
    flavours = {False: ("npz", "bottom-up-attention.pytorch .npz: x [boxes, features]"),
                True: ("npz_transposed", "MCAN / OpenVQA .npz: x transposed, [features, boxes]")}

    @staticmethod
    def image_id(path: str) -> str:
        name = os.path.basename(path)[:-len(".npz")]
        for suffix in IMAGE_SUFFIXES:
            if name.lower().endswith(suffix):
                return name[:-len(suffix)]
        return name

    @classmethod
    def inspect(cls, path: str, full: bool) -> tuple:
        with _NpzImage(path) as image:
            if full:
                image.decode()
            else:
                image.check()
            return image.num_boxes, image.feature_dim, image.transposed

    @staticmethod
    def read(params, paths: list, rows: dict) -> Iterator[ImageRow]:
        transposed = params
        for f in rows["files"]:
            with _NpzImage(paths[int(f)]) as image:
                x, bbox = image.decode()
                if image.transposed != transposed:
                    raise image.error(f"x is {list(x.shape)}, the other files' x is the other way round")
                yield ImageRow(image.image_id, image.image_h, image.image_w, bbox, x.T if transposed else x)


class _NpzImage:
    """One ``.npz``: its small members read, ``x``'s and ``bbox``'s headers, and their checks."""

    def __init__(self, path: str):
        self.path, self.image_id = path, NpzInput.image_id(path)
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise self.error(f"not a readable .npz ({e}): cut short, or not an .npz?") from None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.zip.close()

    def error(self, reason: str) -> InputError:
        return InputError(self.path, None, self.image_id, reason)

    def member(self, name: str) -> bytes:
        """Member ``name``'s bytes (decompressed, CRC-checked by zipfile)."""
        try:
            return self.zip.read(name + ".npy")
        except KeyError:
            raise self.error(f"has no {name} (it holds {', '.join(n[:-4] for n in self.zip.namelist())})") from None
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise self.error(f"member {name} cannot be read ({e}): cut short?") from None

    def header(self, name: str) -> tuple:
        """(shape, fortran order, dtype, data offset) of member ``name``, reading only its start."""
        try:
            with self.zip.open(name + ".npy") as f:
                return _npy_header(f.read(HEADER_BYTES), name, self.error)
        except KeyError:
            raise self.error(f"has no {name} (it holds {', '.join(n[:-4] for n in self.zip.namelist())})") from None
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
            raise self.error(f"member {name} cannot be read ({e}): cut short?") from None

    def array(self, name: str) -> np.ndarray:
        """Member ``name`` as an array (a view of its bytes), read without pickle."""
        data = self.member(name)
        shape, fortran, dtype, offset = _npy_header(data, name, self.error)
        if dtype.hasobject:
            raise self.error(f"member {name} holds Python objects (a pickle), expected numbers")
        count = int(np.prod(shape))
        if len(data) - offset < count * dtype.itemsize:
            raise self.error(f"member {name} is cut short ({len(data) - offset} of {count * dtype.itemsize} bytes)")
        return np.frombuffer(data, dtype, count, offset).reshape(shape, order="F" if fortran else "C")

    def scalar(self, name: str) -> int:
        value = self.array(name)
        if value.size != 1 or value.dtype.kind not in "iuf" or not float(value.reshape(-1)[0]).is_integer():
            raise self.error(f"{name} is {value.reshape(-1)[:4]!r} ({value.dtype}), expected one integer")
        return int(value.reshape(-1)[0])

    def _small(self) -> set:
        """Reads the box count and image size (checked); returns the member names."""
        names = {n[:-4] for n in self.zip.namelist()}
        missing = [m for m in MEMBERS if m not in names]
        if missing:
            needed = " (the image size is needed for the spatial features)" if {"image_h", "image_w"} & set(missing) \
                else ""
            raise self.error(f"has no {', '.join(missing)}{needed}; it holds {', '.join(sorted(names))}")
        self.num_boxes, self.image_h, self.image_w = (self.scalar(n) for n in ("num_bbox", "image_h", "image_w"))
        if self.num_boxes < 1:
            raise self.error(f"num_bbox is {self.num_boxes}, expected at least 1")
        if self.image_h < 1 or self.image_w < 1:
            raise self.error(f"image size {self.image_w}x{self.image_h}, expected positive width and height")
        return names

    def _shapes(self, x_shape: tuple, x_dtype, bbox_shape: tuple, bbox_dtype) -> None:
        if len(x_shape) != 2 or x_dtype.kind != "f":
            raise self.error(f"x is {x_dtype} {list(x_shape)}, expected a 2-d float array")
        self.transposed = _boxes_axis(x_shape, self.num_boxes, self.error) == 1
        self.feature_dim = int(x_shape[0 if self.transposed else 1])
        if tuple(bbox_shape) != (self.num_boxes, 4) or bbox_dtype.kind != "f":
            raise self.error(f"bbox is {bbox_dtype} {list(bbox_shape)}, expected float [num_bbox ({self.num_boxes}), 4]")

    def check(self) -> None:
        """The plan's look: the small members and the headers of ``x`` and ``bbox``."""
        self._small()
        x_shape, _, x_dtype, _ = self.header("x")
        bbox_shape, _, bbox_dtype, _ = self.header("bbox")
        self._shapes(x_shape, x_dtype, bbox_shape, bbox_dtype)

    def decode(self) -> tuple:
        """Every member read and checked (``info`` too, where there is one): (x, bbox)."""
        names = self._small()
        x, bbox = self.array("x"), self.array("bbox")
        self._shapes(x.shape, x.dtype, bbox.shape, bbox.dtype)
        if "info" in names:
            self.check_info()
        return x, bbox

    def check_info(self) -> None:
        """``info`` (read without running anything it names) must agree with the members."""
        try:
            info = safe_pickle.read_npy_object(io.BytesIO(self.member("info")), f"{self.path} (info)", "info")
        except safe_pickle.UnsafePickleError:
            raise    # never a bad image to skip: a file that names code stops the conversion
        except ValueError as e:
            raise self.error(f"info cannot be read ({e})") from None
        if not isinstance(info, dict):
            raise self.error(f"info holds a {type(info).__name__}, expected a dict")
        for key, value in (("num_boxes", self.num_boxes), ("image_h", self.image_h), ("image_w", self.image_w)):
            if key in info and info[key] != value:
                raise self.error(f"info says {key} {info[key]!r}, the file's own member says {value}")


# The header numpy writes ("{'descr': '<f4', 'fortran_order': False, 'shape': (36, 2048), }"), read
# without numpy's parser, which compiles it with ast.literal_eval: a tenth of a folder's conversion
# time at ten headers per file. Anything else goes to numpy's parser.
_HEADER = re.compile(rb"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), 'shape': \(([\d, ]*)\), *\} *\n?")


def _npy_header(data: bytes, name: str, error) -> tuple:
    """(shape, fortran order, dtype, data offset) of the .npy whose bytes start ``data``."""
    if data[:6] == b"\x93NUMPY" and len(data) >= 12 and data[6] in (1, 2, 3):
        start = 10 if data[6] == 1 else 12
        length = int.from_bytes(data[8:start], "little")
        found = _HEADER.fullmatch(data, start, start + length)
        if found:
            shape = tuple(int(d) for d in found.group(3).split(b",") if d.strip())
            return shape, found.group(2) == b"True", np.dtype(found.group(1).decode()), start + length
    from numpy.lib import format as npy
    f = io.BytesIO(data)
    try:
        version = npy.read_magic(f)
        shape, fortran, dtype = (npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0)(f)
    except (ValueError, OSError, EOFError) as e:
        raise error(f"member {name} is not a readable array ({e}): cut short?") from None
    return shape, fortran, dtype, f.tell()


def _boxes_axis(shape: tuple, num_boxes: int, error) -> int:
    """Which axis of ``x`` holds the boxes: the one of length ``num_bbox``."""
    if shape[0] == num_boxes and shape[1] != num_boxes:
        return 0
    if shape[1] == num_boxes and shape[0] != num_boxes:
        return 1
    if shape[0] == shape[1] == num_boxes:
        raise error(f"x is {list(shape)} with num_bbox {num_boxes}: cannot tell boxes from features")
    larger = " is larger than x" if num_boxes > max(shape) else " matches neither axis of x"
    raise error(f"num_bbox ({num_boxes}){larger} ({list(shape)}): the file does not hold the boxes it counts")
