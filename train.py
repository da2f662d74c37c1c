"""Train BUTD (or FiLM) on GQA: the specification's training script on Lightning 2.x and the fast loader.

On the CPU, or one GPU (if the caches under --gqa_cache are missing and the raw inputs are present,
the converters run first, as the specification does):

    python train.py --run_name GQA
    python train.py --run_name GQA --gpus 1 --precision bf16-mixed --feature_cache gpu

Several GPUs on one machine (Lightning starts one process per GPU and re-runs this script in each):

    python train.py --run_name GQA --gpus 2 --strategy ddp

Several nodes: make the caches first (`python converters/tsv_to_zarr.py`,
`python converters/questions_to_shards.py`) on a file system every node sees, then start the same
command on each node; Lightning reads the ranks from the launcher's environment.
With torchrun (here 2 nodes x 8 GPUs; run on every node, --node_rank 0 on the master):

    torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \\
        train.py --run_name GQA --accelerator gpu --devices 8 --num_nodes 2 --strategy ddp

With SLURM (one task per GPU; in an sbatch script with --nodes=2 --ntasks-per-node=8 --gres=gpu:8):

    srun python train.py --run_name GQA --accelerator gpu --devices 8 --num_nodes 2 --strategy ddp

Each run writes, under --checkpoint: runs/<run>/config.json (the resolved configuration, which
evaluate.py reads to find the data), runs/<run>/butd-epoch=..-val_loss=..-val_acc=...ckpt (the
top 3 by val_acc, and last.ckpt), and metrics/<run>-metrics.json (the specification's metric file).
Resume an interrupted run, in the same run directory, with --resume <that run's>/last.ckpt.

The --bsz batch is per process: with DDP the global batch is bsz x processes. With --gpus 0 (the
default) the accelerator is chosen automatically and one device is used; the specification instead
forced the CPU at --gpus 0 (use --accelerator cpu for that).
"""
from __future__ import annotations

import argparse
import os
from datetime import datetime

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train BUTD/FiLM on GQA.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--run_name", required=True, help="run name, for informative logging")

    g = p.add_argument_group("data (the specification's paths; the GQA/GloVe ones default under --data)")
    g.add_argument("--data", default="data/", help="where downloaded data is located")
    g.add_argument("--checkpoint", default="checkpoints/", help="where checkpoints and metrics go")
    g.add_argument("--gqa_questions", default=None, help="GQA question JSONs (default <data>/GQA-Questions)")
    g.add_argument("--gqa_features", default=None, help="GQA feature TSVs (default <data>/GQA-Features)")
    g.add_argument("--gqa_cache", default=None, help="converted stores and question shards "
                                                     "(default <data>/GQA-Cache)")
    g.add_argument("--glove", default=None, help="GloVe 300-d vectors (default <data>/GloVe/glove.6B.300d.txt)")
    g.add_argument("--dataset", default="gqa", choices=["gqa"], help="only GQA is built here")
    g.add_argument("--num_workers", type=int, default=0,
                   help="0: batches gathered by a background thread of each rank (fastest measured); "
                        "N: N loader worker processes per rank")
    g.add_argument("--feature_cache", default="none", choices=["none", "pinned", "gpu"],
                   help="keep the whole feature store resident in pinned host memory or on the GPU")

    g = p.add_argument_group("model")
    g.add_argument("--model", default="butd", choices=["butd", "film"])
    g.add_argument("--emb_dim", type=int, default=300, help="word embedding size (must match GloVe)")
    g.add_argument("--emb_dropout", type=float, default=0.0)
    g.add_argument("--rnn", default="GRU", choices=["GRU", "LSTM"])
    g.add_argument("--rnn_layers", type=int, default=1)
    g.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=False)
    g.add_argument("--q_dropout", type=float, default=0.0, help="dropout between RNN layers")
    g.add_argument("--attention_dropout", type=float, default=0.2)
    g.add_argument("--answer_dropout", type=float, default=0.5)
    g.add_argument("--hidden", type=int, default=1024)
    g.add_argument("--weight_norm", action=argparse.BooleanOptionalAction, default=True,
                   help="weight-normalised linear layers; --no-weight_norm turns them off (the "
                        "specification's Tap parser made a bare --weight_norm turn them off)")

    g = p.add_argument_group("optimisation")
    g.add_argument("--bsz", type=int, default=256, help="batch size per process")
    g.add_argument("--epochs", type=int, default=15)
    g.add_argument("--max_steps", type=int, default=-1, help="stop after this many steps (-1: epochs decide)")
    g.add_argument("--opt", default="adamax", choices=["adamax", "adam", "adamw"])
    g.add_argument("--lr", type=float, default=None, help="default: the optimiser's own (Adamax: 0.002)")
    g.add_argument("--weight_decay", type=float, default=None, help="default: the optimiser's own")
    g.add_argument("--gradient_clip", type=float, default=0.25, help="max gradient norm")
    g.add_argument("--seed", type=int, default=7)

    g = p.add_argument_group("hardware")
    g.add_argument("--gpus", type=int, default=0, help="N > 0: train on N GPUs, -1: on all (the seed's flag)")
    g.add_argument("--accelerator", default="auto", help="cpu, gpu, auto, ...")
    g.add_argument("--devices", default=None, help="devices per node (default: --gpus, or 1)")
    g.add_argument("--num_nodes", type=int, default=1)
    g.add_argument("--strategy", default="auto", help="e.g. ddp")
    g.add_argument("--precision", default="32-true", help="e.g. bf16-mixed (fastest on recent GPUs)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")

    g = p.add_argument_group("run control")
    g.add_argument("--fast_dev_run", type=int, nargs="?", const=1, default=0,
                   help="run N train/val batches only, as a smoke test (no checkpoints or metrics)")
    g.add_argument("--resume", default=None, metavar="CKPT", help="continue the run this checkpoint belongs to")
    g.add_argument("--log_every", type=int, default=50, help="log train_loss/train_acc every N steps")

    args = p.parse_args(argv)
    for name, default in (("gqa_questions", "GQA-Questions"), ("gqa_features", "GQA-Features"),
                          ("gqa_cache", "GQA-Cache"), ("glove", os.path.join("GloVe", "glove.6B.300d.txt"))):
        if getattr(args, name) is None:
            setattr(args, name, os.path.join(args.data, default))
    if args.gpus != 0:
        args.accelerator = "gpu" if args.accelerator == "auto" else args.accelerator
        args.devices = args.devices or str(args.gpus)
    args.devices = args.devices or "1"
    args.devices = int(args.devices) if args.devices.isdigit() else args.devices
    return args


