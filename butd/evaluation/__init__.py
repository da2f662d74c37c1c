"""Evaluation: ``predict`` (a checkpoint's predictions for a split) and ``plots`` (training curves
and the benchmarks' figures). Each task's metric and submission format live in its module in
``butd.tasks`` (scores by group and their table: ``butd.tasks.scores``)."""
