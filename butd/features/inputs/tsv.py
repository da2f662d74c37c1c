"""Features TSVs (the 10-column obj36 layout and the 6-column Anderson one) as a conversion input:
the row format is ``butd.features.tsv``, the scan that plans the rows ``butd.features.convert.scan``."""
from __future__ import annotations

import os
from typing import Iterator, Optional, Sequence

from butd.features.convert.lifecycle import sources_of
from butd.features.convert.plan import Plan
from butd.features.convert.scan import probe, scan
from butd.features.inputs.base import FeatureInput, ImageKey
from butd.features.tsv import ImageRow, decode_row

DESCRIPTIONS = {"obj36": "obj36 TSV (10 columns)", "anderson": "Anderson TSV (6 columns)"}


class TSVInput(FeatureInput):
    """One TSV, or several whose rows follow each other (``.tsv.0``, ``.tsv.1``, ...). ``layout``
    and ``feature_dim``: what every row must have (default: what most of the first rows have)."""

    def __init__(self, paths: Sequence[str], image_key: ImageKey = None, layout: Optional[str] = None,
                 feature_dim: Optional[int] = None):
        super().__init__(paths, image_key)
        self.given_layout, self.given_dim = layout, feature_dim
        self._sources = None

    def source(self) -> dict:
        if self._sources is None:
            self._sources = sources_of(self.paths)
        return self._sources[0] if len(self._sources) == 1 else {"files": self._sources}

    def probe(self, skip: bool) -> None:
        self.probed = probe(self.paths, self.given_layout, skip, self.given_dim)
        self.layout, self.feature_dim = self.probed.layout, self.probed.feature_dim
        self.description = DESCRIPTIONS[self.layout]

    def check(self) -> None:
        self.probed.check()

    def plan(self, runner, progress: bool, skip: bool) -> Plan:
        self.source()
        return scan(self.paths, [s["size"] for s in self._sources], self.layout, self.feature_dim, skip, runner,
                    progress, self.image_key)

    def params(self):
        return self.layout, self.feature_dim

    @staticmethod
    def read(params, paths: list, rows: dict) -> Iterator[ImageRow]:
        """Each row's line, read by its offset and length and decoded strictly."""
        layout, feature_dim = params
        fds = {}
        try:
            for offset, length, line_no, f in zip(rows["offsets"], rows["lengths"], rows["lines"], rows["files"]):
                path = paths[int(f)]
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                line = os.pread(fds[path], int(length), int(offset))
                yield decode_row(line, layout, path, int(line_no), feature_dim)
        finally:
            for fd in fds.values():
                os.close(fd)
