"""One training run from a ``TrainConfig``: data, loggers, checkpoints, Trainer, caches, model, fit.

``train.py`` is its command line. Each run writes, under ``--checkpoint``: ``runs/<run>/config.json``
(the resolved configuration: ``--config`` reads it back, ``evaluate.py`` finds the data through
it), ``runs/<run>/<model>-epoch=..-val_loss=..-val_acc=...ckpt`` (the top 3 by val_acc, and
``last.ckpt``), ``metrics/<run>-metrics.json`` (the specification's metric file) and, with
``--logger csv|tensorboard``, ``logs/<run>/``.
"""
from __future__ import annotations

import dataclasses
import os
import time
from datetime import datetime

from butd.training.config import TrainConfig
from butd.training.summary import summary


def run_name(config: TrainConfig) -> str:
    """The specification's run name: <run_name>-<model>-x<seed>+<month>-<day>-[<hour>:<minute>]
    (-2, -3, ... if taken); a resumed run keeps its run directory's name."""
    if config.run.resume:
        return os.path.basename(os.path.dirname(os.path.abspath(config.run.resume)))
    name = base = (f"{config.run.run_name}-{config.model.model}-x{config.optim.seed}"
                   f"+{datetime.now().strftime('%m-%d-[%H:%M]')}")
    # Two runs started in the same minute would share checkpoints and metrics: number the later one.
    # (Only rank zero writes, so another rank choosing another suffix changes nothing.)
    n = 1
    while os.path.exists(os.path.join(config.data.checkpoint, "runs", name)):
        n += 1
        name = f"{base}-{n}"
    return name


def resumable_vocabulary(path: str, config: TrainConfig):
    """The vocabulary identity the checkpoint ``path`` was trained with (None for one that has
    none), after checking that ``config`` asks for the task and model it was trained as, and for
    more epochs than it has. Raises ValueError naming the flags that differ, or the epochs."""
    from butd.training import lightning_internals as internals
    from butd.training.lit import read_checkpoint
    checkpoint = read_checkpoint(path)
    hparams = checkpoint.get("hyper_parameters", {})
    # the optimiser's kind too: its saved state (Adamax's, Adam's moments) fits no other
    saved = {"dataset": hparams.get("task", config.data.dataset), **(hparams.get("model") or {}),
             **{k: v for k, v in (hparams.get("optim") or {}).items() if k == "opt"}}
    asked = {"dataset": config.data.dataset, **dataclasses.asdict(config.model), "opt": config.optim.opt}
    differ = [f"--{k} {saved[k]} (this run: {asked[k]})" for k in saved if k in asked and saved[k] != asked[k]]
    if differ:
        raise ValueError(f"{path} was trained with {', '.join(differ)}: resume with the run's settings "
                         "(--resume alone reads them from the config.json beside the checkpoint)")
    if "loops" in checkpoint:
        position = internals.saved_loader_position(checkpoint)       # (epoch, batches) of a part-epoch
        trained = position[0] if position else internals.epochs_processed(checkpoint)
        if trained >= config.optim.epochs:
            raise ValueError(f"{path}: the run has trained {trained} epochs and --epochs is {config.optim.epochs}: "
                             f"nothing to resume; to train it further, give --epochs above {trained}")
    return hparams.get("vocabulary")


