"""The LightningDataModule of any task: its question cache and feature stores, as loaders.

    dm = VQADataModule("gqa", "data/GQA-Cache", batch_size=256)
    trainer = pl.Trainer(use_distributed_sampler=False, ...)   # the sampler shards itself under DDP
    trainer.fit(model, datamodule=dm)

Given the raw inputs the caches are made from (``inputs``, a ``butd.questions.Inputs``, and
``features_dir``), ``prepare_data`` makes, resumes or checks the caches (``butd.loading.caches``),
in the one process Lightning runs it in (global rank zero: ``prepare_data_per_node`` is False, the
caches being on a file system every node sees), and ``setup`` in every other process checks that
they are complete and match those inputs. Without them the caches are used as they are.

Batches are described in ``butd.loading.batches`` and loaders in ``butd.loading.loaders``.
``feature_cache`` picks the policy that gives each store its residency (``butd.loading.cache_choice``,
once per store, when the store is first opened): ``"none"``, ``"pinned"`` or ``"gpu"`` for every
store, or ``"auto"`` (train.py's default), which decides the train and validation stores together:
``"pinned"`` for a compressed store whose decoded copy fits in memory, ``"none"`` otherwise. A
resident store (pinned host memory / the GPU) is gathered by index in the main process: its loaders
run with ``num_workers=0``, and with ``"gpu"`` the ``features``/``spatials`` of a batch are already
on the device.
"""
from __future__ import annotations

import os

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from butd import questions as q
from butd.features import schema
from butd.features.reader import FeatureStore
from butd.loading import cache_choice, caches
from butd.loading.batches import BatchDataset
from butd.loading.loaders import make_loader
from butd.tasks import get_task


