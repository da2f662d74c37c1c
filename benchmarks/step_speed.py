"""Training-step throughput: the model's ceiling, the real loader feeding it, and train.py's own loop.

    python benchmarks/step_speed.py                                  # CPU: small model, about two minutes
    python benchmarks/step_speed.py --v_dim 16 --hidden 16 --emb_dim 16 --ntoken 100 --num_answers 50  # tiny: loop overhead
    python benchmarks/step_speed.py --device cuda --precision bf16,fp32 --bsz 64,128,256,512 \\
        --num_images 4000 --num_workers 2,4,8 --feature_cache none,pinned,gpu

For each precision and batch size it times the bare training step (``LitVQA.loss_and_score``: the
model's forward and the task's loss; then backward, gradient clipping and the optimiser of the
default ``OptimConfig`` (0.25, Adamax); nanoGPT's bench.py style):
  (a) ``resident``: one batch already on the device, repeated: the model's ceiling;
  (b) ``loader``: batches from the real ``VQADataModule`` train loader over a generated store
      (sample TSVs -> converter -> question shards), moved to the device as Lightning does, for
      each ``--num_workers`` x ``--feature_cache`` setting;
and reports steps/s, samples/s and loader efficiency = (b) / (a); with ``--compile`` (the model
``torch.compile``d with ``--compile_mode``, as ``train.py --compile`` does) also (a) uncompiled, and
``compiled_vs_eager_resident``. Then, at the first precision and
batch size, ``train.py``'s own loop against a bare one over the same loader:
  (c) ``trainer``: the LightningModule under the Trainer that ``train.py`` builds
      (``butd.training.run.make_trainer`` and ``run_callbacks``: its metrics logger, checkpoint
      callbacks, Ctrl-C handling, progress bar, clipping and precision), timed from inside by a callback;
  (d) ``lightning``: the same module under a Trainer with the same clipping and precision and
      none of train.py's callbacks, loggers, checkpoints or bar: what Lightning's own loop costs;
  (e) ``bare``: a plain PyTorch loop with the same model, batches, optimiser and clipping (its own
      copies of the model and the loader), run in turns with (c) or (d) inside the same fit: ``--loop_chunk`` steps of the
      Trainer, then as many bare steps, and so on (a shared machine's speed drifts by 10-20%
      between runs a few seconds apart; turns a fraction of a second apart see the same machine);
``--loop_rounds`` runs of (c) and of (d), alternating; loop efficiency = the median over the runs
of (e)'s time / (c)'s time for the same number of steps: the share of steps/s the Trainer keeps
(``lightning_alone_efficiency``: the same for (d)).
The model is the default ``ModelConfig`` with ``--model``, ``--hidden`` and ``--emb_dim``, sized as on
real GQA (``--ntoken``, ``--num_answers``; the sample's own vocabulary is small). Timing: warm-up
steps first, then ``torch.cuda.synchronize()`` around the timed steps. Prints a table, writes
``step_speed.png`` and ``step_speed.json`` under ``--out``, and ends with one JSON line.
"""
from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from butd import questions  # noqa: E402
from butd.cli import run  # noqa: E402
from butd.features.convert import convert_stores  # noqa: E402
from butd.loading import VQADataModule  # noqa: E402
from butd.synthetic.gqa import generate  # noqa: E402
from butd.tasks import get_task  # noqa: E402
from butd.training.config import ModelConfig  # noqa: E402
from butd.training.lit import LitVQA  # noqa: E402

from harness import RESULTS, Table, comma_list, parser, report, require_gpu, time_loop  # noqa: E402

TASK = "gqa"
LOOP_TARGET = 0.95   # train.py's loop keeps at least 95% of the bare loop's steps/s (issue 22: the tiny model)

# Full size on a GPU, small on a CPU (where the run is a smoke test of the code path).
SIZES = {"cuda": dict(v_dim=2048, hidden=1024, emb_dim=300, num_images=4000, bsz=[64, 128, 256, 512],
                      precision=["bf16", "fp32"], steps=50, warmup=10, num_workers=[2, 4, 8], loop_steps=400),
         # the real feature size with a small model: where per-step overhead shows most
         "cpu": dict(v_dim=2048, hidden=64, emb_dim=50, num_images=200, bsz=[32],
                     precision=["fp32"], steps=40, warmup=5, num_workers=[0, 1], loop_steps=200)}