def make_loggers(config: TrainConfig, run: str) -> list:
    """The specification's metrics JSON, and the Lightning logger ``--logger`` names."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from butd.training.metrics_logger import MetricLogger
    loggers = [MetricLogger(name=run, save_dir=config.data.checkpoint, resume=bool(config.run.resume))]
    logs = os.path.join(config.data.checkpoint, "logs")
    if config.run.logger == "csv":
        loggers.append(CSVLogger(logs, name=run, version=""))
    elif config.run.logger == "tensorboard":
        loggers.append(TensorBoardLogger(logs, name=run, version="", default_hp_metric=False))
    return loggers


def check_devices(config: TrainConfig) -> None:
    """Refuse, before any work, GPUs that are not there: Lightning would end in a traceback. (A
    ``--feature_cache gpu`` without one is refused by the DataModule, made before any work too.)"""
    from butd.cli import require_gpus
    hw = config.hardware
    if hw.accelerator in ("gpu", "cuda"):
        require_gpus(hw.devices if isinstance(hw.devices, int) and hw.devices > 0 else 1,
                     "--gpus / --accelerator gpu --devices", "to train on the CPU use --accelerator cpu, and to run "
                     "DDP on the CPU --accelerator cpu --devices 2 --strategy ddp")


def make_trainer(config: TrainConfig, loggers, callbacks: list, **overrides):
    """The Trainer of a run (``overrides`` for the step benchmark, which times this very loop)."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelSummary

    from butd.training.console import progress, quiet_lightning
    from butd.training.lean_hooks import QuietProfiler, grouped

    quiet_lightning()
    # a bar redrawn at every step costs more than a small model's step
    shown, bar = progress(config.run.log_every)
    hw = config.hardware
    options = dict(
        default_root_dir=config.data.checkpoint, max_epochs=config.optim.epochs, max_steps=config.optim.max_steps,
        gradient_clip_val=config.optim.gradient_clip, gradient_clip_algorithm="norm",
        accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes, strategy=hw.strategy,
        precision=hw.precision, logger=loggers, fast_dev_run=config.run.fast_dev_run,
        # Lightning's own model summary among the run's callbacks, which it then calls as one
        callbacks=grouped([*callbacks, *shown, ModelSummary()]), enable_progress_bar=bar, enable_model_summary=False,
        log_every_n_steps=config.run.log_every, benchmark=True, profiler=QuietProfiler(),
        use_distributed_sampler=False)       # the loader's sampler shards itself across ranks
    options.update(overrides)
    return pl.Trainer(**options)


def run_callbacks(config: TrainConfig, run_dir: str) -> tuple:
    """``(callbacks, top_k, stop)``: the Lightning callbacks of a run writing to ``run_dir``: the top 3
    checkpoints by val_acc (``top_k``), ``last.ckpt`` at every epoch's end, resuming mid-epoch, and
    (not for ``--fast_dev_run``) the configuration saved when training starts and Ctrl-C (``stop``)."""
    from butd.training.callbacks import SaveConfig, StopOnInterrupt
    from butd.training.lean_hooks import ModelCheckpoint
    from butd.training.resume import MidEpochResume
    top_k = ModelCheckpoint(dirpath=run_dir, filename=config.model.model + "-{epoch:02d}-{val_loss:.2f}-{val_acc:.2f}",
                            monitor="val_acc", mode="max", save_top_k=3)
    # last.ckpt of its own callback, written at every epoch's end: Lightning's save_last writes it only
    # when a top-k checkpoint was saved at the same step, so an epoch outside the top 3 left it behind
    last = ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    stop = StopOnInterrupt(top_k=top_k)
    extra = [] if config.run.fast_dev_run else [stop, SaveConfig(run_dir, config)]
    return [top_k, last, MidEpochResume(), *extra], top_k, stop


def question_inputs(config: TrainConfig):
    """The question cache's inputs (a ``butd.questions.Inputs``) for a resolved ``TrainConfig``."""
    from butd import questions
    paths = config.data.paths()
    return questions.Inputs(config.data.dataset, paths["questions"], paths["glove"], paths["cache"],
                            min_answer_count=config.data.min_answer_count,
                            emb_dim=config.model.emb_dim, drop_missing=config.data.drop_missing)


