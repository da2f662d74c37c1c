"""Checkpoints are loaded without running code: a checkpoint whose pickle names ``os.system`` is
refused, in one line naming it, by evaluate.py and by train.py --resume (the command it names never
runs), while a checkpoint train.py wrote still evaluates and resumes."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from butd import cli  # noqa: E402
from butd.synthetic.gqa import generate  # noqa: E402
from butd.training.lit import read_checkpoint  # noqa: E402

import evaluate  # noqa: E402  (evaluate.py and train.py live at the repository root)
import train  # noqa: E402

EMB = 32
FAST = ["--hidden", "32", "--bsz", "16", "--emb_dim", str(EMB), "--accelerator", "cpu", "--log_every", "1"]


class RunsCommand:
    """Pickled, names ``os.system``: loading it with plain pickle runs ``command``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):
    """Two steps of training on a small sample: the run directory and its last.ckpt."""
    root = tmp_path_factory.mktemp("ckpt_sample")
    paths = generate(str(root), seed=3, train_images=19, val_images=2, test_images=3, testdev_images=7,
                     questions_per_image=5, feature_dim=32, emb_dim=EMB)
    data = ["--data", str(root), "--glove", paths["glove"]]
    ckpt = tmp_path_factory.mktemp("ckpt")
    train.main(["--run_name", "safe", *data, "--checkpoint", str(ckpt), *FAST, "--epochs", "1", "--max_steps", "2"])
    [run_dir] = os.listdir(ckpt / "runs")
    return ckpt / "runs" / run_dir


def test_what_train_py_writes_loads_as_weights_only(run):
    checkpoint = read_checkpoint(str(run / "last.ckpt"))
    assert checkpoint["global_step"] == 2 and isinstance(checkpoint["rng_states"]["cpu"], torch.Tensor)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(run / "last.ckpt")) == []


def test_a_checkpoint_that_names_code_is_refused_by_evaluate_and_resume_and_runs_nothing(run, tmp_path, capsys):
    marker = tmp_path / "ran"
    checkpoint = torch.load(run / "last.ckpt", weights_only=False)     # ours: trusted
    checkpoint["hyper_parameters"]["model"]["note"] = RunsCommand(f"touch {marker}")
    evil = run / "shared.ckpt"        # beside the run's config.json, where a shared checkpoint would go
    torch.save(checkpoint, evil)
    torch.load(evil, weights_only=False)                                # plain torch.load runs it ...
    assert marker.exists()
    marker.unlink()
    for main, argv in ((evaluate.main, ["--checkpoint", str(evil), "--out", str(tmp_path / "p.json")]),
                       (train.main, ["--resume", str(evil)])):
        capsys.readouterr()
        status = cli.run(main, argv)
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert status == 1 and "Traceback" not in err and lines[-1].startswith("error: "), err
        assert f"{evil}: refused: its pickle names posix.system" in lines[-1]
        assert not marker.exists()                                       # ... these never do
    assert not os.path.exists(tmp_path / "p.json")


def test_a_clean_checkpoint_still_evaluates_and_resumes(run, tmp_path):
    scores = evaluate.main(["--checkpoint", str(run / "last.ckpt"), "--out", str(tmp_path / "p.json")])
    assert scores["overall"]["count"] == 35 and os.path.exists(tmp_path / "p.json")
    trainer, _ = train.main(["--resume", str(run / "last.ckpt"), "--max_steps", "4"])
    assert trainer.global_step == 4


def test_lightnings_own_loads_are_weights_only_too(run, tmp_path, monkeypatch):
    """Past our check (made a no-op here), Lightning's load_from_checkpoint (evaluate.py) and
    Trainer.fit(ckpt_path=...) (--resume) refuse the checkpoint themselves, running nothing: they
    are asked for weights_only=True, which holds even where the environment tells torch to default
    to unsafe loads."""
    import pickle

    from butd.evaluation import predict
    from butd.training import lit
    marker = tmp_path / "ran"
    checkpoint = torch.load(run / "last.ckpt", weights_only=False)
    checkpoint["hyper_parameters"]["model"]["note"] = RunsCommand(f"touch {marker}")
    evil = run / "unchecked.ckpt"
    torch.save(checkpoint, evil)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")   # overrides torch's default, not a call's choice
    monkeypatch.setattr(predict, "read_checkpoint", lambda path: {})
    monkeypatch.setattr(lit, "read_checkpoint", lambda path: {"hyper_parameters": {}})
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        evaluate.main(["--checkpoint", str(evil), "--out", str(tmp_path / "p.json")])
    with pytest.raises(pickle.UnpicklingError, match="posix.system"):
        train.main(["--resume", str(evil)])
    assert not marker.exists()
