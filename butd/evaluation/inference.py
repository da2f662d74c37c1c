"""A model's outputs batch by batch: logits, answer probabilities and, for BUTD, its attention over
the boxes, with the boxes it attended to. What evaluation, the official GQA figures and reports
(top answers, where the model looked) read.

    for out in predict_batches(lit, loader, device):      # a loader of butd.loading (any split, any task)
        out.index          # positions of the batch's questions in the loader's split
        out.labels         # arg-max answer labels
        labels, probs = out.top(3)
        out.attention      # BUTD: weight of each box; None for FiLM
        out.boxes, out.box_mask

The attention is read by a forward hook on the model's ``Attention`` layer: the model's forward,
outputs and numerics are those of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from butd.models.base import box_mask
from butd.models.layers import Attention


@dataclass
class BatchPredictions:
    """One batch's outputs, on the CPU, copied out of the loader's reused buffers.

    ``index`` int64 [B]: the questions' positions in the loader's split (its ``QuestionArrays``);
    ``logits`` float32 [B, A]; ``attention`` float32 [B, K] or None: the weight of each of the
    question's K box rows (BUTD's softmax over them: 0 on padding, summing to 1), None for a
    model without attention over boxes (FiLM); ``boxes`` float32 [B, K, 4]: each box as
    (x0, y0, x1, y1) over its image's width and height (the first four spatial channels);
    ``box_mask`` bool [B, K]: True for real boxes, False for padding rows."""
    index: np.ndarray
    logits: torch.Tensor
    attention: Optional[np.ndarray]
    boxes: np.ndarray
    box_mask: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """int64 [B]: the predicted answer label (the arg-max) of each question."""
        return self.logits.argmax(dim=1).numpy()

    @property
    def probabilities(self) -> torch.Tensor:
        """float32 [B, A]: softmax over the answers (GQA and NLVR2 train with softmax cross-entropy;
        for VQA v2's sigmoid training it is a normalised ranking, not the sigmoid scores)."""
        return torch.softmax(self.logits, dim=1)

    def top(self, k: int = 3) -> Tuple[np.ndarray, np.ndarray]:
        """(labels int64 [B, k], probabilities float32 [B, k]): the k most probable answers."""
        probabilities, labels = self.probabilities.topk(min(k, self.logits.shape[1]), dim=1)
        return labels.numpy(), probabilities.numpy()


class AttentionTap:
    """Within ``with``: ``weights`` holds the output of the model's attention over boxes at the last
    forward, float [B, K, 1] (None before it). ``available`` is False for a model without one
    (FiLM). A forward hook: nothing about the model's forward changes."""

    def __init__(self, model: torch.nn.Module):
        layers = [m for m in model.modules() if isinstance(m, Attention)]
        if len(layers) > 1:
            raise ValueError(f"{type(model).__name__} has {len(layers)} attention layers; expected at most one")
        self.layer = layers[0] if layers else None
        self.weights, self._hook = None, None

    @property
    def available(self) -> bool:
        return self.layer is not None

    def _record(self, module, inputs, output) -> None:
        self.weights = output

    def __enter__(self) -> "AttentionTap":
        if self.layer is not None:
            self._hook = self.layer.register_forward_hook(self._record)
        return self

    def __exit__(self, *exc) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self.weights = None, None


def has_attention(model: torch.nn.Module) -> bool:
    """Whether the model attends over boxes (BUTD), so that its attention can be written."""
    return AttentionTap(model).available


# no_grad, not inference_mode: the loader's thread writes into batch buffers made here, and torch
# refuses in-place writes to inference tensors outside inference mode (the two-image indicator)
@torch.no_grad()
def predict_batches(lit, loader, device: torch.device) -> Iterator[BatchPredictions]:
    """The outputs of ``lit`` (a ``LitVQA`` in eval mode) on each batch of ``loader``, in its order.
    Each is valid for good (copied to the CPU); the loader's batch is not."""
    with AttentionTap(lit.model) as tap:
        for i, batch in enumerate(loader):
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            out = lit.predict_step(batch, i)
            spatials = batch["spatials"]
            mask = box_mask(batch.get("num_boxes"), spatials.shape[1])
            yield BatchPredictions(
                index=_numpy(out["index"]), logits=out["logits"].float().cpu(),
                attention=None if not tap.available else _numpy(tap.weights[..., 0].float()),
                boxes=_numpy(spatials[..., :4].float()),
                box_mask=np.ones(spatials.shape[:2], dtype=bool) if mask is None else _numpy(mask))


def _numpy(t: torch.Tensor) -> np.ndarray:
    """A copy on the CPU: a CPU tensor may be a view of the loader's reused buffers."""
    return t.cpu().numpy().copy()


@dataclass
class SplitPredictions:
    """A split's predictions by question position: ``labels`` int64 [N]; with ``attention``:
    ``attention`` float32 [N, K] and, per feature row of the split's store (its image), the
    real boxes attended over, float32 [n, 4] (``boxes``)."""
    labels: np.ndarray
    attention: Optional[np.ndarray] = None
    boxes: Optional[dict] = None

    def cells(self, position: int, row: int) -> Tuple[np.ndarray, np.ndarray]:
        """(boxes [n, 4], weights [n]) of the question at ``position``, whose image is store row ``row``."""
        boxes = self.boxes[row]
        return boxes, self.attention[position, :len(boxes)]


def predict_split(lit, loader, num_questions: int, device: torch.device, image_rows: Optional[np.ndarray] = None
                  ) -> SplitPredictions:
    """Every question of the loader's split: its predicted label and, given the split's
    ``image_rows`` (int [N, 1]) and a model with attention, its attention and the boxes of its image.
    Raises ``RuntimeError`` if the loader skipped a question."""
    labels = np.full(num_questions, -1, dtype=np.int64)
    weights, boxes = None, None
    for out in predict_batches(lit, loader, device):
        labels[out.index] = out.labels
        if image_rows is not None and out.attention is not None:
            if weights is None:
                weights, boxes = np.zeros((num_questions, out.attention.shape[1]), dtype=np.float32), {}
            weights[out.index] = out.attention
            # an image's real boxes are its first rows (the store pads at the end)
            for row, b, m in zip(image_rows[out.index, 0].tolist(), out.boxes, out.box_mask):
                if row not in boxes:
                    boxes[row] = b[m]
    missing = np.flatnonzero(labels < 0)
    if len(missing):
        raise RuntimeError(f"the loader skipped {len(missing)} of {num_questions} questions "
                           f"(e.g. positions {missing[:5].tolist()})")
    return SplitPredictions(labels, weights, boxes)
