"""The one configuration of a training run: dataclasses from which the command-line flags, the run's
saved ``config.json``, the LightningModule's hyper-parameters and the benchmarks all derive.

    config = parse_config(["--run_name", "GQA", "--hidden", "512"])     # or --config run.yaml
    config.model.hidden, config.optim.bsz, config.data.dataset

Flags are the specification's names (``--bsz``, ``--hidden``, ``--gqa_questions``, ...), flat, parsed
by jsonargparse from the field types and the docstrings below. ``--config FILE`` (YAML or JSON,
the same flat keys) sets any of them; flags after it override it. A bare boolean flag turns it on
(``--bidirectional``), ``--no_<flag>`` (or ``--no-<flag>``) turns it off, and ``--flag true|false``
works too. ``resolved(config)`` fills in what depends on other fields (paths under ``--data``,
``--devices`` from ``--gpus``); a run saves that, and starting from the saved file gives it back.

Adding a model option is one field in ``ModelConfig`` and the keyword of the same name in the
model's constructor (``butd.models.base.VQAModel``): its flag, its place in the saved
configuration and in the checkpoint's hyper-parameters follow from the field.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from butd.tasks import TASK_NAMES, get_task

CONFIG_FILE = "config.json"
PATH_KINDS = ("questions", "features", "cache")   # each task's --<task>_<kind> directory


@dataclass
class RunConfig:
    """Run"""
    run_name: str
    """run name, for informative logging"""
    fast_dev_run: int = 0
    """run N train/val batches only, as a smoke test (no checkpoints or metrics); bare: 1"""
    resume: Optional[str] = None
    """continue the run this checkpoint (e.g. <run>/last.ckpt) belongs to"""
    log_every: int = 50
    """log train_loss/train_acc every N steps"""
    logger: Optional[Literal["csv", "tensorboard"]] = None
    """a Lightning logger besides the specification's metrics JSON, under <checkpoint>/logs/<run>"""


@dataclass
class DataConfig:
    """Data (the specification's paths; the dataset ones default under --data)"""
    dataset: Literal[TASK_NAMES] = "gqa"
    """dataset to train on"""
    data: str = "data/"
    """where downloaded data is located"""
    checkpoint: str = "checkpoints/"
    """where checkpoints and metrics go"""
    gqa_questions: Optional[str] = None
    """GQA question JSONs (default <data>/GQA-Questions)"""
    gqa_features: Optional[str] = None
    """GQA feature TSVs (default <data>/GQA-Features)"""
    gqa_cache: Optional[str] = None
    """GQA feature stores and question cache (default <data>/GQA-Cache)"""
    vqa2_questions: Optional[str] = None
    """VQA v2 question and annotation JSONs (default <data>/VQA2-Questions)"""
    vqa2_features: Optional[str] = None
    """VQA v2 feature TSVs (default <data>/VQA2-Features)"""
    vqa2_cache: Optional[str] = None
    """VQA v2 feature stores and question cache (default <data>/VQA2-Cache)"""
    nlvr2_questions: Optional[str] = None
    """NLVR2 statement files, JSON lines (default <data>/NLVR2-Questions)"""
    nlvr2_features: Optional[str] = None
    """NLVR2 feature TSVs (default <data>/NLVR2-Features)"""
    nlvr2_cache: Optional[str] = None
    """NLVR2 feature stores and question cache (default <data>/NLVR2-Cache)"""
    glove: Optional[str] = None
    """GloVe 300-d vectors, .txt or .txt.gz (default <data>/GloVe/glove.6B.300d.txt, or .txt.gz if only that is there)"""
    drop_missing: bool = False
    """build the question cache without the questions whose image has no feature row"""
    num_workers: int = 0
    """0: batches gathered by a background thread of each rank (fastest measured); N: N worker processes"""
    feature_cache: Literal["auto", "none", "pinned", "gpu"] = "auto"
    """none: read the feature stores batch by batch from their files; pinned/gpu: keep them whole in (pinned)
    host memory / on the GPU, a copy per process; auto: pinned for a compressed train or validation store whose
    decoded copies (one per process of the machine) fit in half the available memory, else none"""

    def paths(self) -> dict:
        """The dataset's ``questions``, ``features`` and ``cache`` directories and the ``glove`` file,
        defaults resolved under ``data``."""
        task = get_task(self.dataset)
        paths = {kind: getattr(self, f"{task.name}_{kind}", None)
                 or os.path.join(self.data, getattr(task, f"{kind}_dir"))
                 for kind in PATH_KINDS}
        default = os.path.join(self.data, "GloVe", "glove.6B.300d.txt")
        if not self.glove and not os.path.exists(default) and os.path.exists(default + ".gz"):
            default += ".gz"
        paths["glove"] = self.glove or default
        return paths


