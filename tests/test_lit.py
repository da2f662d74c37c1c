"""The LightningModule and the metric logger on small in-memory batches (the loader's dict format):
exact epoch metrics with unanswered questions ignored, the metrics file, checkpoint round trip,
predict_step, optimisers, and val_acc of two DDP processes equal to one's (no question counted twice)."""
import json
import os
import subprocess
import sys

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from butd.loading.sampler import ShardedBatchSampler
from butd.training.lit import LitVQA
from butd.training.metrics_logger import MetricLogger

V_DIM, K, T, NTOKEN, ANSWERS = 8, 5, 7, 10, 4
SIZES = dict(ntoken=NTOKEN, num_answers=ANSWERS, v_dim=V_DIM)
SMALL = dict(SIZES, model={"emb_dim": 6, "hidden": 16})

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_batches(sizes, seed=0):
    """Batches whose answer is the channel lit up in every box; one unanswered question per batch."""
    g = torch.Generator().manual_seed(seed)
    out, start = [], 0
    for n in sizes:
        labels = torch.randint(0, ANSWERS, (n,), generator=g)
        features = torch.rand(n, K, V_DIM, generator=g)
        features[torch.arange(n), :, labels] += 1.0
        labels[0] = -1
        out.append({"features": features.half(), "spatials": torch.rand(n, K, 6, generator=g),
                    "tokens": torch.randint(0, NTOKEN + 1, (n, T), generator=g), "labels": labels,
                    "index": torch.arange(start, start + n)})
        start += n
    return out


def loader(batches):
    return DataLoader(batches, batch_size=None)


def trainer(tmp_path, **kw):
    kw = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
          "enable_model_summary": False, "gradient_clip_val": 0.25, "default_root_dir": tmp_path, **kw}
    return pl.Trainer(accelerator="cpu", devices=1, **kw)