def prepare_before_fit(trainer, dm) -> None:
    """Run ``dm.prepare_data`` where Lightning runs it (local rank 0 of each node, or of node 0 alone
    without ``prepare_data_per_node``), before fitting: the model's sizes come from the caches it
    prepares. Fitting calls it again in the same process, where it does nothing; other processes
    check the caches in ``dm.setup``. (Lightning's ``DDP`` launcher starts those processes inside
    fit, after this one prepared; processes started together by torchrun or SLURM find caches made
    beforehand.)"""
    if trainer.local_rank == 0 and (dm.prepare_data_per_node or trainer.node_rank == 0):
        dm.prepare_data()


def train(config: TrainConfig):
    """Train as ``config`` says; returns the Trainer and the ModelCheckpoint callback."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.utilities import rank_zero_info

    from butd import questions
    from butd.loading import VQADataModule
    from butd.training import lightning_internals as internals
    from butd.training.lit import LitVQA

    check_devices(config)
    vocabulary = resumable_vocabulary(config.run.resume, config) if config.run.resume else None
    paths = config.data.paths()
    dm = VQADataModule(config.data.dataset, paths["cache"], batch_size=config.optim.bsz,
                       num_workers=config.data.num_workers, feature_cache=config.data.feature_cache,
                       seed=config.optim.seed, inputs=question_inputs(config), features_dir=paths["features"])
    run = run_name(config)
    rank_zero_info(f"[*] Starting Train Job in Mode {config.data.dataset.upper()} with Run Name: {run}")
    pl.seed_everything(config.optim.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")     # TF32 matmuls: the usual trade on Ampere and newer

    run_dir = os.path.join(config.data.checkpoint, "runs", run)
    loggers = make_loggers(config, run)
    loggers[0].log_hyperparams(config.flat())
    callbacks, checkpoints, stop = run_callbacks(config, run_dir)
    trainer = make_trainer(config, loggers, callbacks)

    prepare_before_fit(trainer, dm)
    dm.setup("fit")
    if config.run.resume:
        questions.check_vocabulary(vocabulary, dm.questions_dir, f"the checkpoint {config.run.resume}")
    lit = LitVQA(config.data.dataset, model=dataclasses.asdict(config.model), optim=dataclasses.asdict(config.optim),
                 ntoken=dm.ntoken, num_answers=dm.num_answers, v_dim=dm.v_dim, spatial_dim=dm.spatial_dim,
                 vocabulary=dm.vocabulary)
    lit.model.load_embeddings(dm.glove)
    if config.hardware.compile:   # in place: parameter names (and checkpoints) stay uncompiled
        lit.model.compile(mode=config.hardware.compile_mode)

    rank_zero_info("\n[*] Training...\n")
    start = time.perf_counter()
    # weights_only: Lightning loads the checkpoint again, refusing what read_checkpoint refused
    trainer.fit(lit, datamodule=dm, ckpt_path=config.run.resume, weights_only=True)
    last = os.path.join(run_dir, "last.ckpt")
    if not config.run.fast_dev_run:   # (which writes neither checkpoints nor metrics)
        # an epoch cut short (--max_steps, Ctrl-C) counts as one in Lightning's epoch, not in ours; and
        # last.ckpt then holds the run after its final validation, whose weights only a top-k file may keep
        batches = 0 if internals.epoch_whole(trainer) else internals.batches_completed(trainer)
        final = last if os.path.exists(last) and not batches else None
        ended = loggers[0].record_outcome(checkpoints.best_model_path or None, final, kept=list(checkpoints.best_k_models))
        logs = os.path.join(config.data.checkpoint, "logs", run) if config.run.logger else None
        rank_zero_info(summary(ended, trainer.current_epoch - bool(batches), time.perf_counter() - start, run_dir,
                               loggers[0].path, logs, "interrupted" if stop.stopped else "finished", batches))
    if stop.stopped:
        loggers[0].finalize("interrupted")
        rank_zero_info(f"[*] interrupted: {last} holds the run up to the last batch; continue with "
                       f"python train.py --resume '{last}'")
        raise KeyboardInterrupt
    return trainer, checkpoints
