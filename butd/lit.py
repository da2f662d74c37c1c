"""The LightningModule: a BUTD or FiLM model (butd.model), its loss, metrics and optimiser.

    lit = LitVQA(model="butd", ntoken=dm.ntoken, num_answers=dm.num_answers, v_dim=dm.v_dim)
    lit.model.load_embeddings(dm.glove)
    pl.Trainer(gradient_clip_val=0.25, ...).fit(lit, datamodule=dm)
    lit = LitVQA.load_from_checkpoint(path)          # everything needed to rebuild is in hparams

A batch is the loader's dict: ``features`` [B, K, D] (store dtype), ``spatials`` [B, K, 6],
``tokens`` [B, 40], ``labels`` [B] (-1 where the question has no answer in the vocabulary: ignored by
loss and accuracy), ``index`` [B] (the question's position in its split, returned by predict_step).

Logged under the specification's names: ``train_loss`` and ``train_acc`` per step, ``train_epoch_loss``
and ``train_epoch_acc`` per epoch, ``val_loss`` and ``val_acc`` per validation. Epoch figures are
means over the answered questions of all ranks (torchmetrics sums and counts, synchronised at compute),
not means of per-step means as in the spec. Under DDP the sampler pads the split to a multiple of
the ranks with at most ``ranks - 1`` repeated questions (butd.sampler), which count twice. Gradient clipping is the Trainer's (``gradient_clip_val``).
"""
from __future__ import annotations

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from butd.model import build_model

IGNORE = -1
OPTIMIZERS = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class WeightedMean(Metric):
    """sum(value * weight) / sum(weight), summed over ranks at compute. (torchmetrics' MeanMetric
    either checks for nans, which makes the host wait for the GPU at every step, or, with
    nan_strategy="disable", silently drops the weights: torchmetrics 1.9.)"""

    def __init__(self):
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, value, weight):
        self.total += (value.double() * weight).sum()
        self.weight += weight.sum()

    def compute(self):
        return (self.total / self.weight).float()


class LitVQA(pl.LightningModule):
    def __init__(self, model: str = "butd", opt: str = "adamax", lr: float | None = None,
                 weight_decay: float | None = None, **model_kwargs):
        """``model_kwargs`` are butd.model.BUTD/FiLM's (ntoken, num_answers, v_dim, hidden, ...).
        ``lr=None`` and ``weight_decay=None`` keep the optimiser's own defaults, as the spec's
        ``Adamax(params)`` does."""
        super().__init__()
        if opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimiser {opt!r}; expected one of {sorted(OPTIMIZERS)}")
        self.save_hyperparameters()
        self.model = build_model(model, **model_kwargs)
        self.metrics = torch.nn.ModuleDict({name: WeightedMean() for name in
                                            ("train_epoch_loss", "train_epoch_acc", "val_loss", "val_acc")})

    def forward(self, batch):
        return self.model(batch["features"], batch["spatials"], batch["tokens"])

    def _loss_and_accuracy(self, batch, stage: str):
        """Per-batch mean loss and accuracy over answered questions; feeds the epoch metrics."""
        logits = self(batch)
        labels = batch["labels"]
        answered = (labels != IGNORE).float()
        losses = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="none")
        correct = (logits.argmax(dim=1) == labels).float()
        count = answered.sum().clamp(min=1)
        loss, acc = losses.sum() / count, (correct * answered).sum() / count
        epoch = "train_epoch_" if stage == "train" else "val_"
        self.metrics[epoch + "loss"].update(losses, weight=answered)
        self.metrics[epoch + "acc"].update(correct, weight=answered)
        return loss, acc

    def training_step(self, batch, batch_idx):
        loss, acc = self._loss_and_accuracy(batch, "train")
        self.log_dict({"train_loss": loss, "train_acc": acc}, on_step=True, on_epoch=False)
        self.log_dict({k: self.metrics[k] for k in ("train_epoch_loss", "train_epoch_acc")},
                      on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self._loss_and_accuracy(batch, "val")
        self.log_dict({k: self.metrics[k] for k in ("val_loss", "val_acc")},
                      on_step=False, on_epoch=True, prog_bar=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        logits = self(batch)
        return {"index": batch["index"], "logits": logits, "prediction": logits.argmax(dim=1)}

    def configure_optimizers(self):
        kwargs = {k: self.hparams[k] for k in ("lr", "weight_decay") if self.hparams[k] is not None}
        return OPTIMIZERS[self.hparams.opt](self.parameters(), **kwargs)
