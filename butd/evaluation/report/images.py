"""The gallery's pictures: an image file found and shrunk into an inline JPEG (Pillow), or a blank
canvas of the image's size where the file is absent, and the boxes to draw over it in the shrunk
picture's pixels.

    picture = picture_of(task.image_files(image_id, split), "images/", (640, 480))
    picture.uri           # "data:image/jpeg;base64,..." or None (a blank canvas)
    picture.rectangles(boxes)    # [(x, y, width, height), ...] inside (picture.width, picture.height)
"""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, UnidentifiedImageError

# The longest side of a picture in the page: small enough that 48 of them keep the file a few MB;
# the height of the two pictures of a pair (NLVR2), side by side.
MAX_SIDE = 360
PAIR_HEIGHT = 240
JPEG_QUALITY = 80
# A weight's label ("0.330", bold 12 px, drawn from its baseline): the room it takes, in pixels
LABEL_SIZE = (38.0, 13.0)


@dataclass
class Picture:
    """One image as the page shows it: ``width`` x ``height`` pixels, ``uri`` its inline JPEG or
    None for a blank canvas; ``source`` the file shown (None where none was found) and ``note``
    why a canvas is blank (None where the image is shown)."""
    width: int
    height: int
    uri: Optional[str]
    source: Optional[str] = None
    note: Optional[str] = None

    def rectangles(self, boxes: np.ndarray) -> List[Tuple[float, float, float, float]]:
        """``(x, y, width, height)`` in the picture's pixels of ``boxes`` [n, 4] (x0, y0, x1, y1 over
        the image's width and height, clipped to it), in whole tenths of a pixel, corners rounded
        down: ``x + width`` never passes the picture's edge."""
        b = np.clip(np.asarray(boxes, dtype=np.float64).reshape(-1, 4), 0.0, 1.0)
        tenths = np.floor(b * np.array([self.width, self.height] * 2) * 10).astype(np.int64)
        x0, x1 = np.minimum(tenths[:, 0], tenths[:, 2]), np.maximum(tenths[:, 0], tenths[:, 2])
        y0, y1 = np.minimum(tenths[:, 1], tenths[:, 3]), np.maximum(tenths[:, 1], tenths[:, 3])
        return [(x / 10, y / 10, (xe - x) / 10, (ye - y) / 10) for x, y, xe, ye in
                zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist())]


def label_positions(rects: Sequence[Tuple[float, float, float, float]], size: Tuple[int, int],
                    label: Tuple[float, float] = LABEL_SIZE) -> List[Tuple[float, float]]:
    """Where each box's label goes (``(x, baseline y)``), the boxes in the order given (the most
    attended first): inside its top-left corner, else inside its bottom-left, above it or below it,
    whichever first overlaps no label placed before and stays in the picture; where none does,
    the top-left corner. Boxes often share a corner (regions of one object), and labels drawn at
    the same corner cannot be read."""
    width, height = size
    lw, lh = label
    placed = []
    for x, y, _, h in rects:
        left = min(x + 3, max(width - lw, 0))
        candidates = [(left, y + lh + 1), (left, y + h - 3), (left, y - 3), (left, y + h + lh)]
        free = [(cx, cy) for cx, cy in candidates if cy - lh >= 0 and cy <= height
                and not any(cx < px + lw and px < cx + lw and cy - lh < py and py - lh < cy for px, py in placed)]
        placed.append(free[0] if free else candidates[0])
    return placed


def shown_size(width: int, height: int, max_side: int = MAX_SIDE, max_height: Optional[int] = None) -> Tuple[int, int]:
    """An image's size once shrunk to fit ``max_side`` (or, given ``max_height``, to that height:
    the images of a pair then share one), never enlarged, at least 1 x 1."""
    scale = min(1.0, max_side / max(width, height, 1)) if max_height is None else min(1.0, max_height / max(height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def find_image(images_dir: Optional[str], names: Sequence[str]) -> Optional[str]:
    """The first of ``names`` that is a file in ``images_dir`` (None: none is, or no directory)."""
    if not images_dir:
        return None
    for name in names:
        path = os.path.join(images_dir, name)
        if os.path.isfile(path):
            return path
    return None


def picture_of(names: Sequence[str], images_dir: Optional[str], size: Tuple[int, int],
               max_side: int = MAX_SIDE, max_height: Optional[int] = None) -> Picture:
    """The picture of an image whose file may be one of ``names`` in ``images_dir`` and whose size
    in the feature store is ``size`` (width, height): the file shrunk (``shown_size``) as an inline
    JPEG, or a blank canvas of ``size`` shrunk alike where the file is absent or unreadable (the
    boxes' coordinates are fractions of the image, so they land where they belong either way)."""
    path = find_image(images_dir, names)
    if path is None:
        note = f"{' or '.join(names)} not found" if images_dir else "no image directory given"
        return Picture(*shown_size(*size, max_side, max_height), None, note=note)
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image = image.resize(shown_size(*image.size, max_side, max_height), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        return Picture(*shown_size(*size, max_side, max_height), None,
                       note=f"{os.path.basename(path)} is not a readable image ({e})")
    uri = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Picture(image.width, image.height, uri, source=path)
