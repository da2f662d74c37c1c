"""The ``Task`` contract: every registered task honours it, and a task that leaves part of it out
fails when it is made, not when evaluation first calls the missing part."""
import pytest

from butd.tasks import TASK_NAMES, Task, get_task

METHODS = ("question_files", "read_split", "answer_vocabulary", "targets", "loss_and_score", "evaluate",
           "format_scores", "baseline", "format_predictions")


def test_every_registered_task_is_a_complete_task():
    for name in TASK_NAMES:
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert {task.train_split, task.val_split} <= set(task.split_names)
        assert {s.store for s in task.splits} <= set(task.stores)


def _task(attributes: dict, methods=METHODS) -> type:
    body = {m: (lambda self, *args: None) for m in methods}
    return type("Sketch", (Task,), {**attributes, **body})


ATTRIBUTES = dict(name="sketch", title="Sketch", questions_dir="Q", features_dir="F", cache_dir="C", splits=(),
                  train_split="train", val_split="val", stores={})


def test_a_task_missing_a_method_fails_at_construction():
    assert isinstance(_task(ATTRIBUTES)(), Task)
    with pytest.raises(TypeError) as error:
        _task(ATTRIBUTES, methods=("question_files",))()
    # the message names every missing method, and only those
    assert all(m in str(error.value) for m in METHODS[1:]) and "question_files" not in str(error.value)


def test_a_task_missing_an_attribute_fails_at_construction():
    partial = {k: v for k, v in ATTRIBUTES.items() if k not in ("stores", "val_split")}
    with pytest.raises(TypeError, match=r"^Sketch does not set val_split, stores "):
        _task(partial)()
