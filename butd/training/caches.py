"""Before training: make, resume or check a task's feature stores and question cache.

As the specification prepares its caches before training, ``ensure_caches`` brings each cache up to
date by its converter where the raw inputs are present (a no-op when it already matches them, with
the settings it was converted with; an interrupted conversion resumes; a store made from another
TSV is an error, never silently reused).
Where they are absent, complete caches are used as they are (e.g. on nodes that see only the
caches). In the extra processes of a multi-process launch nothing is built: the caches must be ready.
"""
from __future__ import annotations

import dataclasses
import os

from butd import questions
from butd.features import schema
from butd.features.convert import convert_tsv
from butd.features.convert.lifecycle import recorded_options
from butd.tasks import get_task


def is_launcher_child() -> bool:
    """True in every process but the first one of a multi-process launch (torchrun, SLURM, or
    Lightning's own re-runs of the training script)."""
    return any(int(os.environ.get(v, "0")) > 0 for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def _require(path: str, what: str, makes: str, command: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} not found; it is needed to make {makes}. "
                                f"Download it, point the matching flag at it, or make {makes} with `{command}`")


def question_inputs(config) -> questions.Inputs:
    """The question cache's inputs for a resolved ``TrainConfig``."""
    paths = config.data.paths()
    return questions.Inputs(config.data.dataset, paths["questions"], paths["glove"], paths["cache"],
                            emb_dim=config.model.emb_dim, drop_missing=config.data.drop_missing)


def ensure_caches(inputs: questions.Inputs, features_dir: str, say=print) -> str:
    """Make or check the stores of ``inputs.task`` under ``inputs.cache`` (from ``features_dir``)
    and its question cache ``<cache>/questions``; returns the question cache's directory."""
    task = get_task(inputs.task)
    child = is_launcher_child()
    for store, files in task.stores.items():
        path = task.store_path(inputs.cache, store)
        tsvs = [os.path.join(features_dir, f) for f in files]
        complete = os.path.exists(path) and schema.read_attrs(path).complete
        if child or (complete and not all(map(os.path.exists, tsvs))):
            if not complete:
                raise FileNotFoundError(f"{path}: feature store missing or incomplete; in a multi-process "
                                        "launch make the caches first with `python converters/tsv_to_zarr.py "
                                        f"--dataset {task.name}`")
            continue
        for tsv in tsvs:
            _require(tsv, "features TSV", path, f"python converters/tsv_to_zarr.py {' '.join(tsvs)} --out {path}")
        # with the settings the store was made with (--compressor, --dtype, ...): only its input decides
        say(str(convert_tsv(tsvs, path, **recorded_options(path))))

    qdir = os.path.join(inputs.cache, "questions")
    command = (f"{questions.BUILD_COMMAND} --dataset {task.name} --questions {inputs.questions} "
               f"--glove {inputs.glove} --cache {inputs.cache}")
    if os.path.exists(inputs.questions) and os.path.exists(inputs.glove):
        inputs = built_with_drop_missing(inputs, qdir, say)
        if child:
            questions.check_inputs(qdir, inputs)     # the first process has built it
        else:
            questions.build(inputs, qdir)
        return qdir
    try:
        questions.read_manifest(qdir)
    except FileNotFoundError:
        _require(inputs.questions, f"{task.title} questions directory", qdir, command)
        _require(inputs.glove, "GloVe file", qdir, command)
    say(f"[*] raw questions or GloVe not found: using the question cache {qdir} unchecked")
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
