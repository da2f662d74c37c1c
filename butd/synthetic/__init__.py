"""Generated data sets in the real file formats, for the demo, the tests and the benchmarks:
``scene`` (the hidden scenes and their feature rows) and one generator per task (``gqa``, ``vqa2``,
``nlvr2``), each with ``generate(out=...)`` and a command line (``python -m butd.synthetic.<task>``).

    from butd.synthetic import generator
    generator("vqa2").generate("/tmp/sample", feature_dim=64)
"""
from __future__ import annotations

import importlib

GENERATORS = {"gqa": "butd.synthetic.gqa", "vqa2": "butd.synthetic.vqa2", "nlvr2": "butd.synthetic.nlvr2"}


def generator(task: str):
    """The generator module of ``task`` (a ``--dataset`` value), imported when first asked for."""
    if task not in GENERATORS:
        raise ValueError(f"no generated sample for {task!r}; there is one for {', '.join(GENERATORS)}")
    return importlib.import_module(GENERATORS[task])