def make_run_name(args) -> str:
    """The specification's run name: <run_name>-<model>-x<seed>+<month>-<day>-[<hour>:<minute>]
    (-2, -3, ... if taken); a resumed run keeps the name saved with it."""
    if args.resume:
        from butd.run_config import load_run_config
        return load_run_config(args.resume)["run"]
    name = base = f"{args.run_name}-{args.model}-x{args.seed}+{datetime.now().strftime('%m-%d-[%H:%M]')}"
    # Two runs started in the same minute would share checkpoints and metrics: number the later one.
    # (Only rank zero writes, so another rank choosing another suffix changes nothing.)
    n = 1
    while os.path.exists(os.path.join(args.checkpoint, "runs", name)):
        n += 1
        name = f"{base}-{n}"
    return name


def is_launcher_child() -> bool:
    """True in every process but the first one of a multi-process launch (torchrun, SLURM, or
    Lightning's own re-runs of this script)."""
    return any(int(os.environ.get(v, "0")) > 0 for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def _require(path: str, what: str, makes: str, command: str) -> None:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: {what} not found; it is needed to make {makes}. "
                                f"Download it, point the matching flag at it, or make {makes} with `{command}`")


def ensure_caches(args) -> None:
    """Make, resume or check the feature stores and the question cache under --gqa_cache, as the
    specification prepares its caches before training. Where the raw inputs are present, each cache
    is brought up to date by its converter (a no-op when it already matches them; an interrupted
    conversion resumes; a store made from another TSV is an error, never silently reused). Where
    they are absent, complete caches are used as they are (e.g. on nodes that see only the caches).
    In the extra processes of a multi-process launch nothing is built: the caches must be ready."""
    from pytorch_lightning.utilities import rank_zero_info

    from butd import questions, schema
    from butd.convert import convert_tsv

    cache, qdir = args.gqa_cache, os.path.join(args.gqa_cache, "questions")
    child = is_launcher_child()
    for store, tsv_name in schema.TSV_FOR_STORE.items():
        path, tsv = schema.store_path(cache, store), os.path.join(args.gqa_features, tsv_name)
        complete = os.path.exists(path) and schema.read_attrs(path).complete
        if child or (complete and not os.path.exists(tsv)):
            if not complete:
                raise FileNotFoundError(f"{path}: feature store missing or incomplete; in a multi-process "
                                        "launch make the caches first with `python converters/tsv_to_zarr.py`")
            continue
        _require(tsv, "features TSV", path, f"python converters/tsv_to_zarr.py {tsv} --out {path}")
        summary = convert_tsv(tsv, path)
        rank_zero_info(str(summary))

    inputs = questions.Inputs(args.gqa_questions, args.glove, cache, args.emb_dim)
    command = (f"python converters/questions_to_shards.py --questions {args.gqa_questions} "
               f"--glove {args.glove} --cache {cache} --out {qdir}")
    if os.path.exists(args.gqa_questions) and os.path.exists(args.glove):
        if child:
            questions.check_inputs(qdir, inputs)     # the first process has built it
        else:
            questions.build(args.gqa_questions, args.glove, qdir, cache, emb_dim=args.emb_dim)
        return
    try:
        questions.read_manifest(qdir)
    except FileNotFoundError:
        _require(args.gqa_questions, "GQA questions directory", qdir, command)
        _require(args.glove, "GloVe file", qdir, command)
    rank_zero_info(f"[*] raw questions or GloVe not found: using the question cache {qdir} unchecked")


