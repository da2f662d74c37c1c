"""Whole batches: a split's question arrays joined with one vectorised gather from its feature store.

    dataset = BatchDataset(questions, FeatureStore(path))
    batch = dataset[[17, 3, 900]]          # one dict per list of question positions

A batch is a dict of tensors, the question as first axis: ``features`` [B, I*K, D] (store dtype) and
``spatials`` [B, I*K, S] float32, the boxes of each question's I images joined in image order (I is
the task's images per question: 1, or 2 for NLVR2), ``tokens`` [B, L] int64, the task's targets
(e.g. ``labels`` [B] int64) and ``index`` [B] int64, the position of each question in its split (so
``question_ids[index]`` names them). ``S`` is the 6 spatial channels, plus, with two or more images,
a 7th that holds the box's image (0.0 left, 1.0 right), as the modular branch's NLVR2 indicator.
When the store's images have fewer boxes than its ``max_boxes`` (the adaptive 10-100-box
features), ``num_boxes`` [B, I] int32 says how many of each image's K rows are real, so that the
models can ignore the zero padding. Within a batch the questions are ordered by feature row, which
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
        if store.variable_boxes:
            self.per_question["num_boxes"] = store.num_boxes()[self.image_rows]

    def __len__(self) -> int:
        return len(self.image_rows)

    def specs(self, batch_size: int) -> dict:
        """Shape and torch dtype of each buffer a batch of ``batch_size`` questions is written into
        (without ``features``/``spatials`` when the store gathers on the GPU)."""
        I = self.images_per_question
        specs = {}
        if not self.store.residency.on_device:
            for name, (shape, dtype) in self.store.batch_shapes(batch_size * I).items():
                specs[name] = ((batch_size, I * shape[1]) + shape[2:], dtype)
            if I > 1:   # the image indicator after the spatial channels
                shape, dtype = specs["spatials"]
                specs["spatials"] = (shape[:2] + (shape[2] + 1,), dtype)
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
            None if spats is None or I > 1 else spats.view((B * I, -1) + spats.shape[2:]))
        batch["features"] = features.view((B, -1) + features.shape[2:])
        if I > 1:
            batch["spatials"] = self._with_indicator(spatials, spats, B)
        else:
            batch["spatials"] = spatials.view((B, -1) + spatials.shape[2:])
        for name, a in self.per_question.items():
            np.take(a, idx, axis=0, out=batch[name].numpy())
        batch["index"].numpy()[:] = idx
        return batch

    def _with_indicator(self, spatials: torch.Tensor, out, B: int) -> torch.Tensor:
        """[B*I, K, 6] spatials -> [B, I*K, 7]: the channels, then the box's image (0, 1, ...)."""
        I, K = self.images_per_question, spatials.shape[1]
        if out is None:
            out = torch.empty((B, I * K, spatials.shape[2] + 1), dtype=spatials.dtype, device=spatials.device)
        grid = out.view(B, I, K, -1)
        grid[..., :-1] = spatials.view(B, I, K, -1)
        grid[..., -1] = torch.arange(I, dtype=out.dtype, device=out.device).view(1, I, 1)
        return out

    def __getitem__(self, indices) -> dict:
        shared = get_worker_info() is not None
        out = {}
        for name, (shape, dtype) in self.specs(len(indices) if np.ndim(indices) else 0).items():
            t = torch.empty(shape, dtype=dtype)
            out[name] = t.share_memory_() if shared else t
        return self.fill(indices, out)
