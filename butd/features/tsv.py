"""Rows of a bottom-up-attention features TSV: splitting, checking, decoding, and the 6-d spatials.

Two layouts exist (``butd.features.schema.TSV_COLUMNS``): the 10-column obj36 one of the GQA files and the
6-column one of Anderson's features (width before height). A line's field count tells them apart.
Arrays are base64 of little-endian float32 (boxes, features, confidences) or int64 (object and
attribute ids); lines may end in "\\n" or "\\r\\n".

Checking comes in two strengths, both raising ``TSVFormatError`` that names file, line and id:
``parse_head`` checks a row's structure from field lengths alone (cheap: no base64 decoding), and
``decode_row`` decodes it fully with strict base64.

A file may start with a UTF-8 byte-order mark (some Windows tools write one): its rows start after
it (``text_start``). A compressed file is refused by name (``check_not_compressed``), not by the
binary garbage its first "row" would show.
"""
from __future__ import annotations

import binascii
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from butd.cli import excerpt
from butd.features.schema import TSV_COLUMNS, TSV_LAYOUTS

try:   # SIMD base64 (tens of GB/s); binascii (about 1 GB/s) decodes exactly the same
    from pybase64 import b64decode as _pybase64_decode

    def b64decode_strict(data) -> bytes:
        return _pybase64_decode(data, validate=True)
except ImportError:  # pragma: no cover - pybase64 is a declared dependency
    def b64decode_strict(data) -> bytes:
        return binascii.a2b_base64(data, strict_mode=True)

# Columns under one name whatever the layout (anderson says image_id / image_w / image_h).
_CANONICAL = {"image_id": "img_id", "image_w": "img_w", "image_h": "img_h"}
COLUMN_INDEX = {layout: {_CANONICAL.get(c, c): i for i, c in enumerate(cols)}
                for layout, cols in TSV_COLUMNS.items()}
LAYOUT_FOR_FIELD_COUNT = {len(cols): layout for layout, cols in TSV_COLUMNS.items()}

# The base64 columns: dtype and values per box (None: the feature dimension, learnt from the data).
ARRAY_COLUMNS = {
    "objects_id": (np.dtype("<i8"), 1),
    "objects_conf": (np.dtype("<f4"), 1),
    "attrs_id": (np.dtype("<i8"), 1),
    "attrs_conf": (np.dtype("<f4"), 1),
    "boxes": (np.dtype("<f4"), 4),
    "features": (np.dtype("<f4"), None),
}


BOM = b"\xef\xbb\xbf"
# The first bytes of compressed files, and the command that undoes each.
COMPRESSED = ((b"\x1f\x8b", "gzip", "gunzip -k"), (b"PK\x03\x04", "zip", "unzip"), (b"BZh", "bzip2", "bunzip2 -k"),
              (b"\xfd7zXZ\x00", "xz", "unxz -k"), (b"\x28\xb5\x2f\xfd", "zstd", "unzstd"))


def text_start(path: str) -> int:
    """Offset of the first row of a TSV: past a leading UTF-8 byte-order mark, if any."""
    with open(path, "rb") as f:
        return len(BOM) if f.read(len(BOM)) == BOM else 0


def check_not_compressed(path: str) -> None:
    """Raise ValueError naming the format when ``path`` is a compressed file, not a TSV."""
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, name, command in COMPRESSED:
        if head.startswith(magic):
            raise ValueError(f"{path}: compressed file ({name}), not a features TSV: decompress it first "
                             f"(`{command} {path}`) and convert the .tsv")


@dataclass
class ImageRow:
    """One row of a features TSV, decoded."""
    image_id: str
    img_h: int
    img_w: int
    boxes: np.ndarray                      # [num_boxes, 4] float32, x1 y1 x2 y2 in pixels
    features: np.ndarray                   # [num_boxes, feature_dim] float32
    objects_id: np.ndarray = None          # [num_boxes] int64 (obj36 layout only)
    objects_conf: np.ndarray = None        # [num_boxes] float32
    attrs_id: np.ndarray = None
    attrs_conf: np.ndarray = None
    scene: dict = field(default_factory=dict)   # what the image shows (synthetic data only)

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)


def named_image(image_id: Optional[str]) -> str:
    """How an error message names a bad image: ``image id 'ID'`` (a short prefix of a long one)."""
    return f"image id {excerpt(image_id)}" if image_id else "image id unknown"


