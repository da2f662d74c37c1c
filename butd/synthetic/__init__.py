"""Generated data sets in the real file formats, for the demo, the tests and the benchmarks:
``scene`` (the hidden scenes and their feature rows) and one generator per task (``gqa``)."""
