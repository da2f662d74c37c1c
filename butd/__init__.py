"""butd: Bottom-Up Top-Down VQA with a memory-mapped, high-throughput data path.

One home per stage (the README's "How the code is laid out" draws the data flow):
``features`` (the store: schema, TSV rows, conversion, reader), ``text`` (tokenizer, vocabulary,
GloVe), ``tasks`` (one module per dataset), ``questions`` (the question cache), ``loading``
(sampler, batches, loaders, DataModule), ``models`` (plain nn.Modules), ``training`` (config,
LightningModule, loggers, a run), ``evaluation`` (predictions, scores, plots), ``synthetic``
(generated data in the real formats) and ``reference`` (code the tests compare against).
"""
__version__ = "0.2.0"
