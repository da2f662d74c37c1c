"""Pass 1 of a conversion: scan features TSVs into a plan of their rows (file, offsets, lines, ids,
box counts), checking every row's structure without reading its features. See ``butd.features.convert``."""
from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from butd.features.convert.plan import Plan, earlier_images, repeat_reason
from butd.features.convert.pool import progress_bar
from butd.features.schema import TSV_COLUMNS
from butd.features.tsv import (
    COLUMN_INDEX,
    TSVFormatError,
    UnreadField,
    b64_length,
    check_not_compressed,
    decode_row,
    detect_layout,
    parse_head,
    split_fields,
    split_head,
    text_start,
)

# Scan ranges of at most this many bytes (more ranges than workers keeps the scan bar moving).
SCAN_RANGE_BYTES = 256 << 20
# The feature size is the one most of the first rows agree on (never row 1's alone).
PROBE_ROWS = 16


def _first_rows(paths: Sequence[str], layout: Optional[str]) -> list:
    """(path, line, layout, feature_dim, error, image id) of the first ``PROBE_ROWS`` non-blank lines
    over the files."""
    rows = []
    for path in paths:
        check_not_compressed(path)
        with open(path, "rb") as f:
            f.seek(text_start(path))
            for line_no, line in enumerate(f, 1):
                if len(rows) == PROBE_ROWS:
                    return rows
                if line.isspace():
                    continue
                try:
                    found = layout or detect_layout(line, path, line_no)
                    head = parse_head(split_fields(line), found, path, line_no)
                    rows.append((path, line_no, found, head.feature_dim, None, head.image_id))
                except TSVFormatError as e:
                    rows.append((path, line_no, None, None, e, None))
    return rows


@dataclass
class Probe:
    """What the first rows of the TSVs say: the layout and feature size most of them agree on (or
    the ones given), and the rows themselves: (path, line, layout, feature_dim, error, image id)."""
    layout: str
    feature_dim: int
    rows: list
    dim_given: bool = False   # the feature size is --feature_dim's, not the rows' agreement

    def check(self) -> None:
        """Error mode: every one of the first rows must be good and agree; the first that is not is
        the error (a row that disagrees is told what the others have)."""
        agree = sum(1 for r in self.rows if (r[2], r[3]) == (self.layout, self.feature_dim))
        for path, line_no, found, dim, error, image_id in self.rows:
            if error is not None:
                raise error
            if self.dim_given and dim != self.feature_dim:
                raise TSVFormatError(path, line_no, image_id, f"{dim} feature values per box, but --feature_dim is "
                                     f"{self.feature_dim}")
            if (found, dim) != (self.layout, self.feature_dim):
                raise TSVFormatError(path, line_no, image_id, f"{found} layout with {dim} feature values per box, but "
                                     f"{agree} of the first {len(self.rows)} rows have the {self.layout} layout "
                                     f"with {self.feature_dim} (pass --feature_dim N if this row is the right one)")


def probe(paths: Sequence[str], layout: Optional[str], skip: bool, feature_dim: Optional[int] = None) -> Probe:
    """The layout and feature size of the TSVs: the ones most of their first ``PROBE_ROWS`` rows
    agree on, never the first row's alone (or the ``layout``/``feature_dim`` given). Raises where
    none of those rows is good (in error mode: the first one's error) or two sizes tie."""
    rows = _first_rows(paths, layout)
    good = [r for r in rows if r[4] is None]
    if not good:
        if rows and not skip:
            raise rows[0][4]
        raise ValueError(f"{paths[0]}: no valid rows (the file is empty or every row is bad)"
                         if len(paths) == 1 else f"{', '.join(paths)}: no valid rows among the first {len(rows)}")
    dim_given = feature_dim is not None
    layout = layout or Counter(r[2] for r in good).most_common(1)[0][0]
    dims = Counter(r[3] for r in good if r[2] == layout).most_common()
    if feature_dim is None:
        if len(dims) > 1 and dims[0][1] == dims[1][1]:
            raise ValueError(f"{paths[0]}: the first rows disagree on the feature size ({dims[0][1]} rows of "
                             f"{dims[0][0]} and {dims[1][1]} of {dims[1][0]} values per box); pass --feature_dim")
        feature_dim = dims[0][0]
    return Probe(layout, int(feature_dim), rows, dim_given)


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
        pos = text_start(path) if start == 0 else _line_end(fd, start - 1)
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


