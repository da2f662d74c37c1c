"""The LightningModule: a BUTD or FiLM model (``butd.models``), the task's loss, metrics and optimiser.

    lit = LitVQA(task="gqa", model={"model": "butd", "hidden": 1024}, ntoken=dm.ntoken,
                 num_answers=dm.num_answers, v_dim=dm.v_dim)
    lit.model.load_embeddings(dm.glove)
    pl.Trainer(gradient_clip_val=0.25, ...).fit(lit, datamodule=dm)
    lit = LitVQA.load_from_checkpoint(path, weights_only=True)   # everything needed to rebuild is in hparams

``model`` and ``optim`` are the run's ``ModelConfig`` and ``OptimConfig`` as dicts (defaults for what
they leave out), so the checkpoint's hyper-parameters are exactly the run's model and optimiser
configuration. ``vocabulary`` is the identity of the word and answer lists the model was trained
with (``butd.questions.vocabulary_identity``); evaluation and resuming refuse a question cache whose
lists differ.

A batch is the loader's dict (``butd.loading.batches``). The loss and the score of a prediction are
the task's (``Task.loss_and_score``): questions without an answer count in neither.

Logged under the specification's names: ``train_loss`` and ``train_acc`` on the steps the loggers
write (every ``log_every_n_steps``), ``train_epoch_loss`` and ``train_epoch_acc`` per epoch, ``val_loss``
and ``val_acc`` per validation. Epoch figures are
means over the answered questions of all ranks (sums and counts, synchronised at compute), not means
of per-step means as in the specification; an epoch cut short (``--max_steps``, an interrupt) is
logged once, whole, by the run that resumes it. Gradient clipping is the Trainer's (``gradient_clip_val``).
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.warnings import PossibleUserWarning
from torchmetrics import Metric

from butd.models import build_model
from butd.models.base import SPATIAL_DIM
from butd.tasks import get_task
from butd.training import lightning_internals as internals
from butd.training.config import ModelConfig, OptimConfig

STAGES = ("train_epoch_", "val_")      # the epoch figures: <stage>loss and <stage>acc
TRAIN_EPOCH_SUMS = "train_epoch_sums"   # checkpoint key: [total, weight] of train_epoch_loss, then of train_epoch_acc
# Lightning asks for sync_dist=True on every epoch-level tensor under DDP; these are already sums
# over all ranks (torchmetrics synchronises them at compute), the same on every rank
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(train_epoch|val)_(loss|acc)'",
                        category=PossibleUserWarning)
OPTIMIZERS = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


class WeightedMeans(Metric):
    """A stage's weighted mean loss and score over its questions: the sums [sum(loss * weight),
    sum(score * weight), sum(weight)] in float64, summed over ranks at compute, which returns
    [mean loss, mean score] (float32). One update a step, one matrix-vector product (~27 µs on the CPU
    here, where a metric per figure took ~110 µs a step). torchmetrics' MeanMetric either checks for
    nans, which makes the host wait for the GPU at every step, or, with nan_strategy="disable",
    silently drops the weights (torchmetrics 1.9)."""

    def __init__(self):
        super().__init__()
        self.add_state("sums", torch.zeros(3, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, losses, scores, weights):
        """``losses``, ``scores``, ``weights``: [B] per question (float; weight 0 leaves one out)."""
        per_question = torch.stack([losses.float(), scores.float(), torch.ones_like(weights, dtype=torch.float32)])
        self.sums += per_question.double() @ weights.double()

    def compute(self):
        return (self.sums[:2] / self.sums[2]).float()

    def _apply(self, fn, *args, **kwargs):
        # an epoch's sums stay float64 whatever the model is cast to: torchmetrics guards .half() and
        # .bfloat16() but not .to(dtype), which bf16-true precision uses (bf16 counts stop at 256)
        this = super()._apply(fn, *args, **kwargs)
        internals.states_to_float64(this)
        return this


def read_checkpoint(path: str) -> dict:
    """A Lightning checkpoint's contents (``torch.load``, memory-mapped, on the CPU), loaded with
    ``weights_only=True``: only tensors and plain types (numbers, strings, lists, dicts: all that
    train.py's checkpoints hold, random states and sampler positions included) are rebuilt, so a
    checkpoint whose pickle names code (``os.system``) runs none of it. Raises FileNotFoundError for a
    missing file, ValueError naming it for one that is not a readable checkpoint (cut short, or
    another format) or that holds anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise ValueError(f"{path}: refused: {unsafe_reason(str(e))}; a checkpoint written by train.py holds "
                             "only tensors, numbers, strings, lists and dicts, and nothing in this one was run "
                             "(was it made elsewhere, or altered?)") from None
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e}); was it cut short "
                         "(a full disk, a copy still running)?") from None


def unsafe_reason(message: str) -> str:
    """What torch's weights-only loader refused, from its message: 'its pickle names posix.system'."""
    found = re.search(r"GLOBAL ([\w.]+)", message)
    if found:
        return f"its pickle names {found.group(1)}"
    lines = [line for line in message.splitlines() if "error" in line.lower() or "unsupported" in line.lower()]
    return f"its pickle holds what a weights-only load refuses ({(lines or ['?'])[-1].strip()})"