def save_config(args, run: str, run_dir: str, dm) -> None:
    from butd.run_config import save_run_config
    save_run_config(run_dir, {
        "run": run, "args": vars(args), "created": datetime.now().isoformat(timespec="seconds"),
        "cache_dir": os.path.abspath(args.gqa_cache), "questions_dir": os.path.abspath(dm.questions_dir),
        "data": {"ntoken": dm.ntoken, "num_answers": dm.num_answers, "v_dim": dm.v_dim,
                 "train_split": dm.train_split, "val_split": dm.val_split}})


def main(argv=None):
    args = parse_args(argv)

    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.utilities import rank_zero_info

    from butd.data import GQADataModule
    from butd.lit import LitVQA
    from butd.metrics_logger import MetricLogger

    run = make_run_name(args)
    rank_zero_info(f"[*] Starting Train Job in Mode {args.dataset.upper()} with Run Name: {run}")
    pl.seed_everything(args.seed, workers=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")     # TF32 matmuls: the usual trade on Ampere and newer

    ensure_caches(args)
    dm = GQADataModule(args.gqa_cache, batch_size=args.bsz, num_workers=args.num_workers,
                       feature_cache=args.feature_cache, seed=args.seed)
    dm.setup("fit")
    lit = LitVQA(model=args.model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                 ntoken=dm.ntoken, num_answers=dm.num_answers, v_dim=dm.v_dim, emb_dim=args.emb_dim,
                 hidden=args.hidden, rnn=args.rnn, rnn_layers=args.rnn_layers, bidirectional=args.bidirectional,
                 weight_norm=args.weight_norm, emb_dropout=args.emb_dropout, q_dropout=args.q_dropout,
                 attention_dropout=args.attention_dropout, answer_dropout=args.answer_dropout)
    lit.model.load_embeddings(dm.glove)
    if args.compile:
        lit.model.compile()       # in place: parameter names (and checkpoints) stay uncompiled

    run_dir = os.path.join(args.checkpoint, "runs", run)
    logger = MetricLogger(name=run, save_dir=args.checkpoint, resume=bool(args.resume))
    logger.log_hyperparams(vars(args))
    checkpoints = ModelCheckpoint(dirpath=run_dir, filename="butd-{epoch:02d}-{val_loss:.2f}-{val_acc:.2f}",
                                  monitor="val_acc", mode="max", save_top_k=3, save_last=True)
    trainer = pl.Trainer(
        default_root_dir=args.checkpoint, max_epochs=args.epochs, max_steps=args.max_steps,
        gradient_clip_val=args.gradient_clip, gradient_clip_algorithm="norm",
        accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=args.strategy,
        precision=args.precision, logger=logger, callbacks=[checkpoints], fast_dev_run=args.fast_dev_run,
        log_every_n_steps=args.log_every, benchmark=True,
        use_distributed_sampler=False)       # the loader's sampler shards itself across ranks
    if trainer.is_global_zero and not args.fast_dev_run:
        save_config(args, run, run_dir, dm)

    rank_zero_info("\n[*] Training...\n")
    trainer.fit(lit, datamodule=dm, ckpt_path=args.resume)
    if checkpoints.best_model_path:
        rank_zero_info(f"[*] best checkpoint: {checkpoints.best_model_path} "
                       f"(val_acc {float(checkpoints.best_model_score):.4f})")
    return trainer, checkpoints


if __name__ == "__main__":
    main()
