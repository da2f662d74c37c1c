"""The feature store: ``schema`` (one layout, shared by writer and reader), ``tsv`` (rows of the
features TSVs), ``convert`` (TSV -> Zarr, parallel and resumable) and ``reader`` (batched reads)."""