class LitVQA(pl.LightningModule):
    def __init__(self, task: str = "gqa", model: dict | None = None, optim: dict | None = None, *,
                 ntoken: int, num_answers: int, v_dim: int = 2048, spatial_dim: int = SPATIAL_DIM,
                 vocabulary: dict | None = None):
        """``model``/``optim``: fields of ``ModelConfig``/``OptimConfig`` (the rest default);
        ``ntoken``, ``num_answers``, ``v_dim``, ``spatial_dim``: sizes from the data."""
        super().__init__()
        self.task = get_task(task)
        self.model_config, self.optim_config = ModelConfig(**(model or {})), OptimConfig(**(optim or {}))
        # the hyper-parameters hold every option, defaults included: a later default cannot alter a checkpoint
        model, optim = dataclasses.asdict(self.model_config), dataclasses.asdict(self.optim_config)
        self.save_hyperparameters()
        if self.optim_config.opt not in OPTIMIZERS:
            raise ValueError(f"unknown optimiser {self.optim_config.opt!r}; expected one of {sorted(OPTIMIZERS)}")
        self.model = build_model(self.model_config.model, ntoken=ntoken, num_answers=num_answers, v_dim=v_dim,
                                 spatial_dim=spatial_dim, **self.model_config.model_kwargs())
        self.metrics = torch.nn.ModuleDict({stage: WeightedMeans() for stage in STAGES})

    def __setattr__(self, name: str, value) -> None:
        # Lightning names the hook under way in an attribute it sets before and after every hook (~50
        # times a training step); nn.Module.__setattr__ looks for a parameter, buffer or module of the
        # name first (~4 µs), which a hook's name never is
        if name == internals.HOOK_NAME:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        # a batch is a flat dict of tensors (butd.loading.batches): one .to each, as Lightning's
        # default does (non-blocking to a GPU) without its walk over nested collections
        blocking = device.type in ("cpu", "mps")
        return {k: v.to(device, non_blocking=not blocking) for k, v in batch.items()}

    def forward(self, batch):
        return self.model(batch["features"], batch["spatials"], batch["tokens"], batch.get("num_boxes"))

    def loss_and_score(self, batch):
        """(mean loss, mean score) over a batch's answered questions, and the per-question
        (loss, score, weight) the epoch metrics sum."""
        losses, scores, weights = self.task.loss_and_score(self(batch), batch)
        count = weights.sum().clamp(min=1)
        return (losses * weights).sum() / count, (scores * weights).sum() / count, (losses, scores, weights)

    def _update(self, stage: str, per_question) -> None:
        losses, scores, weights = per_question
        self.metrics[stage].update(losses.detach(), scores, weights)

    def _log_epoch(self, stage: str, prog_bar: bool = False) -> None:
        # computed (and summed over ranks) once per epoch, not at every step
        loss, acc = self.metrics[stage].compute()
        self.log(stage + "loss", loss, prog_bar=prog_bar)
        self.log(stage + "acc", acc, prog_bar=prog_bar)
        self.metrics[stage].reset()

    def training_step(self, batch, batch_idx):
        loss, acc, per_question = self.loss_and_score(batch)
        self._update("train_epoch_", per_question)
        # only on the steps the loggers write: logging is per-step host work (and, on a GPU, waits)
        every = self.trainer.log_every_n_steps
        if every and (self.global_step + 1) % every == 0:
            self.log_dict({"train_loss": loss.detach(), "train_acc": acc}, on_step=True, on_epoch=False)
        return loss

    def on_train_epoch_end(self):
        # an epoch cut short (--max_steps, an interrupt) is not an epoch: its sums go on in the
        # checkpoint, and a resumed run logs the whole epoch once, when it ends
        if internals.epoch_whole(self.trainer):
            self._log_epoch("train_epoch_")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # every rank saves (Trainer.save_checkpoint is collective): the sums of all ranks go in
        loss, acc, weight = self.trainer.strategy.reduce(self.metrics["train_epoch_"].sums.clone(), reduce_op="sum").tolist()
        checkpoint[TRAIN_EPOCH_SUMS] = [loss, weight, acc, weight]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Mid-epoch: the epoch's sums so far, on the first rank only (they are those of all ranks)."""
        sums = checkpoint.get(TRAIN_EPOCH_SUMS)
        if sums is None or (internals.attached_to_trainer(self) and self.global_rank != 0):
            return
        loss, weight, acc, _ = sums
        self.metrics["train_epoch_"].sums.copy_(torch.tensor([loss, acc, weight], dtype=torch.float64))

    def validation_step(self, batch, batch_idx):
        self._update("val_", self.loss_and_score(batch)[2])

    def on_validation_epoch_end(self):
        self._log_epoch("val_", prog_bar=True)

    def predict_step(self, batch, batch_idx, dataloader_idx=0):
        logits = self(batch)
        return {"index": batch["index"], "logits": logits, "prediction": logits.argmax(dim=1)}

    def configure_optimizers(self):
        kwargs = {k: getattr(self.optim_config, k) for k in ("lr", "weight_decay")
                  if getattr(self.optim_config, k) is not None}
        # the same update rule over all parameters at once (torch's default on CPU loops over them):
        # one fused kernel on CUDA where torch has it, else its multi-tensor (foreach) kernels
        fused = next(self.parameters()).is_cuda and self.optim_config.opt in ("adam", "adamw")
        kwargs["fused" if fused else "foreach"] = True
        return OPTIMIZERS[self.optim_config.opt](self.parameters(), **kwargs)
