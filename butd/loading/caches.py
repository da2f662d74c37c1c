"""Before training: make, resume or check a task's feature stores and question cache.

    qdir = prepare_caches(inputs, features_dir)    # the one process that prepares (building is here alone)
    qdir = check_caches(inputs, features_dir)      # every other process of the run

As the specification prepares its caches before training, ``prepare_caches`` brings each cache up
to date by its converter where the raw inputs are present (a no-op when it already matches them,
with the settings it was converted with; an interrupted conversion resumes; a store made from
another TSV is an error, never silently reused; one whose TSVs were copied, moved or touched since is
still theirs). Where they are absent, complete caches are used as
they are (e.g. on nodes that see only the caches), and so is a complete store converted from another
layout (an HDF5 cache, npz or npy files), whether or not the TSVs are there. ``check_caches`` builds nothing: the caches must
be complete and, where the raw inputs are present, match them. ``VQADataModule.prepare_data`` and
``setup`` call them: which process prepares is Lightning's rule (``prepare_data``), not this module's.
"""
from __future__ import annotations

import dataclasses
import os

from butd import questions
from butd.build_lock import build_lock
from butd.features import schema
from butd.features.convert import convert_tsv
from butd.features.convert.lifecycle import NotAStore, StoreMismatch, as_flags, recorded_options, require_complete
from butd.tasks import get_task


def _require(path: str, what: str, makes: str, command: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} not found; it is needed to make {makes}. "
                                f"Download it, point the matching flag at it, or make {makes} with `{command}`")


def _stores(inputs: questions.Inputs, features_dir: str):
    """(task, [(store path, its TSVs, whether it is complete)]) of ``inputs.task``."""
    task = get_task(inputs.task)
    stores = []
    for store, files in task.stores.items():
        path = task.store_path(inputs.cache, store)
        stores.append((path, [os.path.join(features_dir, f) for f in files], schema.is_complete(path)))
    return task, stores


def _from_other_layout(path: str) -> bool:
    """Whether the store at ``path`` was converted (or is being converted) from another layout than
    the task's TSVs (an HDF5 cache, npz or npy files): the user's choice of input, used as it is when
    complete, not checked against the TSVs. False where there is no readable store."""
    try:
        return schema.read_attrs(path).layout not in schema.TSV_LAYOUTS
    except (OSError, ValueError):
        return False


def _prepare_store(task, path: str, tsvs: list, say) -> None:
    """Make, resume or check the store at ``path`` from ``tsvs``, or leave it as it is (see the module docstring)."""
    complete, other = schema.is_complete(path), _from_other_layout(path)
    if complete and (other or not all(map(os.path.exists, tsvs))):
        return
    if other:   # an interrupted conversion of the user's own input: not one of the task's TSVs
        require_complete(path)
    for tsv in tsvs:
        _require(tsv, "features TSV", path, f"python converters/tsv_to_zarr.py {' '.join(tsvs)} --out {path}")
    # with the settings the store was made with (--compressor, --dtype, ...): only its input decides
    options = recorded_options(path)
    # a mismatch is advised in this command's terms: train.py has no --out or --overwrite
    try:
        say(str(convert_tsv(tsvs, path, image_key=task.image_key, **options)))
    except StoreMismatch as e:
        again = " ".join(["python converters/tsv_to_zarr.py", *tsvs, "--out", path, *as_flags(options), "--overwrite"])
        raise StoreMismatch(path, e.what, f"move it away, or convert the TSVs again with `{again}`") from None
    except NotAStore:
        raise NotAStore(path, "move it away: train.py converts the TSVs into a store there") from None


def _has_raw_questions(inputs: questions.Inputs) -> bool:
    return os.path.exists(inputs.questions) and os.path.exists(inputs.glove)


def prepare_caches(inputs: questions.Inputs, features_dir: str, say=print) -> str:
    """Make or check the stores of ``inputs.task`` under ``inputs.cache`` (from ``features_dir``)
    and its question cache ``<cache>/questions``; returns the question cache's directory."""
    task, stores = _stores(inputs, features_dir)
    for path, tsvs, _ in stores:
        # decided under the store's lock: a conversion under way (of the user's HDF5 cache, say) ends first
        with build_lock(path, say=say, usable=lambda path=path: schema.is_complete(path)):
            _prepare_store(task, path, tsvs, say)

    qdir = os.path.join(inputs.cache, "questions")
    if _has_raw_questions(inputs):
        questions.build(built_with_drop_missing(inputs, qdir, say), qdir)
        return qdir
    try:
        questions.read_manifest(qdir)
    except FileNotFoundError:
        command = (f"{questions.BUILD_COMMAND} --dataset {task.name} --questions {inputs.questions} "
                   f"--glove {inputs.glove} --cache {inputs.cache}")
        _require(inputs.questions, f"{task.title} questions directory", qdir, command)
        _require(inputs.glove, "GloVe file", qdir, command)
    say(f"[*] raw questions or GloVe not found: using the question cache {qdir} unchecked")
    return qdir


def check_caches(inputs: questions.Inputs, features_dir: str) -> str:
    """What a process that does not prepare the caches checks: every store complete, and the
    question cache built from ``inputs`` where they are present (``questions.StaleCacheError``
    otherwise). Returns the question cache's directory."""
    task, stores = _stores(inputs, features_dir)
    for path, _, complete in stores:
        if not complete:
            raise FileNotFoundError(f"{path}: feature store missing or incomplete; in a multi-process launch make "
                                    f"the caches first with `python converters/tsv_to_zarr.py --dataset {task.name}`")
    qdir = os.path.join(inputs.cache, "questions")
    if _has_raw_questions(inputs):
        questions.check_inputs(qdir, built_with_drop_missing(inputs, qdir, say=lambda line: None))
    return qdir


def built_with_drop_missing(inputs: questions.Inputs, qdir: str, say=print) -> questions.Inputs:
    """``inputs``, or the same with ``drop_missing=True`` where the cache in ``qdir`` was built from
    exactly those. The setting is part of a cache's identity: a cache made with
    ``questions_to_shards.py --drop_missing`` is used as it is, not rebuilt without the setting
    (which would fail on the very questions it left out)."""
    if inputs.drop_missing:
        return inputs
    dropping = dataclasses.replace(inputs, drop_missing=True)
    try:
        manifest = questions.check_inputs(qdir, dropping)
    except (OSError, ValueError, questions.StaleCacheError):
        return inputs
    dropped = sum(manifest["summary"].get("dropped", {}).values())
    say(f"[*] question cache {qdir} was built with --drop_missing ({dropped} question(s) without an image "
        "row left out): using it as it is")
    return dropping
