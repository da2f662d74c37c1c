"""What every command does with its user's errors and its output (butd.cli): one line naming the
error, exit status 1, a quiet end on a closed pipe."""
import os
import subprocess
import sys

import pytest
import torch

from butd.evaluation import plots

import evaluate
import questions_to_shards
import train
from helpers import cli_run, one_line_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_closed_pipe_ends_the_command_quietly():
    program = "import sys; from butd.cli import run; sys.exit(run(lambda argv: [print(i) for i in range(10**6)]))"
    proc = subprocess.Popen([sys.executable, "-c", program], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "0\n"
    proc.stdout.close()                      # as `| head -1` does
    err = proc.stderr.read()
    assert proc.wait() == 141 and err == ""


def test_user_errors_are_one_line_from_every_command(tmp_path, capsys):
    status, err = cli_run(evaluate.main, ["--checkpoint", str(tmp_path / "none.ckpt")], capsys)
    assert status == 1 and "none.ckpt: no such checkpoint" in one_line_error(err)
    status, err = cli_run(train.main, ["--run_name", "x", "--data", str(tmp_path), "--accelerator", "cpu"], capsys)
    assert status == 1 and "vg_gqa_obj36.tsv: features TSV not found" in one_line_error(err)
    status, err = cli_run(questions_to_shards.main, ["--data", str(tmp_path)], capsys)
    assert status == 1 and "not found" in one_line_error(err)
    status, err = cli_run(plots.main, [str(tmp_path / "none-metrics.json")], capsys)
    assert status == 1 and "none-metrics.json" in one_line_error(err)


def test_help_pages_import_no_torch():
    from helpers import imports_torch
    for script in ("train.py", "evaluate.py", os.path.join("converters", "questions_to_shards.py")):
        assert not imports_torch(os.path.join(ROOT, script), ["--help"]), script


def run_cli(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_flags_take_either_spelling_and_choices_any_case():
    from butd.training.config import parse_config
    c = parse_config(["--run_name", "x", "--dataset", "GQA", "--feature-cache", "pinned", "--rnn", "lstm",
                      "--answer-dropout=0.3", "--no_weight_norm"])
    assert (c.data.dataset, c.data.feature_cache, c.model.rnn, c.model.answer_dropout, c.model.weight_norm) == \
        ("gqa", "pinned", "LSTM", 0.3, False)


def test_a_mistyped_flag_or_value_is_one_line_with_the_nearest_suggested():
    for args, expected in ((["train.py", "--run_name", "x", "--dataset", "vqa"], "did you mean vqa2?"),
                           (["train.py", "--run_name", "x", "--hiden", "64"], "did you mean --hidden?"),
                           (["train.py", "--run_name", "x", "--hidden", "many"], "--hidden: 'many' is not an integer"),
                           (["train.py", "--run_name", "x", "--seed", "many"], "--seed: expected int"),
                           (["evaluate.py", "--split", "val"], "required: --checkpoint"),
                           (["-m", "butd.demo", "--dataset", "vqa"], "is not one of vqa2, gqa, nlvr2"),
                           ([os.path.join("converters", "questions_to_shards.py"), "--glov", "g"],
                            "did you mean --glove?"),
                           # the converters' numbers have bounds too (0 workers ran on every core, -3 on one)
                           ([os.path.join("converters", "tsv_to_zarr.py"), "x.tsv", "--out", "x.zarr", "--workers", "0"],
                            "--workers: '0' is not an integer >= 1"),
                           ([os.path.join("converters", "tsv_to_zarr.py"), "--chunk_images", "0"],
                            "--chunk_images: '0' is not an integer >= 1"),
                           ([os.path.join("converters", "questions_to_shards.py"), "--min_answer_count", "0"],
                            "--min_answer_count: '0' is not an integer >= 1")):
        done = run_cli(*args)
        assert done.returncode == 2 and done.stderr.count("\n") == 1, (args, done.stderr)
        assert expected in done.stderr and "usage:" not in done.stderr, (args, done.stderr)


@pytest.mark.parametrize("flag, value, expected", [
    ("--bsz", "0", "is not an integer >= 1"), ("--num_workers", "-1", "is not an integer >= 0"),
    ("--epochs", "-3", "is not an integer >= 1"), ("--max_steps", "0", "is not -1 or an integer >= 1"),
    ("--lr", "0", "is not a number > 0"), ("--answer_dropout", "1.5", "is not a number from 0 to 1"),
    ("--gpus", "-2", "is not -1 or an integer >= 0"), ("--bsz", "2.5", "is not an integer >= 1"),
    ("--precision", "17", "is not one of "), ("--strategy", "dpp", "(did you mean ddp?)"),
    ("--accelerator", "tpuu", "(did you mean tpu?)")])
def test_a_value_out_of_bounds_or_unknown_to_lightning_is_a_usage_error(capsys, flag, value, expected):
    """Refused when the flags are parsed (exit 2, one line), not after the caches are prepared."""
    from butd.training.config import parse_config
    with pytest.raises(SystemExit) as e:
        parse_config(["--run_name", "x", flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and f"argument {flag}: '{value}' " in err and expected in err


def test_values_within_bounds_and_lightnings_names_in_any_case_parse(tmp_path):
    from butd.training.config import parse_config, save_config
    c = parse_config(["--run_name", "x", "--max_steps", "-1", "--gpus", "-1", "--accelerator", "GPU",
                      "--strategy", "DDP", "--precision", "bf16-mixed", "--answer_dropout", "1", "--lr", "1e-3"])
    assert (c.optim.max_steps, c.hardware.gpus, c.hardware.accelerator, c.hardware.strategy,
            c.hardware.precision, c.model.answer_dropout, c.optim.lr) == (-1, -1, "gpu", "ddp", "bf16-mixed", 1.0, 1e-3)
    # a saved configuration, whose unset options are null, reads back the same
    saved = save_config(str(tmp_path), parse_config(["--run_name", "x", "--accelerator", "cpu"]))
    again, given = parse_config(["--config", saved]), parse_config(["--run_name", "x", "--accelerator", "cpu"])
    assert (again.model, again.optim, again.hardware, again.data.min_answer_count) == \
        (given.model, given.optim, given.hardware, None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: nothing to refuse")
def test_a_gpu_asked_of_evaluate_on_a_machine_without_one_is_one_line():
    done = run_cli("evaluate.py", "--checkpoint", "run.ckpt", "--accelerator", "gpu")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "no GPU is visible" in done.stderr and "--accelerator cpu" in done.stderr


def test_data_or_dataset_after_a_saved_config_moves_the_paths_it_implied(tmp_path):
    """A saved run's config.json holds resolved paths: those its --data implied follow a later --data
    (or --dataset); one it set itself, or the command line sets, stays."""
    from butd.training.config import parse_config, save_config
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    saved = save_config(str(tmp_path), parse_config(["--run_name", "x", "--data", a, "--gqa_cache", "/mine/cache"]))
    moved = parse_config(["--config", saved, "--data", b]).data
    assert (moved.data, moved.questions, moved.features, moved.glove, moved.cache) == \
        (b, os.path.join(b, "GQA-Questions"), os.path.join(b, "GQA-Features"),
         os.path.join(b, "GloVe", "glove.6B.300d.txt"), "/mine/cache")
    assert parse_config(["--config", saved, "--data", b, "--questions", "/q"]).data.questions == "/q"
    # a path given again as the file has it stays too
    assert parse_config(["--config", saved, "--data", b, "--gqa-questions", os.path.join(a, "GQA-Questions")]
                        ).data.questions == os.path.join(a, "GQA-Questions")
    other = parse_config(["--config", saved, "--dataset", "vqa2"]).data
    assert (other.questions, other.cache) == (os.path.join(a, "VQA2-Questions"), os.path.join(a, "VQA2-Cache"))
    kept = parse_config(["--config", saved, "--run_name", "again"]).data
    assert (kept.questions, kept.cache) == (os.path.join(a, "GQA-Questions"), "/mine/cache")
