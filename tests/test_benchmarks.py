"""The benchmarks' command lines (one vocabulary of flags, GPU requests refused in one line) and their
pictures (drawn from a results dict, without running a benchmark)."""
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

# each benchmark and flags its --help must show (train.py's names: --bsz, --num_workers, --out)
FLAGS = {
    "loader_speed.py": ["--bsz", "--num_workers", "--epochs", "--compressors", "--out"],
    "step_speed.py": ["--bsz", "--num_workers", "--feature_cache", "--device", "--out"],
    "convert_speed.py": ["--size_mb", "--layouts", "--max_workers", "--results"],
    "questions_speed.py": ["--num_questions", "--num_images", "--out"],
    "gqa_eval_memory.py": ["--num_questions", "--keep", "--out"],
    "larger_than_ram.py": ["--bsz", "--cache_fraction", "--io_threads", "--out"],
}
OLD = ["--batch-size", "--batch_size", "--batch_sizes", "--workers "]


def command(script, *args):
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_shows_the_shared_flags_with_a_help_line_each(script):
    done = command(script, "--help")
    assert done.returncode == 0, done.stderr
    for flag in FLAGS[script]:
        assert flag in done.stdout
    for old in OLD:
        assert old not in done.stdout
    # the short description before the options, not the whole docstring
    assert done.stdout.index("options:") < 1500
    options = done.stdout[done.stdout.index("options:"):]
    lines = [line.strip() for line in options.splitlines()[1:] if line.strip()]
    flags = [line for line in lines if line.startswith("--")]
    # every flag has a help text: on its own line, or the line after it
    for line in flags:
        i = lines.index(line)
        assert len(line.split()) > 1 or (i + 1 < len(lines) and not lines[i + 1].startswith("-")), line


def test_dash_and_underscore_and_comma_lists():
    import step_speed
    a = step_speed.parse_args(["--num-workers", "0,2", "--bsz", "8,16", "--feature-cache", "none,PINNED",
                               "--device", "cpu"])
    assert a.num_workers == [0, 2] and a.bsz == [8, 16] and a.feature_cache == ["none", "pinned"]
    b = step_speed.parse_args(["--num_workers", "1", "--device", "cpu"])
    assert b.num_workers == [1] and b.bsz == [32]     # the CPU default


def test_old_flag_is_a_one_line_usage_error():
    done = command("loader_speed.py", "--batch-size", "64")
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and "unrecognized" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
@pytest.mark.parametrize("args", [["--device", "cuda"], ["--feature_cache", "none,gpu"]])
def test_gpu_asked_for_without_one_is_one_line(args):
    done = command("step_speed.py", *args, "--store_dir", "/nonexistent/never/made")
    assert done.returncode == 1
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "GPU" in err[0] and "Traceback" not in done.stderr


def png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_loader_speed_picture(tmp_path):
    import loader_speed

    def run(method, workers=0, store="store", temp="warm", rate=50_000.0, **kw):
        return {"method": method, "workers": workers, "store": store, "temp": temp, "samples_per_s": rate, **kw}
    runs = [run("loader", 0, bound=60_000.0), run("loader", 2, rate=45_000.0, bound=58_000.0),
            run("loader", 0, "quarter", bound=60_000.0), run("gather", bound=60_000.0),
            run("pairs", rate=22_000.0), run("pinned", bound=61_000.0), run("spec", 2, rate=4_000.0),
            run("datamodule", 0, epoch_samples_per_s=[40_000, 60_000]),
            run("datamodule", 2, rate=42_000.0, epoch_samples_per_s=[20_000, 60_000]),
            run("decode", 2, "zstd", rate=6_000.0), run("loader", 0, "zstd", rate=5_500.0, bound=60_000.0),
            run("pinned", 0, "zstd", rate=49_000.0), run("gather", temp="cold", rate=20_000.0, bound=12_000.0),
            run("loader", 2, temp="cold", rate=15_000.0, bound=12_000.0)]
    summary = {"two_image_vs_one_image": 0.88, "datamodule_epochs": 2, "batch_size": 256, "store_gb": 1.2,
               "targets_met": {"thread_vs_copy>=0.8": True, "datamodule_workers_vs_thread>=0.8": False}}
    assert png(loader_speed.picture(summary, runs, str(tmp_path / "loader_speed.png")))