class TSVFormatError(ValueError):
    """A bad row: ``path:line: image id ID: reason``. Built from plain args so it survives being
    sent back from a worker process."""

    def __init__(self, path: str, line: int, image_id: Optional[str], reason: str):
        super().__init__(path, line, image_id, reason)

    path = property(lambda self: self.args[0])
    line = property(lambda self: self.args[1])
    image_id = property(lambda self: self.args[2])
    reason = property(lambda self: self.args[3])

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {named_image(self.image_id)}: {self.reason}"


@dataclass
class RowHead:
    """What a row's fields say without decoding its arrays."""
    image_id: str
    img_h: int
    img_w: int
    num_boxes: int
    feature_dim: int


def split_fields(line: bytes) -> list:
    """The tab-separated fields of one line (without its line ending) as memoryviews into it: a
    row is ~400 KB, so fields are located, never copied."""
    end = len(line)
    while end and line[end - 1] in (10, 13):   # "\n" or "\r\n"
        end -= 1
    view, fields, start = memoryview(line), [], 0
    while (tab := line.find(b"\t", start, end)) >= 0:
        fields.append(view[start:tab])
        start = tab + 1
    fields.append(view[start:end])
    return fields


def detect_layout(line: bytes, path: str = "<tsv>", line_no: int = 1) -> str:
    """The layout whose column count matches this line's field count."""
    fields = split_fields(line)
    layout = LAYOUT_FOR_FIELD_COUNT.get(len(fields))
    if layout is None:
        expected = " or ".join(f"{len(c)} ({name})" for name, c in TSV_COLUMNS.items())
        raise TSVFormatError(path, line_no, _image_id(fields), f"{len(fields)} tab-separated fields; "
                             f"expected {expected}: is this a features TSV?")
    return layout


def _image_id(fields: list) -> Optional[str]:
    return bytes(fields[0]).decode("utf-8", "replace") if fields and len(fields[0]) else None


@dataclass(frozen=True)
class UnreadField:
    """A field known only by its length and its last two bytes: all that ``parse_head`` needs of a
    base64 field, so a scan can check a row without reading its ~400 KB of features."""
    length: int
    last2: bytes

    def __len__(self) -> int:
        return self.length


def _b64_len(field) -> Optional[int]:
    """Bytes a base64 field decodes to, from its length and padding; None if that length is invalid."""
    n = len(field)
    if n % 4:
        return None
    tail = field.last2 if isinstance(field, UnreadField) else bytes(field[-2:])
    return n // 4 * 3 - (tail.count(b"=") if n else 0)