@dataclass
class ModelConfig:
    """Model"""
    model: Literal["butd", "film"] = "butd"
    """model architecture"""
    emb_dim: int = 300
    """word embedding size (must match GloVe)"""
    emb_dropout: float = 0.0
    """dropout on the word embeddings"""
    rnn: Literal["GRU", "LSTM"] = "GRU"
    """question encoder"""
    rnn_layers: int = 1
    """stacked RNN layers"""
    bidirectional: bool = False
    """bidirectional question encoder"""
    q_dropout: float = 0.0
    """dropout between RNN layers"""
    attention_dropout: float = 0.2
    """dropout in the attention (BUTD)"""
    answer_dropout: float = 0.5
    """dropout in the answer classifier"""
    hidden: int = 1024
    """hidden size of the question encoder, projections and classifier"""
    weight_norm: bool = True
    """weight-normalised linear layers (--no_weight_norm: plain ones)"""
    freeze_embeddings: bool = False
    """keep the GloVe word embeddings fixed during training"""

    def model_kwargs(self) -> dict:
        """The model constructor's keywords (all but the architecture's name)."""
        kwargs = dataclasses.asdict(self)
        kwargs.pop("model")
        return kwargs


@dataclass
class OptimConfig:
    """Optimisation"""
    bsz: int = 256
    """batch size per process (global = bsz x processes)"""
    epochs: int = 15
    """training epochs"""
    max_steps: int = -1
    """stop after this many steps (-1: epochs decide)"""
    opt: Literal["adamax", "adam", "adamw"] = "adamax"
    """optimiser"""
    lr: Optional[float] = None
    """learning rate (default: the optimiser's own; Adamax: 0.002)"""
    weight_decay: Optional[float] = None
    """weight decay (default: the optimiser's own)"""
    gradient_clip: float = 0.25
    """max gradient norm"""
    seed: int = 7
    """random seed"""


@dataclass
class HardwareConfig:
    """Hardware"""
    gpus: int = 0
    """N > 0: train on N GPUs, -1: on all (the specification's flag)"""
    accelerator: str = "auto"
    """cpu, gpu, auto, ..."""
    devices: Optional[Union[int, str]] = None
    """devices per node (default: --gpus, or 1)"""
    num_nodes: int = 1
    """nodes"""
    strategy: str = "auto"
    """e.g. ddp"""
    precision: str = "32-true"
    """e.g. bf16-mixed (fastest on recent GPUs)"""
    compile: bool = False
    """torch.compile the model"""
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    """torch.compile mode with --compile: reduce-overhead replays CUDA graphs (fewer kernel launches)"""


@dataclass
class TrainConfig:
    run: RunConfig
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)

    def flat(self) -> dict:
        """Every field under its flag name: what ``config.json`` holds and ``--config`` reads."""
        return {k: v for group in GROUPS for k, v in dataclasses.asdict(getattr(self, group)).items()}

    @classmethod
    def from_flat(cls, values: dict) -> "TrainConfig":
        return cls(**{group: GROUPS[group](**{f.name: values[f.name] for f in dataclasses.fields(GROUPS[group])
                                              if f.name in values})
                      for group in GROUPS})


GROUPS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
          "hardware": HardwareConfig}


def resolved(config: TrainConfig) -> TrainConfig:
    """The configuration with the values that follow from others filled in: the dataset's paths
    under ``--data`` and ``--devices``/``--accelerator`` from ``--gpus``. Idempotent."""
    data = dataclasses.replace(config.data)
    task = get_task(data.dataset)
    paths = data.paths()
    for kind in PATH_KINDS:
        setattr(data, f"{task.name}_{kind}", paths[kind])
    data.glove = paths["glove"]
    hw = dataclasses.replace(config.hardware)
    if hw.gpus != 0:
        hw.accelerator = "gpu" if hw.accelerator == "auto" else hw.accelerator
        hw.devices = hw.devices or hw.gpus
    hw.devices = hw.devices or 1
    if isinstance(hw.devices, str) and hw.devices.lstrip("-").isdigit():
        hw.devices = int(hw.devices)
    return dataclasses.replace(config, data=data, hardware=hw)


