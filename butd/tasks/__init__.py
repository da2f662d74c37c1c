"""The datasets, one module each behind the ``butd.tasks.base.Task`` interface.

    from butd.tasks import get_task, TASK_NAMES
    task = get_task("gqa")

A task module defines ``TASK``, its one instance; adding a dataset is a module plus a line here.
``json_stream`` (streaming readers for question files) and ``scores`` (scores by group, their table)
serve every task. The package imports no other stage of ``butd``: it is the ground floor.
Modules are imported when first asked for, so a task's dependencies load only when it is used.
"""
from __future__ import annotations

import importlib

from butd.tasks.base import RawQuestions, Split, Task

_MODULES = {"vqa2": "butd.tasks.vqa2", "gqa": "butd.tasks.gqa", "nlvr2": "butd.tasks.nlvr2"}
TASK_NAMES = tuple(_MODULES)


def get_task(name: str) -> Task:
    """The task named ``name`` (a ``--dataset`` value)."""
    if name not in _MODULES:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(TASK_NAMES)}")
    return importlib.import_module(_MODULES[name]).TASK


__all__ = ["RawQuestions", "Split", "Task", "TASK_NAMES", "get_task"]
