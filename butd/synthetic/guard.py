"""Which files under a directory a generator wrote: nothing a user put there is ever written over.

    guard = SampleFiles(out, "gqa", settings={"seed": 0, ...})
    if guard.up_to_date(paths):        # the same sample, its files as written: nothing to do
        ...
    guard.claim(paths)                 # FileExistsError naming every file we did not write
    ... write the files ...
    guard.record(paths)

A generator writes into the directories where the real data of its task goes (``GQA-Questions/``,
``GloVe/``, ...), so a sample written over a user's ``data/`` would replace their downloads. The
record, ``<out>/.butd-sample.json``, lists each file a generator wrote with its size and
modification time: a file there is ours only while it is listed and unchanged since. Anything else
(a user's download, a file the user edited) is refused by name unless ``force``. Samples of several
tasks may share a directory (and its GloVe file): the record keeps each task's settings.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

RECORD = ".butd-sample.json"


class SampleFiles:
    """The record of the files generated under ``out`` (see the module docstring). ``settings``
    identify the sample of ``task`` (seed, sizes): a sample with other settings is written anew."""

    def __init__(self, out: str, task: str, settings: dict, force: bool = False):
        self.out, self.task, self.settings, self.force = os.fspath(out), task, settings, force
        self.path = os.path.join(self.out, RECORD)
        try:
            with open(self.path) as f:
                record = json.load(f)
        except (OSError, ValueError):
            record = {}
        self.samples, self.files = record.get("samples", {}), record.get("files", {})

    def _key(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.out))

    def ours(self, path: str) -> bool:
        """True when ``path`` is listed in the record and unchanged since it was written."""
        listed = self.files.get(self._key(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return False
        return listed is not None and listed == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def up_to_date(self, paths: Iterable[str]) -> bool:
        """True when the record holds a sample of these settings and every one of ``paths`` is
        there, as written."""
        return self.samples.get(self.task) == self.settings and all(map(self.ours, paths))

    def claim(self, paths: Iterable[str]) -> None:
        """Before writing: raise ``FileExistsError`` naming every one of ``paths`` that exists and is
        not ours (unless ``force``), so that nothing is written when one of them would be lost."""
        theirs = [p for p in paths if os.path.lexists(p) and not self.ours(p)]
        if theirs and not self.force:
            named = ", ".join(theirs[:3]) + (f" and {len(theirs) - 3} more" if len(theirs) > 3 else "")
            one = len(theirs) == 1
            raise FileExistsError(
                f"{named}: {'exists and was' if one else 'exist and were'} not written by this generator (real "
                f"data?): refusing to write the {self.task} sample over {'it' if one else 'them'}; choose another "
                f"--out (the demo uses data/demo/<dataset>/) or pass --force to replace {'it' if one else 'them'}")

    def record(self, paths: Iterable[str]) -> None:
        """After writing: list ``paths`` (with their size and modification time) as ours."""
        for p in paths:
            st = os.stat(p)
            self.files[self._key(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        self.samples[self.task] = self.settings
        os.makedirs(self.out, exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"samples": self.samples, "files": self.files}, f, indent=1)
        os.replace(tmp, self.path)


def write_once(out: str, task: str, settings: dict, files: list, write, force: bool = False) -> bool:
    """Write the sample of ``task`` with ``write(guard)`` unless the record shows it already there
    (same settings, every one of ``files`` as written); refuse, before writing anything, when one of
    ``files`` is not ours. Returns True when it wrote."""
    guard = SampleFiles(out, task, settings, force)
    if guard.up_to_date(files):
        return False
    guard.claim(files)
    write(guard)
    guard.record(files)
    return True