# One row per measurement, printed as it is made and again, complete, at the end.
TABLE_COLUMNS = [("prec", "precision", ">5"), ("bsz", "batch_size", ">5"), ("mode", "mode", ">9"),
                 ("loader", lambda r: r.get("loader") or ("-" if r["mode"] == "resident" else
                                                         f"w={r['num_workers']} cache={r['feature_cache']}"), ">22"),
                 ("steps/s", "steps_per_s", "9.2f"), ("samples/s", "samples_per_s", "11.0f"),
                 ("eff %", lambda r: None if "efficiency" not in r else 100 * r["efficiency"], "7.1f")]
TABLE = Table(TABLE_COLUMNS)


def parse_args(argv=None):
    p = parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model runs: cpu, cuda or cuda:N")
    p.add_argument("--bsz", type=comma_list(int), help="batch sizes, comma-separated (default: 32 on the CPU, "
                   "64,128,256,512 on a GPU)")
    p.add_argument("--precision", type=comma_list(choices=("bf16", "fp32")),
                   help="precisions, comma-separated (default: fp32 on the CPU, bf16,fp32 on a GPU)")
    p.add_argument("--num_workers", type=comma_list(int), help="DataLoader worker counts, comma-separated "
                   "(default: 0,1 on the CPU, 2,4,8 on a GPU)")
    p.add_argument("--feature_cache", type=comma_list(choices=("none", "pinned", "gpu")), default="none",
                   help="feature caches, comma-separated (gpu needs a GPU)")
    p.add_argument("--num_images", type=int, help="images in the generated store (default: 200 on the CPU, 4000 on a GPU)")
    p.add_argument("--questions_per_image", type=int, default=10, help="questions per generated image")
    p.add_argument("--num_boxes", type=int, default=36, help="boxes per image")
    p.add_argument("--v_dim", type=int, help="feature size (default: 2048)")
    p.add_argument("--hidden", type=int, help="the model's hidden size (default: 64 on the CPU, 1024 on a GPU)")
    p.add_argument("--emb_dim", type=int, help="word embedding size (default: 50 on the CPU, 300 on a GPU)")
    p.add_argument("--ntoken", type=int, default=3000, help="model vocabulary (GQA: ~3000)")
    p.add_argument("--num_answers", type=int, default=1843, help="model answers (GQA: 1843)")
    p.add_argument("--model", default="butd", choices=["butd", "film"], help="the model")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (and time it uncompiled too)")
    p.add_argument("--compile_mode", default="default", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile's mode (reduce-overhead: CUDA graphs)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default: 40 on the CPU, 50 on a GPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 5 on the CPU, 10 on a GPU)")
    p.add_argument("--loop_rounds", type=int, default=3, help="runs of train.py's loop and of Lightning's alone, "
                   "each against the bare loop")
    p.add_argument("--loop_steps", type=int, help="timed steps of each loop in each run (default: 200 on the CPU, "
                   "400 on a GPU)")
    p.add_argument("--loop_chunk", type=int, default=20, help="steps of each loop in a turn: a run alternates "
                   "turns of the Trainer's steps and of the bare loop's")
    p.add_argument("--store_dir", help="reuse/keep the generated sample and caches here (default: a temp dir)")
    p.add_argument("--out", default=RESULTS, help="where the PNG and JSON go")
    args = p.parse_args(argv)
    gpu = args.device.startswith("cuda")
    for key, value in SIZES["cuda" if gpu else "cpu"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def build_caches(root: str, args) -> str:
    """Sample TSVs and questions -> feature stores and question shards (the real converters)."""
    cache = os.path.join(root, "GQA-Cache")
    if os.path.exists(os.path.join(cache, "questions", "manifest.json")):
        return cache
    start = time.perf_counter()
    paths = generate(root, seed=0, train_images=args.num_images, val_images=2, test_images=2, testdev_images=8,
                     questions_per_image=args.questions_per_image, feature_dim=args.v_dim,
                     num_boxes=args.num_boxes, emb_dim=args.emb_dim)
    print(f"[*] generated {args.num_images} images x {args.num_boxes} boxes x {args.v_dim} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    convert_stores(get_task(TASK), paths["features"], cache, progress=False)
    inputs = questions.Inputs(task=TASK, questions=paths["questions"], glove=paths["glove"], cache=cache,
                              emb_dim=args.emb_dim)
    questions.build(inputs, os.path.join(cache, "questions"), progress=False)
    print(f"[*] caches ready in {time.perf_counter() - start:.1f} s total", flush=True)
    return cache


def make_step(lit: LitVQA, device: torch.device, precision: str):
    """One bare training step (autocast, forward and loss, backward, clip, optimiser step)."""
    optimiser = lit.configure_optimizers()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(batch, i):
        with autocast:
            loss = lit.loss_and_score(batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lit.parameters(), lit.optim_config.gradient_clip)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)
    return step


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def timed(step, batches, warmup: int, steps: int, device) -> dict:
    """Steps/s over ``steps`` batches after ``warmup`` (batches: an iterator of host or device batches)."""
    r = time_loop(lambda i: step(to_device(next(batches), device), i), warmup=warmup, steps=steps,
                  sync=(lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None)
    return {"steps_per_s": r["steps_per_s"], "seconds": r["seconds"]}


def endless(loader):
    """Batches across epoch boundaries, setting the sampler's epoch as Lightning does."""
    for epoch in itertools.count():
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader


def build_lit(args, dm, device, compile_model: bool | None = None) -> LitVQA:
    """The LightningModule on ``device``, ``torch.compile``d with ``--compile`` (or ``compile_model``)."""
    torch.manual_seed(0)
    model = dataclasses.asdict(ModelConfig(model=args.model, emb_dim=args.emb_dim, hidden=args.hidden))
    lit = LitVQA(task=TASK, model=model, ntoken=max(args.ntoken, dm.ntoken),
                 num_answers=max(args.num_answers, dm.num_answers), v_dim=dm.v_dim).to(device).train()
    if args.compile if compile_model is None else compile_model:
        lit.model.compile(mode=args.compile_mode)
    return lit


def measure_one(args, cache: str, device, precision: str, bsz: int) -> list:
    results = []
    dm = VQADataModule(TASK, cache, batch_size=bsz, num_workers=0, seed=0)
    dm.setup("fit")
    lit = build_lit(args, dm, device)
    step = make_step(lit, device, precision)
    # a copy: the loader's batch is valid only until its next one (it reuses its buffers)
    one = to_device({k: v.clone() for k, v in next(iter(dm.train_dataloader())).items()}, device)
    base = timed(step, itertools.repeat(one), args.warmup, args.steps, device)
    resident = {"precision": precision, "batch_size": bsz, "mode": "resident", "num_workers": None,
                "feature_cache": None, **base, "samples_per_s": base["steps_per_s"] * bsz, "efficiency": 1.0}
    results.append(resident)
    TABLE.row(resident)
    if args.compile:   # the same step uncompiled: what compiling gained
        eager = timed(make_step(build_lit(args, dm, device, compile_model=False), device, precision),
                      itertools.repeat(one), args.warmup, args.steps, device)
        results.append({"precision": precision, "batch_size": bsz, "mode": "eager", "loader": "resident, not compiled",
                        **eager, "samples_per_s": eager["steps_per_s"] * bsz})
        TABLE.row(results[-1])
    for cache_mode, workers in itertools.product(args.feature_cache, args.num_workers):
        if cache_mode != "none" and workers != args.num_workers[0]:
            continue            # resident caches gather in the main process: workers do not apply
        dm = VQADataModule(TASK, cache, batch_size=bsz, num_workers=workers, feature_cache=cache_mode, seed=0)
        dm.setup("fit")
        start = time.perf_counter()
        loader_run = timed(step, endless(dm.train_dataloader()), args.warmup, args.steps, device)
        row = {"precision": precision, "batch_size": bsz, "mode": "loader", "num_workers": workers,
               "feature_cache": cache_mode, **loader_run, "samples_per_s": loader_run["steps_per_s"] * bsz,
               "efficiency": loader_run["steps_per_s"] / base["steps_per_s"],
               "wall_with_startup_s": time.perf_counter() - start}
        results.append(row)
        TABLE.row(row)
        del dm
    # The ceiling again, after the loader runs (clocks, caches, noise): efficiency is against the mean.
    again = timed(step, itertools.repeat(one), args.warmup, args.steps, device)
    TABLE.row({"precision": precision, "batch_size": bsz, "mode": "resident", "loader": "(again)", **again,
               "samples_per_s": again["steps_per_s"] * bsz})
    ceiling = (base["steps_per_s"] + again["steps_per_s"]) / 2
    resident.update(steps_per_s=ceiling, samples_per_s=ceiling * bsz, first_steps_per_s=base["steps_per_s"],
                    again_steps_per_s=again["steps_per_s"])
    for row in results[1:]:
        if row["mode"] == "loader":
            row["efficiency"] = row["steps_per_s"] / ceiling
    return results


class _Paired:
    """A callback that times a Trainer's training steps against a bare loop's, in turns of ``chunk``
    steps: after each ``chunk`` of the Trainer's steps (past ``warmup``) it runs ``chunk`` steps of
    ``bare_step`` over ``batches``, and a turn's Trainer time runs from the end of the bare steps
    before it to the end of its last step, so it holds all the Trainer does between steps (hooks,
    logging, checkpoints at an epoch's end). Turns a fraction of a second apart see the same machine:
    on a shared one, whose speed drifts by 10-20% between runs a few seconds apart, separate runs
    could not tell a few percent. The device is synchronised at each turn's ends only."""

    def __init__(self, bare_step, batches, warmup: int, steps: int, chunk: int, device: torch.device):
        import pytorch_lightning as pl

        paired = self
        self.trainer_seconds = self.bare_seconds = 0.0
        self.start = None

        def sync():
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        def bare_turn(n: int) -> float:
            start = time.perf_counter()
            for i in range(n):
                bare_step(to_device(next(batches), device), i)
            sync()
            return time.perf_counter() - start

        class Callback(pl.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                done = trainer.global_step - warmup
                if done == 0:
                    bare_turn(warmup)                        # the bare loop's warm-up
                    paired.start = time.perf_counter()
                elif 0 < done <= steps and done % chunk == 0:
                    sync()
                    paired.trainer_seconds += time.perf_counter() - paired.start
                    paired.bare_seconds += bare_turn(chunk)
                    paired.start = time.perf_counter()

        self.callback = Callback()


def measure_train_loop(args, cache: str, device, precision: str, bsz: int, workdir: str) -> list:
    """(c) train.py's Trainer loop and (d) Lightning's alone, each against (e) a bare loop over the
    same loader and model, in turns (``_Paired``)."""

    import pytorch_lightning as pl

    from butd.training.config import RunConfig, TrainConfig, resolved
    from butd.training.metrics_logger import MetricLogger
    from butd.training.run import make_trainer, run_callbacks

    config = resolved(TrainConfig(RunConfig(run_name="step_speed", log_every=50)))
    config.data.checkpoint = workdir
    config.optim.bsz, config.optim.max_steps = bsz, args.warmup + args.loop_steps
    config.hardware.accelerator, config.hardware.devices = device.type, 1
    config.hardware.precision = "bf16-mixed" if precision == "bf16" else "32-true"
    steps = args.loop_steps - args.loop_steps % args.loop_chunk
    rows = []

    def loader():
        dm = VQADataModule(TASK, cache, batch_size=bsz, num_workers=0, seed=0)
        dm.setup("fit")
        return dm

    def against_bare(mode: str, label: str, make_one) -> float:
        bare_dm = loader()
        bare = make_step(build_lit(args, bare_dm, device), device, precision)
        paired = _Paired(bare, endless(bare_dm.train_dataloader()), args.warmup, steps, args.loop_chunk, device)
        dm = loader()
        make_one(paired.callback).fit(build_lit(args, dm, torch.device("cpu")), datamodule=dm)
        for what, name, seconds in ((mode, label, paired.trainer_seconds),
                                    ("bare", f"bare loop, in turns with {mode}", paired.bare_seconds)):
            rows.append({"precision": precision, "batch_size": bsz, "mode": what, "loader": name,
                         "steps_per_s": steps / seconds, "seconds": seconds, "samples_per_s": steps / seconds * bsz})
        rows[-2]["efficiency"] = paired.bare_seconds / paired.trainer_seconds
        TABLE.row(rows[-2])
        TABLE.row(rows[-1])
        return rows[-2]["efficiency"]

    def train_py(callback):
        callbacks, _, _ = run_callbacks(config, os.path.join(workdir, "runs", "step_speed"))   # train.py's own
        return make_trainer(config, [MetricLogger("step_speed", workdir)], [*callbacks, callback],
                            limit_val_batches=0, max_epochs=-1)

    def lightning_alone(callback):
        # the Trainer with the same clipping and precision, and none of train.py's callbacks, loggers,
        # checkpoints or bar: what Lightning's own loop costs
        hw = config.hardware
        return pl.Trainer(accelerator=hw.accelerator, devices=1, precision=hw.precision, max_epochs=-1,
                          max_steps=config.optim.max_steps, limit_val_batches=0, callbacks=[callback],
                          gradient_clip_val=config.optim.gradient_clip, gradient_clip_algorithm="norm",
                          logger=False, enable_checkpointing=False, enable_progress_bar=False,
                          enable_model_summary=False, use_distributed_sampler=False)

    trainer, alone = [], []
    for _ in range(args.loop_rounds):
        trainer.append(against_bare("trainer", "train.py's Trainer", train_py))
        alone.append(against_bare("lightning", "Lightning alone", lightning_alone))
    next(r for r in rows if r["mode"] == "trainer").update(
        loop_efficiency=float(np.median(trainer)), lightning_efficiency=float(np.median(alone)))
    return rows


def measure(args, cache: str, device) -> list:
    results = []
    for precision, bsz in itertools.product(args.precision, args.bsz):
        try:
            results += measure_one(args, cache, device, precision, bsz)
        except Exception as e:          # e.g. out of memory at the largest batch: report, go on
            print(f"[!] {precision} bsz {bsz} failed: {type(e).__name__}: {e}", flush=True)
            results.append({"precision": precision, "batch_size": bsz, "mode": "error", "error": repr(e)})
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def summarise(results: list, args, device) -> dict:
    best = {}
    for r in results:
        if r["mode"] == "loader":
            key = f"{r['precision']}/{r['batch_size']}"
            if key not in best or r["efficiency"] > best[key]["efficiency"]:
                best[key] = r
    summary = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "model": args.model, "v_dim": args.v_dim, "hidden": args.hidden, "boxes": args.num_boxes,
               "images": args.num_images, "compile": args.compile and args.compile_mode,
               "best_loader": {k: {"efficiency": round(v["efficiency"], 4), "samples_per_s": round(v["samples_per_s"]),
                                   "num_workers": v["num_workers"], "feature_cache": v["feature_cache"]}
                               for k, v in best.items()},
               "resident_samples_per_s": {f"{r['precision']}/{r['batch_size']}": round(r["samples_per_s"])
                                          for r in results if r["mode"] == "resident"},
               "torch": torch.__version__}
    eager = {f"{r['precision']}/{r['batch_size']}": r["steps_per_s"] for r in results if r["mode"] == "eager"}
    if eager:
        summary["compiled_vs_eager_resident"] = {
            k: round(r["steps_per_s"] / eager[k], 3) for r in results if r["mode"] == "resident"
            for k in [f"{r['precision']}/{r['batch_size']}"] if k in eager}
    loop = [r for r in results if r["mode"] == "trainer"]
    if loop:
        def runs(mode, key="steps_per_s"):
            return [round(r[key], 4 if key == "efficiency" else 2) for r in results if r["mode"] == mode]
        summary["train_loop"] = {"efficiency": round(loop[0]["loop_efficiency"], 4),
                                 "lightning_alone_efficiency": round(loop[0]["lightning_efficiency"], 4),
                                 "efficiency_runs": runs("trainer", "efficiency"),
                                 "lightning_alone_efficiency_runs": runs("lightning", "efficiency"),
                                 "trainer_steps_per_s": runs("trainer"), "lightning_alone_steps_per_s": runs("lightning"),
                                 "bare_steps_per_s": runs("bare"),
                                 "batch_size": loop[0]["batch_size"], "precision": loop[0]["precision"],
                                 "target_met": loop[0]["loop_efficiency"] >= LOOP_TARGET}
    return report("step_speed", args.out, summary, results, columns=TABLE_COLUMNS,
                  table_rows=[r for r in results if r["mode"] != "error"], picture=picture)


def picture(summary: dict, runs: list, out: str) -> str:
    """What share of the bare loop's steps/s do train.py's loop and Lightning's alone keep, and what fraction of the
    model's ceiling (one batch resident) does each loader setting keep?"""
    from butd.evaluation.plots import bar_chart
    panels = []
    loop = summary.get("train_loop")
    if loop:
        def runs_of(xs):
            return ", ".join(f"{x:.3f}" for x in xs)
        panels.append((f"Share of a bare PyTorch loop's steps/s kept (same model, loader, optimiser, clipping; "
                       f"batch {loop['batch_size']}, {loop['precision']}; in turns with it): medians of "
                       f"{len(loop['efficiency_runs'])} runs", "share of the bare loop's steps/s", [
                           {"label": "Lightning alone (no callbacks, loggers, checkpoints)",
                            "value": loop["lightning_alone_efficiency"], "bound": 1.0, "group": "lightning",
                            "note": f"{loop['lightning_alone_efficiency']:.3f}; runs: "
                                    f"{runs_of(loop['lightning_alone_efficiency_runs'])}"},
                           {"label": "train.py's Trainer", "value": loop["efficiency"], "bound": 1.0, "group": "trainer",
                            "note": f"{loop['efficiency']:.3f} (target {LOOP_TARGET}); runs: "
                                    f"{runs_of(loop['efficiency_runs'])}"}]))
    ceilings = {(r["precision"], r["batch_size"]): r["samples_per_s"] for r in runs if r["mode"] == "resident"}
    bars = []
    for (precision, bsz), ceiling in ceilings.items():
        bars.append({"label": f"{precision}, batch {bsz}: one batch resident", "value": ceiling, "group": "resident",
                     "note": "the model's ceiling"})
        bars += [{"label": f"{precision}, batch {bsz}: loader, {r['num_workers']} worker(s), cache {r['feature_cache']}",
                  "value": r["samples_per_s"], "bound": ceiling, "group": "loader",
                  "note": f"{r['efficiency']:.2f} of the ceiling"}
                 for r in runs if r["mode"] == "loader" and (r["precision"], r["batch_size"]) == (precision, bsz)]
    if bars:
        panels.append(("Training samples/s fed by the real loader; grey: the same step on one resident batch",
                       "samples/s", bars))
    return bar_chart(panels, out, title=f"step_speed on {summary.get('device')}: {summary.get('model')}, "
                     f"hidden {summary.get('hidden')}, {summary.get('v_dim')}-d features")


def main(argv=None) -> dict:
    args = parse_args(argv)
    require_gpu(args.device.startswith("cuda") or "gpu" in args.feature_cache, "--device cuda / --feature_cache gpu")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")      # as train.py
        torch.backends.cudnn.benchmark = True           # as train.py's Trainer(benchmark=True)
    # training_step's self.log() has no Trainer to log to here; that is expected.
    warnings.filterwarnings("ignore", message=".*self.log.*")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.store_dir or tmp
        cache = build_caches(root, args)
        print(f"[*] {args.model} v_dim={args.v_dim} hidden={args.hidden} boxes={args.num_boxes} "
              f"on {device}; {args.steps} timed steps after {args.warmup} warm-up", flush=True)
        TABLE.header()
        results = measure(args, cache, device)
        precision, bsz = args.precision[0], args.bsz[0]
        results += measure_train_loop(args, cache, device, precision, bsz, os.path.join(root, "loop"))
    return summarise(results, args, device)


if __name__ == "__main__":
    sys.exit(run(main))