def test_val_metrics_are_exact_means_over_answered_questions(tmp_path):
    torch.manual_seed(0)
    lit = LitVQA(**SMALL)
    batches = make_batches([9, 3, 5])            # unequal sizes: a mean of batch means would differ
    got = trainer(tmp_path).validate(lit, loader(batches), verbose=False)[0]
    lit.eval()
    with torch.no_grad():
        logits = torch.cat([lit(b) for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    keep = labels != -1
    want_loss = F.cross_entropy(logits[keep], labels[keep]).item()
    want_acc = (logits[keep].argmax(1) == labels[keep]).float().mean().item()
    assert got["val_loss"] == pytest.approx(want_loss, abs=1e-5)
    assert got["val_acc"] == pytest.approx(want_acc, abs=1e-6)


def test_epoch_sums_stay_float64_when_the_model_is_cast_to_bf16():
    """bf16-true precision casts the module with .to(dtype): the sums must keep counting past 256."""
    lit = LitVQA(**SMALL).to(dtype=torch.bfloat16)
    metric = lit.metrics["val_"]
    for _ in range(300):
        metric.update(torch.ones(1), torch.ones(1), torch.ones(1))
    assert metric.sums.dtype == torch.float64 and metric.sums.tolist() == [300, 300, 300]
    metric.reset()
    assert metric.sums.dtype == torch.float64


def test_fit_writes_the_specs_metrics_file_and_learns(tmp_path):
    torch.manual_seed(0)
    lit = LitVQA(model={"emb_dim": 6, "hidden": 16, "answer_dropout": 0.0}, optim={"lr": 0.01}, **SIZES)
    logger = MetricLogger("run", str(tmp_path))
    logger.log_hyperparams({"run_name": "run", "bsz": 16})
    trainer(tmp_path, max_epochs=4, logger=logger, log_every_n_steps=5).fit(
        lit, loader(make_batches([16] * 20)), loader(make_batches([16] * 4, seed=1)))
    events = json.loads((tmp_path / "metrics" / "run-metrics.json").read_text())
    assert events["status"] == "success"
    assert events["hyperparams"]["run_name"] == "run" and events["hyperparams"]["model"] == "butd"
    for key in ("train_loss", "train_acc", "train_epoch_loss", "train_epoch_acc", "val_loss", "val_acc"):
        assert len(events[key]) == len(events[key + "_step"]) > 0, key
    assert len(events["val_acc"]) == 4
    assert events["val_acc_step"] == sorted(events["val_acc_step"])
    assert events["train_epoch_loss"][-1] < events["train_epoch_loss"][0]
    assert events["val_acc"][-1] > 0.8                 # 4 answers: chance is ~0.25


def test_logger_resume_keeps_earlier_values(tmp_path):
    first = MetricLogger("r", str(tmp_path))
    first.log_metrics({"val_acc": 0.5}, step=10)
    first.finalize("failed")
    again = MetricLogger("r", str(tmp_path), resume=True)
    assert again.events["status"] == "running"
    again.log_metrics({"val_acc": 0.6}, step=20)
    again.finalize("success")
    events = json.loads((tmp_path / "metrics" / "r-metrics.json").read_text())
    assert events["val_acc"] == [0.5, 0.6] and events["val_acc_step"] == [10, 20]
    assert events["status"] == "success"


def test_checkpoint_round_trip_and_predict(tmp_path):
    torch.manual_seed(0)
    lit = LitVQA(model={"model": "film", "emb_dim": 6, "hidden": 16}, optim={"opt": "adamw", "lr": 3e-3}, **SIZES)
    tr = trainer(tmp_path, max_steps=3)
    tr.fit(lit, loader(make_batches([8] * 3)))
    path = tmp_path / "m.ckpt"
    tr.save_checkpoint(path)
    back = LitVQA.load_from_checkpoint(path)
    assert type(back.model).__name__ == "FiLM" and back.hparams.optim["opt"] == "adamw"
    batches = make_batches([6, 4], seed=3)
    preds = trainer(tmp_path).predict(back, loader(batches))
    assert torch.equal(torch.cat([p["index"] for p in preds]), torch.arange(10))
    back.eval()
    with torch.no_grad():
        assert torch.equal(preds[0]["prediction"], lit.eval()(batches[0]).argmax(1))


@pytest.mark.parametrize("opt,cls,lr", [("adamax", torch.optim.Adamax, 0.002), ("adam", torch.optim.Adam, 0.001),
                                        ("adamw", torch.optim.AdamW, 0.001)])
def test_optimisers_keep_torch_defaults(opt, cls, lr):
    optimiser = LitVQA(**SMALL, optim={"opt": opt}).configure_optimizers()
    assert isinstance(optimiser, cls) and optimiser.defaults["lr"] == lr
    with pytest.raises(ValueError, match="unknown optimiser 'sgd'"):
        LitVQA(**SMALL, optim={"opt": "sgd"})


@pytest.mark.parametrize("opt,cls", [("adamax", torch.optim.Adamax), ("adamw", torch.optim.AdamW)])
def test_the_multi_tensor_optimiser_updates_as_the_plain_one(opt, cls):
    """configure_optimizers' foreach kernels: the same parameters as torch's per-parameter loop."""
    model = dict(SMALL["model"], attention_dropout=0.0, answer_dropout=0.0)   # no random masks
    lits = [LitVQA(**SIZES, model=model, optim={"opt": opt, "weight_decay": 0.01}) for _ in range(2)]
    lits[1].load_state_dict(lits[0].state_dict())
    start = {k: v.clone() for k, v in lits[0].state_dict().items()}
    ours = lits[0].configure_optimizers()
    assert ours.defaults["foreach"]
    optimisers = [ours, cls(lits[1].parameters(), lr=ours.defaults["lr"], weight_decay=0.01, foreach=False)]
    for batch in make_batches([8] * 20, seed=5):
        for lit, optimiser in zip(lits, optimisers):
            lit.loss_and_score(batch)[0].backward()
            optimiser.step()
            optimiser.zero_grad()
    for a, b in zip(lits[0].parameters(), lits[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert all(not torch.equal(start[k], v) for k, v in lits[0].named_parameters())


VALIDATE = """
import json, sys
import pytorch_lightning as pl
from butd.loading import VQADataModule
from butd.training.lit import LitVQA
ckpt, cache, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                     use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                     enable_model_summary=False)
[result] = trainer.validate(LitVQA.load_from_checkpoint(ckpt), datamodule=VQADataModule("gqa", cache, batch_size=16))
if trainer.is_global_zero:
    print("RESULT", json.dumps(result))
"""


def _validate(ckpt, cache, devices, script):
    """val_loss and val_acc of ``ckpt`` by ``devices`` processes (``strategy="ddp"`` re-runs the script
    in each, so it runs in a subprocess)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, str(script), ckpt, cache, str(devices)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def test_val_acc_with_two_processes_equals_one(small_run, tmp_path):
    root, _, ckpt = small_run
    cache = os.path.join(root, "GQA-Cache")
    (tmp_path / "validate.py").write_text(VALIDATE)
    one, two = (_validate(ckpt, cache, n, tmp_path / "validate.py") for n in (1, 2))
    # 35 questions: padding the ranks to 18 + 18 would count one twice, and 35 * acc is no integer
    # of a 36-question mean unless acc is 0 or 1
    assert 0 < one["val_acc"] < 1
    assert two["val_acc"] == one["val_acc"] and two["val_loss"] == pytest.approx(one["val_loss"], rel=1e-6)
    ranks = [ShardedBatchSampler(35, 16, shuffle=False, rank=r, world_size=2, even=False) for r in (0, 1)]
    seen = [i for s in ranks for b in s for i in b]
    assert sorted(seen) == list(range(35))                       # each question exactly once


def test_epoch_sums_are_float64_exact_under_bf16_autocast():
    """bf16-mixed runs the training step under autocast, whose matmuls take bf16: the fused update's
    float64 product must not be one of them."""
    from butd.training.lit import WeightedMeans
    metric = WeightedMeans()
    losses, scores, weights = torch.rand(32) * 5, torch.rand(32), (torch.rand(32) > 0.2).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        metric.update(losses, scores, weights)
    want = [float((x.double() * weights.double()).sum()) for x in (losses, scores, torch.ones(32))]
    assert metric.sums.tolist() == pytest.approx(want, rel=1e-12)
