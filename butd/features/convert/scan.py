"""Pass 1 of a conversion: scan a features TSV into a plan of its rows (offsets, lines, ids, box
counts), checking every row's structure without reading its features. See ``butd.features.convert``."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from butd.features.convert.pool import progress_bar
from butd.features.schema import TSV_COLUMNS
from butd.features.tsv import COLUMN_INDEX, TSVFormatError, UnreadField, b64_length, decode_row, \
    detect_layout, parse_head, split_fields, split_head

# Scan ranges of at most this many bytes (more ranges than workers keeps the scan bar moving).
SCAN_RANGE_BYTES = 256 << 20


@dataclass
class Plan:
    """The rows of the store, in order: where each is in the TSV and what it is."""
    offsets: np.ndarray      # int64 byte offset of the row's line
    lengths: np.ndarray      # int64 byte length of the line (with its ending)
    lines: np.ndarray        # int64 1-based line number
    num_boxes: np.ndarray    # int32
    image_ids: np.ndarray    # str
    bad_rows: list = field(default_factory=list)

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, offsets=self.offsets, lengths=self.lengths, lines=self.lines,
                 num_boxes=self.num_boxes, image_ids=self.image_ids.astype(np.str_))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Plan":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["offsets"], z["lengths"], z["lines"], z["num_boxes"], z["image_ids"])



def probe(path: str, layout: Optional[str], skip: bool) -> tuple:
    """(layout, feature_dim) from the first good row; in error mode the first row must be good."""
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if line.isspace():
                continue
            try:
                found = layout or detect_layout(line, path, line_no)
                return found, parse_head(split_fields(line), found, path, line_no).feature_dim
            except TSVFormatError:
                if not skip:
                    raise
    raise ValueError(f"{path}: no valid rows (the file is empty or every row is bad)")


def _scan_range(task: tuple) -> dict:
    """Rows of the lines that start in byte range [start, end). Line numbers are local (1 = the
    first line starting in the range); the caller makes them global.

    In error mode a row is checked from its head (the fields before the features, a few KB) and
    the two bytes where its line must end given ``num_boxes`` and ``feature_dim``: the features
    (~99% of the bytes) are not read here, the conversion's strict decoding checks them. A line
    this cannot settle (a bad or blank one) is read whole and checked as before."""
    path, start, end, layout, feature_dim, skip = task
    offsets, lengths, lines, num_boxes, ids, bad = [], [], [], [], [], []
    local = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = start if start == 0 else _line_end(fd, start - 1)
        while pos < end:
            local += 1
            fast = None if skip else _row_from_head(fd, pos, size, layout, feature_dim, path, local)
            if fast is not None:
                length, image_id, boxes = fast
            else:
                line = _read_line(fd, pos)
                if not line:
                    break
                length = len(line)
                if line.isspace():
                    pos += length
                    continue
                try:
                    if skip:   # decode fully: every bad row must be known before rows are numbered
                        row = decode_row(line, layout, path, local, feature_dim)
                        image_id, boxes = row.image_id, row.num_boxes
                    else:
                        head = parse_head(split_fields(line), layout, path, local, feature_dim)
                        image_id, boxes = head.image_id, head.num_boxes
                except TSVFormatError as e:
                    bad.append((e.line, e.image_id, e.reason))
                    if not skip:
                        break
                    pos += length
                    continue
            offsets.append(pos)
            lengths.append(length)
            lines.append(local)
            num_boxes.append(boxes)
            ids.append(image_id)
            pos += length
    finally:
        os.close(fd)
    return {"offsets": offsets, "lengths": lengths, "lines": lines, "num_boxes": num_boxes,
            "ids": ids, "bad": bad, "line_count": local, "bytes": min(pos, size) - start}


HEAD_BYTES = 16 << 10   # holds every field before the features (~2 KB at 36 boxes, ~6 KB at 100)
READ_BYTES = 1 << 20


def _row_from_head(fd: int, pos: int, size: int, layout: str, feature_dim: int, path: str,
                   line_no: int) -> Optional[tuple]:
    """(line length, image id, num_boxes) of a good row at ``pos``, read from its head and its
    predicted end; None where that does not show a good row."""
    head = os.pread(fd, HEAD_BYTES, pos)
    split = split_head(head, len(TSV_COLUMNS[layout]) - 1)
    if split is None:
        return None
    fields, features_at = split
    try:
        boxes = int(bytes(fields[COLUMN_INDEX[layout]["num_boxes"]]))
    except ValueError:
        return None
    if boxes <= 0:
        return None
    chars = b64_length(boxes * feature_dim * 4)
    features_end = pos + features_at + chars
    tail = os.pread(fd, 4, features_end - 2)
    if tail[2:3] == b"\n":
        ending = 1
    elif tail[2:4] == b"\r\n":
        ending = 2
    elif len(tail) == 2 and features_end == size:   # the last line, without a line ending
        ending = 0
    else:
        return None
    try:
        row = parse_head(fields + [UnreadField(chars, tail[:2])], layout, path, line_no, feature_dim)
    except TSVFormatError:
        return None
    return features_end + ending - pos, row.image_id, row.num_boxes


def _read_line(fd: int, pos: int) -> bytes:
    """The line at ``pos`` with its ending (b"" at the end of the file)."""
    parts = []
    while True:
        block = os.pread(fd, READ_BYTES, pos)
        newline = block.find(b"\n")
        if newline >= 0:
            parts.append(block[:newline + 1])
            break
        parts.append(block)
        if len(block) < READ_BYTES:
            break
        pos += len(block)
    return b"".join(parts)


def _line_end(fd: int, pos: int) -> int:
    """The offset just after the line ending at or after ``pos`` (the file's size if none)."""
    return pos + len(_read_line(fd, pos))


def _merge_scans(path: str, scans: list, skip: bool) -> Plan:
    """Join the ranges' rows in file order with global line numbers; find duplicate ids."""
    offsets, lengths, lines, num_boxes, ids, bad = [], [], [], [], [], []
    first_line = 0
    for scan in scans:
        for line, image_id, reason in scan["bad"]:
            if not skip:
                raise TSVFormatError(path, first_line + line, image_id, reason)
            bad.append({"file": path, "line": first_line + line, "image_id": image_id, "reason": reason})
        offsets += scan["offsets"]
        lengths += scan["lengths"]
        lines += [first_line + n for n in scan["lines"]]
        num_boxes += scan["num_boxes"]
        ids += scan["ids"]
        first_line += scan["line_count"]
    seen, keep = {}, []
    for i, (image_id, line) in enumerate(zip(ids, lines)):
        if image_id in seen:
            reason = f"duplicate image id: first seen on line {seen[image_id]}"
            if not skip:
                raise TSVFormatError(path, line, image_id, reason)
            bad.append({"file": path, "line": line, "image_id": image_id, "reason": reason})
        else:
            seen[image_id] = line
            keep.append(i)
    if not keep:
        raise ValueError(f"{path}: no valid rows (the file is empty or every row is bad)")
    keep = np.asarray(keep)
    bad.sort(key=lambda b: b["line"])
    return Plan(np.asarray(offsets, np.int64)[keep], np.asarray(lengths, np.int64)[keep],
                np.asarray(lines, np.int64)[keep], np.asarray(num_boxes, np.int32)[keep],
                np.asarray(ids, dtype=np.str_)[keep], bad)


def scan(path: str, size: int, layout: str, feature_dim: int, skip: bool, runner, progress) -> Plan:
    # Over the workers when there are some: checking rows from their heads is cheap but skip
    # mode's full decoding is not.
    n_ranges = max(1, min(math.ceil(size / 4096),
                          max(runner.workers, math.ceil(size / SCAN_RANGE_BYTES))))
    bounds = [size * i // n_ranges for i in range(n_ranges + 1)]
    tasks = [(path, bounds[i], bounds[i + 1], layout, feature_dim, skip) for i in range(n_ranges)]
    scans = [None] * n_ranges
    with progress_bar(progress, size, f"scan {os.path.basename(path)}") as bar:
        for i, scan in runner(_scan_range, tasks, ordered=True):
            scans[i] = scan
            bar.update(scan["bytes"])
    return _merge_scans(path, scans, skip)

