"""Whole batches: a split's question arrays joined with one vectorised gather from its feature store.

    dataset = BatchDataset(questions, FeatureStore(path))
    batch = dataset[[17, 3, 900]]          # one dict per list of question positions

A batch is a dict of tensors, the question as first axis: ``features`` [B, I*K, D] (store dtype) and
``spatials`` [B, I*K, 6] float32, the boxes of each question's I images joined (I is the task's
images per question: 1, or 2 for NLVR2), ``tokens`` [B, L] int64, the task's targets (e.g.
``labels`` [B] int64) and ``index`` [B] int64, the position of each question in its split (so
``question_ids[index]`` names them). Within a batch the questions are ordered by feature row, which
keeps memory-mapped reads sequential.

There is no collate step and no per-item work: ``fill`` writes a batch straight into buffers it is
given (a slot of ``butd.loading.slots.SlotRing``), ``__getitem__`` into fresh ones (in a DataLoader
worker, in shared memory, so handing the batch to the main process copies nothing).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import get_worker_info

from butd.features.reader import FeatureStore
from butd.questions.cache import BUILD_COMMAND


class BatchDataset(torch.utils.data.Dataset):
    """``dataset[list_of_question_positions]`` -> one batch dict (see the module docstring).

    ``questions`` is a ``butd.questions.QuestionArrays`` resolved against ``store``."""

    def __init__(self, questions, store: FeatureStore):
        self.questions, self.store = questions, store
        self.image_rows = np.ascontiguousarray(questions.image_rows, dtype=np.int64)
        self.images_per_question = self.image_rows.shape[1]
        # per-question arrays copied into every batch: the tokens and the task's targets
        self.per_question = {"tokens": np.ascontiguousarray(questions.tokens, dtype=np.int64),
                             **{k: np.ascontiguousarray(v) for k, v in questions.targets.items()}}
        bad = np.flatnonzero(((self.image_rows < 0) | (self.image_rows >= store.num_images)).any(axis=1))
        if len(bad):
            i = bad[0]
            raise IndexError(
                f"question {questions.question_ids[i]} (image {' + '.join(questions.image_ids[i])}) points at "
                f"feature row {' + '.join(map(str, self.image_rows[i].tolist()))}, but {store.path} holds {store.num_images} images "
                f"({len(bad)} questions are affected): the question cache was built against another "
                f"store; rebuild it with `{BUILD_COMMAND}`")

    def __len__(self) -> int:
        return len(self.image_rows)

    def specs(self, batch_size: int) -> dict:
        """Shape and torch dtype of each buffer a batch of ``batch_size`` questions is written into
        (without ``features``/``spatials`` when the store gathers on the GPU)."""
        I = self.images_per_question
        specs = {}
        if self.store.cache != "gpu":
            for name, (shape, dtype) in self.store.batch_shapes(batch_size * I).items():
                specs[name] = ((batch_size, I * shape[1]) + shape[2:], dtype)
        for name, a in self.per_question.items():
            specs[name] = ((batch_size,) + a.shape[1:], torch.from_numpy(a[:0]).dtype)
        specs["index"] = ((batch_size,), torch.int64)
        return specs

    def _order(self, indices) -> np.ndarray:
        if np.ndim(indices) == 0:
            raise TypeError("BatchDataset is indexed by whole batches (a list of question positions), got "
                            f"{indices!r}: use ShardedBatchSampler with DataLoader(batch_size=None), and "
                            "Trainer(use_distributed_sampler=False) so Lightning does not replace it")
        idx = np.asarray(indices, dtype=np.int64)
        return idx[np.argsort(self.image_rows[idx, 0], kind="stable")]

    def fill(self, indices, out: dict) -> dict:
        """Write the batch of ``indices`` into ``out`` (tensors shaped by ``specs``, at least as many
        rows as questions) and return it as views of its first B rows."""
        idx = self._order(indices)
        B, I = len(idx), self.images_per_question
        batch = {k: t[:B] for k, t in out.items()}
        rows = self.image_rows[idx].reshape(-1)
        feats, spats = batch.get("features"), batch.get("spatials")
        # [B, I*K, ...] is [B*I, K, ...] in memory: the store fills it image by image
        features, spatials = self.store.gather(
            rows, None if feats is None else feats.view((B * I, -1) + feats.shape[2:]),
            None if spats is None else spats.view((B * I, -1) + spats.shape[2:]))
        batch["features"] = features.view((B, -1) + features.shape[2:])
        batch["spatials"] = spatials.view((B, -1) + spatials.shape[2:])
        for name, a in self.per_question.items():
            np.take(a, idx, axis=0, out=batch[name].numpy())
        batch["index"].numpy()[:] = idx
        return batch

    def __getitem__(self, indices) -> dict:
        shared = get_worker_info() is not None
        out = {}
        for name, (shape, dtype) in self.specs(len(indices) if np.ndim(indices) else 0).items():
            t = torch.empty(shape, dtype=dtype)
            out[name] = t.share_memory_() if shared else t
        return self.fill(indices, out)