def make_parser(description: str = "Train BUTD/FiLM."):
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    # no abbreviations: --resum would parse as --resume, yet parse_config reads --resume from argv itself
    parser = ArgumentParser(description=description, default_env=False, exit_on_error=True, allow_abbrev=False)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML or JSON file of flags (e.g. a run's saved config.json); later flags override it")
    for group in GROUPS.values():
        parser.add_class_arguments(group, nested_key=None)
    return parser


_BARE = {"fast_dev_run": "1"}


def _expand_bare_flags(argv: list) -> list:
    """``--flag`` -> ``--flag=true`` for booleans (``=1`` for --fast_dev_run), ``--no_flag`` ->
    ``--flag=false``: the specification's flag style on jsonargparse, which wants a value."""
    bools = {f.name for group in GROUPS.values() for f in dataclasses.fields(group) if f.type in ("bool", bool)}
    out = []
    for i, arg in enumerate(argv):
        name = arg[2:].replace("-", "_") if arg.startswith("--") and "=" not in arg else None
        following = argv[i + 1] if i + 1 < len(argv) else "--"
        has_value = not following.startswith("--")
        if name in bools and not has_value:
            arg = f"--{name}=true"
        elif name in _BARE and not has_value:
            arg = f"--{name}={_BARE[name]}"
        elif name and name.startswith("no_") and name[3:] in bools:
            arg = f"--{name[3:]}=false"
        out.append(arg)
    return out


def _last_value(argv: list, flag: str) -> Optional[str]:
    """The value the command line gives ``flag`` last (``--flag V`` or ``--flag=V``), or None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1:]
    return value


def parse_config(argv=None) -> TrainConfig:
    """Parse command-line flags (``sys.argv[1:]`` by default) into a resolved ``TrainConfig``.
    ``--resume CKPT`` without ``--config`` starts from the configuration saved beside CKPT (later
    flags override it) and writes where CKPT is (``<checkpoint>/runs/<run>/``), wherever the run
    was first made; where the interrupted invocation was to stop is not kept: ``--max_steps`` of a
    resume is the command line's (a run stopped by ``--max_steps 3`` resumes to its ``--epochs``).
    Only the command line resumes: a ``resume`` in a ``--config`` file (a resumed run's older
    config.json) is ignored, so starting from a run's file begins a new run. Raises
    FileNotFoundError for a ``--resume`` checkpoint that is not there."""
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    resume = _last_value(argv, "--resume")
    if resume:
        if not os.path.isfile(resume):
            raise FileNotFoundError(f"{resume}: no such checkpoint (--resume)")
        run_dir = os.path.dirname(os.path.abspath(resume))
        saved = os.path.join(run_dir, CONFIG_FILE)
        if _last_value(argv, "--config") is None:
            if not os.path.exists(saved):
                raise FileNotFoundError(f"{saved}: the run's configuration is missing beside the checkpoint; "
                                        "resume with --config <that run's config.json> --resume ...")
            argv = ["--config", saved, *argv]
        if os.path.basename(os.path.dirname(run_dir)) == "runs" and _last_value(argv, "--checkpoint") is None:
            argv += ["--checkpoint", os.path.dirname(os.path.dirname(run_dir))]   # a run moved or copied
    parser = make_parser()
    namespace = parser.parse_args(_expand_bare_flags(argv))
    values = {k: v for k, v in vars(namespace).items() if k != "config"}
    values["resume"] = resume
    if resume and _last_value(argv, "--max_steps") is None:
        values["max_steps"] = OptimConfig.max_steps
    return resolved(TrainConfig.from_flat(values))


PATH_FIELDS = ("data", "checkpoint", "glove", *(f"{task}_{kind}" for task in TASK_NAMES for kind in PATH_KINDS))


def save_config(run_dir: str, config: TrainConfig) -> str:
    """Write the resolved configuration as ``<run_dir>/config.json`` (``--config`` reads it back),
    its paths absolute (so that it resumes from any working directory), without ``resume``: how
    this run was started, not its configuration."""
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CONFIG_FILE)
    values = {**config.flat(), "resume": None}
    values.update({k: os.path.abspath(values[k]) for k in PATH_FIELDS if values.get(k)})
    with open(path, "w") as f:
        json.dump(values, f, indent=2)
    return path


def load_config(checkpoint: str) -> TrainConfig:
    """The configuration of the run ``checkpoint`` belongs to (the config.json beside it)."""
    if not os.path.exists(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint")
    path = os.path.join(os.path.dirname(os.path.abspath(checkpoint)), CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the run configuration is missing (train.py writes it beside its "
                                "checkpoints); use a checkpoint inside its run directory")
    with open(path) as f:
        return TrainConfig.from_flat(json.load(f))