class VQADataModule(pl.LightningDataModule):
    """Train on the task's train split (shuffled), validate on its validation split (in order).
    ``cache_dir`` holds the task's feature stores and ``questions/`` (override with
    ``questions_dir``). ``num_workers=0`` (the default) gathers batches in a background thread of
    this process, which measured faster than worker processes (benchmarks/loader_speed.py)."""

    def __init__(self, task: str, cache_dir, batch_size: int = 256, num_workers: int = 0,
                 feature_cache: str = "none", seed: int = 7, pin_memory: bool = True, questions_dir=None,
                 prefetch_factor: int = 2, train_split: str | None = None, val_split: str | None = None,
                 inputs: q.Inputs | None = None, features_dir=None):
        super().__init__()
        self.prepare_data_per_node = False   # one process of the run prepares: the caches are shared
        self.inputs, self.features_dir = inputs, features_dir
        self._prepared = False
        self.task = get_task(task)
        self.cache_dir = os.fspath(cache_dir)
        self.questions_dir = os.fspath(questions_dir or os.path.join(self.cache_dir, "questions"))
        self.batch_size, self.num_workers, self.feature_cache = batch_size, num_workers, feature_cache
        self.cache_policy = cache_choice.choose(feature_cache, num_workers, say=rank_zero_info)
        self.seed, self.pin_memory, self.prefetch_factor = seed, pin_memory, prefetch_factor
        self.train_split = train_split or self.task.train_split
        self.val_split = val_split or self.task.val_split
        self._questions: dict = {}
        self._stores: dict = {}
        self._datasets: dict = {}
        self._stage = None
        self._ready = False

    def prepare_data(self) -> None:
        """Make, resume or check the caches from ``inputs`` (once per DataModule; nothing without
        them). Lightning calls it in one process before the others set up."""
        if self.inputs is not None and not self._prepared:
            caches.prepare_caches(self.inputs, self.features_dir, say=rank_zero_info)
            self._prepared = True

    def setup(self, stage=None):
        self._stage = stage   # each trainer.fit/validate/... calls this: the cache policy follows it
        if self._ready:
            return
        if self.inputs is not None and not self._prepared:   # another process prepared them
            caches.check_caches(self.inputs, self.features_dir)
        if not os.path.isdir(self.questions_dir):
            raise FileNotFoundError(f"{self.questions_dir}: no question cache here; make it with "
                                    f"`{q.BUILD_COMMAND} --dataset {self.task.name}`, or, if the caches have "
                                    "moved, name their directory with --cache")
        manifest = q.read_manifest(self.questions_dir)
        if manifest["task"] != self.task.name:
            raise ValueError(f"{self.questions_dir}: a {manifest['task']} question cache, not {self.task.name}")
        self.vocab = q.load_vocab(self.questions_dir)
        self.ans2label, self.label2ans = q.load_answers(self.questions_dir)
        self.glove = q.load_glove(self.questions_dir)
        self.vocabulary = manifest["summary"]["vocabulary"]
        self.ntoken = self.vocab.ntoken
        self.num_answers = len(self.label2ans)
        # read from the metadata: opening the store here would fix a GPU cache's device before
        # Lightning has set this rank's (setup runs before fit in train.py)
        self.v_dim = schema.read_attrs(self.task.store_path(self.cache_dir, self.train_split)).feature_dim
        # the 6 spatial channels, and the image indicator where a question has several images
        self.spatial_dim = schema.SPATIAL_DIM + (self.task.images_per_question > 1)
        q.check_stores(self.questions_dir, self.cache_dir)
        if stage in (None, "fit"):
            self._refuse_empty(manifest, (self.train_split, self.val_split))
        self._ready = True

    def _refuse_empty(self, manifest: dict, splits) -> None:
        """Never train or validate on nothing: a split without questions (an empty file, or all of
        them dropped) is an error naming the split and the cache, not an epoch of no batches."""
        summary = manifest["summary"]
        for split in splits:
            if not summary["questions"].get(split):
                dropped = summary.get("dropped", {}).get(split, 0)
                why = f" ({dropped} dropped for lack of an image row)" if dropped else ""
                raise ValueError(f"{self.questions_dir}: the {split} split has no questions{why}; nothing to "
                                 f"{'train' if split == self.train_split else 'validate'} on. Check the "
                                 f"{split} question file and rebuild with `{q.BUILD_COMMAND}`")

    def questions(self, split: str) -> q.QuestionArrays:
        if split not in self._questions:
            self._questions[split] = q.load_split(self.questions_dir, split)
        return self._questions[split]

    def store(self, split: str) -> FeatureStore:
        """The feature store serving ``split`` (opened once per store; reading starts lazily)."""
        path = self.task.store_path(self.cache_dir, split)
        if path not in self._stores:
            self._decide()
            # made here, in the main thread, where Lightning has set this rank's device (a GPU copy's)
            self._stores[path] = FeatureStore(path, cache=self.cache_policy.residency(path))
        return self._stores[path]

    def _decide(self) -> None:
        """Let the cache policy decide the stores of the current stage, the training store first:
        both while fitting, the validation store while only validating, none otherwise. A store it
        turns from resident to streamed is opened again."""
        splits = {"fit": (self.train_split, self.val_split), None: (self.train_split, self.val_split),
                  "validate": (self.val_split,)}.get(self._stage, ())
        paths = [self.task.store_path(self.cache_dir, s) for s in splits]
        for path in self.cache_policy.decide(paths, self.task.store_path(self.cache_dir, self.train_split),
                                             self._processes):
            self._stores.pop(path, None)   # opened resident while only validating: reopened streamed
            self._datasets = {split: d for split, d in self._datasets.items()
                              if self.task.store_path(self.cache_dir, split) != path}

    def _processes(self) -> cache_choice.Processes:
        """This run's processes, for the cache policy: one per device of this machine, each with its
        copy of a resident store, and the least memory over all ranks."""
        if self.trainer is None:
            return cache_choice.Processes()
        strategy = self.trainer.strategy

        def least(available: int) -> int:
            return int(strategy.reduce(torch.tensor(available, dtype=torch.int64, device=strategy.root_device),
                                       reduce_op="min"))
        return cache_choice.Processes(self.trainer.num_devices, self.trainer.world_size, least)

    def _resident(self, split: str) -> bool:
        """Whether this split's loader gathers in the main process: its store is resident, or (with
        ``"auto"``) a training store is, since workers forked beside a resident copy and the threads
        gathering from it could inherit their locks mid-use."""
        self._decide()
        paths = [self.task.store_path(self.cache_dir, s) for s in (split, self.train_split, self.val_split)]
        return self.cache_policy.gathers_in_main(paths)

    def dataset(self, split: str) -> BatchDataset:
        if split not in self._datasets:
            self._datasets[split] = BatchDataset(self.questions(split), self.store(split))
        return self._datasets[split]

    def _rank_world(self):
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return None, None  # no trainer: torch.distributed (or a single process) decides

    def dataloader_for(self, split: str, shuffle: bool = False, drop_last: bool = False, even: bool = True):
        """``even=False``: each rank its own share of the questions, none repeated (validation)."""
        rank, world = self._rank_world()
        # resident caches gather in the main process (a GPU or pinned copy cannot be shared with workers)
        workers = 0 if self._resident(split) else self.num_workers
        return make_loader(self.dataset(split), self.batch_size, shuffle=shuffle, seed=self.seed,
                           drop_last=drop_last, num_workers=workers, pin_memory=self.pin_memory,
                           prefetch_factor=self.prefetch_factor, rank=rank, world_size=world, even=even)

    def train_dataloader(self):
        return self.dataloader_for(self.train_split, shuffle=True)

    def val_dataloader(self):
        # Validation needs no equal step counts: repeating questions to pad the ranks would count
        # them twice in val_acc.
        return self.dataloader_for(self.val_split, even=False)