def b64_length(nbytes: int) -> int:
    """Characters of padded base64 for ``nbytes`` bytes."""
    return -(-nbytes // 3) * 4


def split_head(head: bytes, count: int) -> Optional[tuple]:
    """The first ``count`` fields of the line that starts ``head`` (memoryviews into it) and the
    offset where the next field starts; None if the line (or ``head``) ends first."""
    view, fields, start = memoryview(head), [], 0
    for _ in range(count):
        tab = head.find(b"\t", start)
        if tab < 0:
            return None
        fields.append(view[start:tab])
        start = tab + 1
    if head.find(b"\n", 0, start) >= 0:
        return None
    return fields, start


def _int(field, name: str, fail) -> int:
    field = bytes(field)
    try:
        return int(field)
    except ValueError:
        pass
    try:
        value = float(field)   # the specification reads sizes with float(); accept "480.0"
    except ValueError:
        value = None
    if value is None or not value.is_integer():
        fail(f"{name} is {excerpt(field)}, expected an integer")
    return int(value)


def parse_head(fields: list, layout: str, path: str, line_no: int,
               feature_dim: Optional[int] = None) -> RowHead:
    """Check a split row's structure (field count, sizes, base64 lengths against ``num_boxes``)
    without decoding; ``feature_dim`` (if given) is what every row must have."""
    columns = TSV_COLUMNS[layout]
    image_id = _image_id(fields)

    def fail(reason):
        raise TSVFormatError(path, line_no, image_id, reason)

    if len(fields) != len(columns):
        other = LAYOUT_FOR_FIELD_COUNT.get(len(fields))
        hint = f" (that is the {other} layout: wrong --layout?)" if other else \
            " (line truncated?)" if len(fields) < len(columns) else ""
        fail(f"{len(fields)} tab-separated fields, expected {len(columns)} for the {layout} layout "
             f"({', '.join(columns)}){hint}")
    if not image_id:
        fail("empty image id")
    col = COLUMN_INDEX[layout]
    img_h, img_w = _int(fields[col["img_h"]], "img_h", fail), _int(fields[col["img_w"]], "img_w", fail)
    num_boxes = _int(fields[col["num_boxes"]], "num_boxes", fail)
    if img_h <= 0 or img_w <= 0:
        fail(f"image size {img_w}x{img_h}, expected positive width and height")
    if num_boxes <= 0:
        fail(f"num_boxes is {num_boxes}, expected at least 1")
    for name, (dtype, per_box) in ARRAY_COLUMNS.items():
        if name not in col:
            continue
        field = fields[col[name]]
        nbytes = _b64_len(field)
        if nbytes is None:
            fail(f"{name}: {len(field)} base64 characters, not a multiple of 4 (bad base64 or line truncated?)")
        if per_box is None:
            unit = num_boxes * dtype.itemsize
            if nbytes == 0 or nbytes % unit or (feature_dim is not None and nbytes != unit * feature_dim):
                want = f"{feature_dim}" if feature_dim is not None else "a whole number of"
                # a whole number of other values per box is another feature size, not a cut line
                hint = f"it has {nbytes // unit}: another feature size (--feature_dim?)" \
                    if nbytes and not nbytes % unit else "line truncated?"
                fail(f"{name}: {nbytes} bytes, expected num_boxes ({num_boxes}) x {want} float32 values "
                     f"per box ({hint})")
            feature_dim = nbytes // unit
        elif nbytes != num_boxes * per_box * dtype.itemsize:
            fail(f"{name}: {nbytes} bytes, expected num_boxes ({num_boxes}) x {per_box} x "
                 f"{dtype.itemsize} = {num_boxes * per_box * dtype.itemsize} (line truncated?)")
    return RowHead(image_id, img_h, img_w, num_boxes, feature_dim)


def decode_row(line: bytes, layout: str, path: str = "<tsv>", line_no: int = 1,
               feature_dim: Optional[int] = None) -> ImageRow:
    """Decode one TSV line (checked as by ``parse_head``, then strict base64) into an ImageRow.
    Arrays are read-only views of the decoded bytes."""
    fields = split_fields(line)
    head = parse_head(fields, layout, path, line_no, feature_dim)
    col = COLUMN_INDEX[layout]
    arrays = {}
    for name, (dtype, _per_box) in ARRAY_COLUMNS.items():
        if name not in col:
            continue
        try:
            raw = b64decode_strict(fields[col[name]])
        except (binascii.Error, ValueError) as e:
            raise TSVFormatError(path, line_no, head.image_id, f"{name}: bad base64 ({e})") from None
        values = np.frombuffer(raw, dtype=dtype)
        arrays[name] = values.reshape(head.num_boxes, -1) if name in ("boxes", "features") else values
    return ImageRow(head.image_id, head.img_h, head.img_w, **arrays)


def spatial_features(boxes: np.ndarray, img_w, img_h) -> np.ndarray:
    """The specification's 6-d box geometry ``[x1/w, y1/h, x1/w + bw/w, y1/h + bh/h, bw/w, bh/h]``
    (bw = x2 - x1, bh = y2 - y1), in float32 with the specification's order of operations so results
    are bit-equal. ``boxes`` is ``[..., num_boxes, 4]``; ``img_w``/``img_h`` scalars or ``[...]``."""
    boxes = np.asarray(boxes, dtype=np.float32)
    # The spec divides float32 arrays by a Python float, which NumPy performs in float32.
    w = np.asarray(img_w, dtype=np.float32)[..., np.newaxis]
    h = np.asarray(img_h, dtype=np.float32)[..., np.newaxis]
    box_width = boxes[..., 2] - boxes[..., 0]
    box_height = boxes[..., 3] - boxes[..., 1]
    scaled_width = box_width / w
    scaled_height = box_height / h
    scaled_x = boxes[..., 0] / w
    scaled_y = boxes[..., 1] / h
    return np.stack((scaled_x, scaled_y, scaled_x + scaled_width, scaled_y + scaled_height,
                     scaled_width, scaled_height), axis=-1)


def check_layout(layout: Optional[str]) -> None:
    if layout is not None and layout not in TSV_LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {', '.join(TSV_LAYOUTS)} (or None to detect)")
