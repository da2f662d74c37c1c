"""butd: Bottom-Up Top-Down VQA on GQA with a memory-mapped, high-throughput data path.

The stages each have one home: ``sample`` (generated GQA-shaped data), ``schema`` (the feature
store layout), ``tsv``/``convert`` (features TSV -> Zarr), ``text``/``questions`` (tokenizer,
vocabularies, GloVe, question shards), ``store``/``sampler``/``data`` (the loader), ``model``
(plain nn.Modules), ``lit`` (the LightningModule), ``metrics_logger``, ``evaluation`` and ``plots``.
"""
__version__ = "0.1.0"
