"""Evaluation: ``inference`` (a model's outputs batch by batch: logits, probabilities, attention over
boxes), ``predict`` (a checkpoint's predictions for a split, scored and written), ``gqa_official``
(GQA's official evaluation files: all questions streamed, attentions written) and ``plots`` (training
curves and the benchmarks' figures). Each task's metric and submission format live in its module in
``butd.tasks`` (scores by group and their table: ``butd.tasks.scores``)."""
