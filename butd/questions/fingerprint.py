"""What a question cache was built from: input files, feature stores and settings, as one fingerprint.

Files are identified by (path, size, mtime) rather than a content hash: hashing the 5.6 GB GloVe
file and 1 GB of questions would cost a minute at every training start, while any edit, copy or
download changes the size or the mtime. Feature stores are identified by their own fingerprint.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Optional

from butd.features.convert.lifecycle import require_complete
from butd.tasks import get_task

FORMAT_VERSION = 3   # 3: gold answers as written, and the spelling each label is written in


@dataclass(frozen=True)
class Inputs:
    """What a question cache is built from. Two caches with equal ``fingerprint(describe())`` are
    the same. ``max_length=None`` means the task's question length."""
    task: str
    questions: str
    glove: str
    cache: str
    emb_dim: int = 300
    max_length: Optional[int] = None
    drop_missing: bool = False
    min_answer_count: Optional[int] = None

    @property
    def length(self) -> int:
        return self.max_length or get_task(self.task).max_length

    def check_present(self) -> None:
        """Raise FileNotFoundError naming, at once, every input that is not there: each split's
        question file(s), GloVe and each complete feature store (not one per run)."""
        task = get_task(self.task)
        missing = [f"{p} ({task.title} {s} questions)" for s in task.split_names
                   for p in task.question_files(self.questions, s) if not os.path.isfile(p)]
        missing += [f"{self.glove} (GloVe)"] if not os.path.isfile(self.glove) else []
        for name in sorted(task.stores):
            path = task.store_path(self.cache, name)
            try:
                require_complete(path)
            except (OSError, ValueError) as e:
                # a store that is there says what it lacks (an interrupted conversion: how to resume it)
                missing.append(str(e) if os.path.exists(os.path.join(path, "zarr.json")) else
                               f"{path} (a complete feature store: python converters/tsv_to_zarr.py)")
        if missing:
            raise FileNotFoundError(f"the {task.title} question cache needs {len(missing)} input(s) not found "
                                    "or not complete: " + "; ".join(missing))

    def describe(self) -> dict:
        """Paths, sizes and mtimes of the files, the feature stores' own fingerprints, the settings.
        Raises FileNotFoundError naming every missing input (``check_present``)."""
        self.check_present()
        task = get_task(self.task)
        return {
            "format_version": FORMAT_VERSION,
            "task": task.name,
            "questions": {s: [file_stat(p, f"{task.title} question file")
                              for p in task.question_files(self.questions, s)] for s in task.split_names},
            "glove": file_stat(self.glove, "GloVe file"),
            "stores": {name: store_stat(task.store_path(self.cache, name)) for name in sorted(task.stores)},
            "settings": {"emb_dim": self.emb_dim, "max_length": self.length, "drop_missing": self.drop_missing,
                         # only when given: caches built before the setting keep their fingerprint
                         **({"min_answer_count": self.min_answer_count} if self.min_answer_count else {})},
        }


def store_stat(path: str) -> dict:
    attrs = require_complete(path)   # fail before reading any question, not after
    return {"path": os.path.abspath(path), "fingerprint": attrs.fingerprint}


def file_stat(path: str, what: str) -> dict:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} not found") from None
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(description) -> str:
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def changes(old, new, prefix: str = "") -> list:
    """Dotted names of the leaves that differ between two descriptions."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [] if old == new else [prefix.rstrip(".") or "(all)"]
    return [c for k in sorted(set(old) | set(new))
            for c in changes(old.get(k), new.get(k), f"{prefix}{k}.")]
