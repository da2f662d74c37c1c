"""Region features (any layout of ``butd.features.inputs``) -> Zarr feature store: ``plan`` (the
rows in order), ``scan`` (pass 1 of a TSV: its plan), ``chunks`` (pass 2: decode and write a chunk),
``float16`` (the cast), ``direct_io`` (O_DIRECT writes), ``pool`` (worker processes), ``lifecycle``
(create, resume, verify, complete) and ``driver`` (``convert``)."""
from butd.features.convert.driver import (
    BAD_ROW_MODES,
    DEFAULT_CHUNK_IMAGES,
    ConvertSummary,
    convert,
    convert_stores,
    convert_tsv,
)
from butd.features.convert.float16 import float32_to_float16
from butd.features.convert.lifecycle import bad_rows_report_path, dir_bytes

__all__ = ["BAD_ROW_MODES", "DEFAULT_CHUNK_IMAGES", "ConvertSummary", "convert", "convert_stores", "convert_tsv",
           "float32_to_float16", "bad_rows_report_path", "dir_bytes"]
