"""Train BUTD (or FiLM) on GQA: the specification's training script on Lightning 2.x and the fast loader.

On the CPU, or one GPU (if the caches under --gqa_cache are missing and the raw inputs are present,
the converters run first, as the specification does):

    python train.py --run_name GQA
    python train.py --run_name GQA --gpus 1 --precision bf16-mixed --feature_cache gpu
    python train.py --config checkpoints/runs/<run>/config.json --run_name again   # a saved run's settings

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

Every flag, its default and its meaning: `python train.py --help`; they come from the configuration
dataclasses in butd/training/config.py. What a run writes is described in butd/training/run.py.
Resume an interrupted run, in the same run directory, with --resume <that run's>/last.ckpt (its
settings come from the config.json beside it): it goes on where the run stopped, mid-epoch too (the
loader's position is in the checkpoint; Ctrl-C of a single process saves last.ckpt at the end of the
batch under way). A user error (a missing file, a stale cache, GPUs that are not there) is one line
on stderr and exit status 1.

The --bsz batch is per process: with DDP the global batch is bsz x processes. With --gpus 0 (the
default) the accelerator is chosen automatically and one device is used; the specification instead
forced the CPU at --gpus 0 (use --accelerator cpu for that).
"""
from __future__ import annotations

import sys

from butd.cli import run
from butd.training.config import parse_config
from butd.training.run import train


def main(argv=None):
    return train(parse_config(argv))


if __name__ == "__main__":
    sys.exit(run(main))   # a user's error: one line and exit status 1