def test_step_speed_picture(tmp_path):
    import step_speed
    runs = [{"mode": "resident", "precision": "fp32", "batch_size": 32, "samples_per_s": 2000.0},
            {"mode": "loader", "precision": "fp32", "batch_size": 32, "samples_per_s": 1900.0, "num_workers": 0,
             "feature_cache": "none", "efficiency": 0.95}]
    summary = {"device": "cpu", "model": "butd", "hidden": 16, "v_dim": 16,
               "train_loop": {"efficiency": 0.9, "lightning_alone_efficiency": 0.93, "efficiency_runs": [0.9, 0.91],
                              "lightning_alone_efficiency_runs": [0.93, 0.94], "batch_size": 32, "precision": "fp32"}}
    assert png(step_speed.picture(summary, runs, str(tmp_path / "step_speed.png")))


def test_step_speed_times_the_trainer_and_the_bare_loop_in_turns():
    """After the warm-up, each turn of the Trainer's steps is followed by as many bare steps, timed
    apart: the bare loop's time is its own, the Trainer's holds what it does between its steps."""
    import time
    from types import SimpleNamespace

    import step_speed
    bare_steps = []

    def bare_step(batch, i):
        bare_steps.append(batch["x"].item())
        time.sleep(0.005)

    batches = ({"x": torch.tensor(float(i))} for i in range(1000))
    paired = step_speed._Paired(bare_step, batches, warmup=3, steps=8, chunk=4, device=torch.device("cpu"))
    for step in range(1, 3 + 10 + 1):                         # the Trainer runs on past the timed steps
        time.sleep(0.001)
        paired.callback.on_train_batch_end(SimpleNamespace(global_step=step), None, None, None, step)
    assert len(bare_steps) == 3 + 8                          # warm-up, then two turns of 4
    assert 8 * 0.005 <= paired.bare_seconds < 1.0
    assert 8 * 0.001 <= paired.trainer_seconds < paired.bare_seconds


def test_convert_speed_picture(tmp_path):
    import convert_speed
    summary = {"cores": 2, "tsv": {"baseline_mb_s": 10.0, "converter_mb_s": {1: 60.0, 2: 100.0},
                                   "speedup": {1: 6.0, 2: 10.0}, "compute_bound_mb_s": 140.0,
                                   "share_of_compute_bound": 0.7},
               "hdf5": {"baseline_mb_s": 80.0, "converter_mb_s": 300.0, "bound_mb_s": 400.0, "of_bound": 0.75,
                        "x_baseline": 3.75}}
    assert png(convert_speed.picture(summary, [], str(tmp_path / "convert_speed.png")))


def test_questions_speed_picture(tmp_path):
    import questions_speed
    summary = {"questions": 1000, "train_questions": 900, "json_mb": 1.0, "build_s": 2.0, "load_s": 0.01,
               "spec_load_s": 1.0, "load_speedup": 100.0, "phase_s": {"read": 1.0, "tokenize": 0.5, "shards": 0.5}}
    assert png(questions_speed.picture(summary, [], str(tmp_path / "questions_speed.png")))


def test_larger_than_ram_picture(tmp_path):
    import larger_than_ram
    summary = {"samples_per_s": {"pread": 9000, "auto": 13000, "map": 1200, "zstd": 6000}, "zstd_vs_auto": 0.46,
               "zstd_auto_cache": "none", "read_gb": 1.2, "limit_gb": 1.0, "cache_fraction": 0.5,
               "targets_met": {"auto_vs_pread>=0.8": True, "zstd_vs_auto>=0.5": False}}
    assert png(larger_than_ram.picture(summary, [], str(tmp_path / "larger_than_ram.png")))
