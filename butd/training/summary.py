"""What a run says when it ends: its best and final validation, how long it took, where its files are.

    [*] training finished: 8 epochs in 2 min 20 s      (or: 3 epochs and 41 batches of epoch 3 in ...)
        best    epoch 7  val_acc 48.75%  val_loss 1.1272  runs/<run>/butd-epoch=07-...ckpt
        final   epoch 7  val_acc 48.75%  val_loss 1.1272  runs/<run>/last.ckpt
        run     runs/<run>/  (config.json, checkpoints)
        metrics metrics/<run>-metrics.json
"""
from __future__ import annotations


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {s} s" if minutes else f"{s} s"


def _validation(entry: dict) -> str:
    metrics = "  ".join(f"{k} {100 * v:.2f}%" if k.endswith("_acc") else f"{k} {v:.4f}"
                        for k, v in entry.items() if k.startswith("val_"))
    return f"epoch {entry['epoch']}  {metrics}  {entry.get('checkpoint') or '(its weights were not kept)'}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def summary(outcome: dict, epochs: int, seconds: float, run_dir: str, metrics: str, logs: str | None,
            status: str = "finished", batches: int = 0) -> str:
    """The lines ``train.py`` prints at the end of a run (``outcome``: ``MetricLogger.record_outcome``'s;
    ``epochs``: the whole epochs the run has trained, ``batches``: those of the epoch it was cut short
    in, by ``--max_steps`` or Ctrl-C)."""
    cut = f" and {_count(batches, 'batch', 'batches')} of epoch {epochs}" if batches else ""
    lines = [f"[*] training {status}: {_count(epochs, 'epoch', 'epochs')}{cut} in {duration(seconds)}"]
    if outcome:
        lines += [f"    best    {_validation(outcome['best'])}", f"    final   {_validation(outcome['final'])}"]
    else:
        lines.append("    no validation was run")
    lines += [f"    run     {run_dir}  (config.json, checkpoints)", f"    metrics {metrics}"]
    if logs:
        lines.append(f"    logs    {logs}")
    return "\n".join(lines)