def _join_ranges(path: str, index: int, scans: list, skip: bool, rows: dict, bad: list) -> None:
    """Append one file's ranges to ``rows`` in file order, with the file's line numbers."""
    first_line = 0
    for scan in scans:
        for line, image_id, reason in scan["bad"]:
            if not skip:
                raise TSVFormatError(path, first_line + line, image_id, reason)
            bad.append({"file": path, "line": first_line + line, "image_id": image_id, "reason": reason})
        for name in ("offsets", "lengths", "num_boxes", "ids"):
            rows[name] += scan[name]
        rows["lines"] += [first_line + n for n in scan["lines"]]
        rows["files"] += [index] * len(scan["lines"])
        first_line += scan["line_count"]


def _merge_scans(paths: Sequence[str], scans_by_file: list, skip: bool,
                 image_key: Optional[Callable[[str], str]] = None) -> Plan:
    """Join the files' ranges in order (each file with its own line numbers); find repeated images
    (the same id, or with ``image_key`` another spelling of it), across files too."""
    rows = {name: [] for name in ("offsets", "lengths", "lines", "num_boxes", "ids", "files")}
    bad = []
    for index, (path, scans) in enumerate(zip(paths, scans_by_file)):
        _join_ranges(path, index, scans, skip, rows, bad)
    repeated = set()
    for i, j in earlier_images(rows["ids"], image_key):
        f, first_file = rows["files"][i], rows["files"][j]
        where = f"line {rows['lines'][j]}" if first_file == f else f"{paths[first_file]}:{rows['lines'][j]}"
        reason = repeat_reason(rows["ids"][i], rows["ids"][j], where)
        if not skip:
            raise TSVFormatError(paths[f], rows["lines"][i], rows["ids"][i], reason)
        bad.append({"file": paths[f], "line": rows["lines"][i], "image_id": rows["ids"][i], "reason": reason})
        repeated.add(i)
    keep = [i for i in range(len(rows["ids"])) if i not in repeated]
    where = paths[0] if len(paths) == 1 else ", ".join(paths)
    if not keep:
        raise ValueError(f"{where}: no valid rows (the file is empty or every row is bad)")
    if skip and len(bad) > len(keep):
        first = bad[0]
        raise ValueError(f"{where}: {len(bad)} bad rows against {len(keep)} good ones; that is not a few bad rows "
                         f"but the wrong file or settings (--layout, --feature_dim?); first: {first['file']}:"
                         f"{first['line']}: {first['reason']}")
    keep = np.asarray(keep)
    order = {p: i for i, p in enumerate(paths)}
    bad.sort(key=lambda b: (order[b["file"]], b["line"]))
    return Plan(np.asarray(rows["offsets"], np.int64)[keep], np.asarray(rows["lengths"], np.int64)[keep],
                np.asarray(rows["lines"], np.int64)[keep], np.asarray(rows["num_boxes"], np.int32)[keep],
                np.asarray(rows["ids"], dtype=np.str_)[keep], bad, np.asarray(rows["files"], np.int32)[keep])


def scan(paths: Sequence[str], sizes: Sequence[int], layout: str, feature_dim: int, skip: bool, runner,
         progress, image_key: Optional[Callable[[str], str]] = None) -> Plan:
    """The plan of the rows of ``paths``, in order (file by file); ``image_key`` as ``_merge_scans``."""
    # Over the workers when there are some: checking rows from their heads is cheap but skip
    # mode's full decoding is not.
    total = sum(sizes)
    n_ranges = max(1, min(math.ceil(total / 4096), max(runner.workers, math.ceil(total / SCAN_RANGE_BYTES))))
    tasks, owner = [], []
    for index, (path, size) in enumerate(zip(paths, sizes)):
        share = max(1, round(n_ranges * size / max(total, 1))) if size else 0
        bounds = [size * i // share for i in range(share + 1)]
        tasks += [(path, bounds[i], bounds[i + 1], layout, feature_dim, skip) for i in range(share)]
        owner += [index] * share
    scans = [None] * len(tasks)
    name = os.path.basename(paths[0]) + (f" (+{len(paths) - 1})" if len(paths) > 1 else "")
    with progress_bar(progress, total, f"scan {name}") as bar:
        for i, result in runner(_scan_range, tasks, ordered=True):
            scans[i] = result
            bar.update(result["bytes"])
    return _merge_scans(paths, [[s for s, o in zip(scans, owner) if o == index] for index in range(len(paths))], skip,
                        image_key)
