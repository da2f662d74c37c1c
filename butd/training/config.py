"""The one configuration of a training run: dataclasses from which the command-line flags, the run's
saved ``config.json``, the LightningModule's hyper-parameters and the benchmarks all derive.

    config = parse_config(["--run_name", "GQA", "--hidden", "512"])     # or --config run.yaml
    config.model.hidden, config.optim.bsz, config.data.dataset

Flags are the specification's names (``--bsz``, ``--hidden``, ``--gqa_questions``, ...), flat, parsed
by jsonargparse from the field types and the docstrings below. ``--config FILE`` (YAML or JSON,
the same flat keys) sets any of them; flags after it override it. A bare boolean flag turns it on
(``--bidirectional``), ``--no_<flag>`` turns it off, and ``--flag true|false`` works too
(jsonargparse's ``ActionYesNo``). A number's bounds (``bounded``) and the names Lightning's Trainer
takes (``lightning_name``: ``--accelerator``, ``--strategy``, ``--precision``) are checked as the
flags are parsed: a wrong value is a usage error, before any work. ``resolved(config)`` fills in
what depends on other fields (paths under ``--data``, ``--devices`` from ``--gpus``); a run saves
that, and starting from the saved file gives it back.

A dataset's directories are ``--questions``, ``--features`` and ``--cache``, whatever the dataset:
a new task adds no field. The specification's and the modular branch's names,
``--<dataset>_questions`` / ``_features`` / ``_cache``, are read too: each sets its kind for its own
dataset only (``--gqa_cache`` is ignored with ``--dataset vqa2``, as there) and wins over the
generic flag. A ``config.json`` of an older run, which holds those names, reads the same way.

``evaluate.py``'s options are ``EvaluateConfig``: its own fields, and ``--bsz``, ``--num_workers``
and ``--accelerator`` from the training dataclasses, with their defaults.

Adding a model option is one field in ``ModelConfig`` and the keyword of the same name in the
model's constructor (``butd.models.base.VQAModel``): its flag, its place in the saved
configuration and in the checkpoint's hyper-parameters follow from the field.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Literal, Optional, Union, get_args, get_origin, get_type_hints

from butd.tasks import TASK_NAMES, get_task

CONFIG_FILE = "config.json"
PATH_KINDS = ("questions", "features", "cache")   # a dataset's directories: --<kind> (or --<dataset>_<kind>)


def bounded(default, low=None, high=None, strict: bool = False, also: tuple = ()):
    """A field whose flag takes only numbers within bounds (``butd.cli.Bounded``): a wrong value is
    a usage error when the flags are parsed, not a failure after the caches are prepared."""
    return field(default=default, metadata={"bounds": dict(low=low, high=high, strict=strict, also=also)})


def lightning_name(default: str, what: str):
    """A field whose flag is passed to ``pl.Trainer`` as its ``what``: checked against the names
    Lightning takes when the flags are parsed."""
    return field(default=default, metadata={"lightning": what})


@dataclass
class RunConfig:
    """Run"""
    run_name: str
    """run name, for informative logging"""
    fast_dev_run: int = 0
    """run N train/val batches only, as a smoke test (no checkpoints or metrics); bare: 1"""
    resume: Optional[str] = None
    """continue the run this checkpoint (e.g. <run>/last.ckpt) belongs to"""
    log_every: int = bounded(50, low=1)
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
    questions: Optional[str] = None
    """the dataset's question files (default <data>/GQA-Questions, VQA2-Questions or NLVR2-Questions)"""
    features: Optional[str] = None
    """the dataset's feature TSVs (default <data>/GQA-Features, VQA2-Features or NLVR2-Features)"""
    cache: Optional[str] = None
    """the dataset's feature stores and question cache (default <data>/GQA-Cache, VQA2-Cache or NLVR2-Cache)"""
    glove: Optional[str] = None
    """GloVe 300-d vectors, .txt or .txt.gz (default <data>/GloVe/glove.6B.300d.txt, or .txt.gz if only that is there)"""
    drop_missing: bool = False
    """build the question cache without the questions whose image has no feature row"""
    min_answer_count: Optional[int] = bounded(None, low=1)
    """VQA v2: the candidate answers are those at least this many train+val questions give (default: 9, the
    references'); lower it for a small subset. GQA and NLVR2 keep every answer"""
    num_workers: int = bounded(0, low=0)
    """0: batches gathered by a background thread of each rank (fastest measured); N: N worker processes"""
    feature_cache: Literal["auto", "none", "pinned", "gpu"] = "auto"
    """none: read the feature stores batch by batch from their files; pinned/gpu: keep them whole in (pinned)
    host memory / on the GPU, a copy per process; auto: pinned for a compressed train or validation store whose
    decoded copies (one per process of the machine) fit in half the available memory, else none"""

    def paths(self) -> dict:
        """The dataset's ``questions``, ``features`` and ``cache`` directories and the ``glove`` file,
        defaults resolved under ``data``."""
        task = get_task(self.dataset)
        paths = {kind: getattr(self, kind) or os.path.join(self.data, getattr(task, f"{kind}_dir"))
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
    emb_dim: int = bounded(300, low=1)
    """word embedding size (must match GloVe)"""
    emb_dropout: float = bounded(0.0, low=0, high=1)
    """dropout on the word embeddings"""
    rnn: Literal["GRU", "LSTM"] = "GRU"
    """question encoder"""
    rnn_layers: int = bounded(1, low=1)
    """stacked RNN layers"""
    bidirectional: bool = False
    """bidirectional question encoder"""
    q_dropout: float = bounded(0.0, low=0, high=1)
    """dropout between RNN layers"""
    attention_dropout: float = bounded(0.2, low=0, high=1)
    """dropout in the attention (BUTD)"""
    answer_dropout: float = bounded(0.5, low=0, high=1)
    """dropout in the answer classifier"""
    hidden: int = bounded(1024, low=1)
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
    bsz: int = bounded(256, low=1)
    """batch size per process (global = bsz x processes)"""
    epochs: int = bounded(15, low=1)
    """training epochs"""
    max_steps: int = bounded(-1, low=1, also=(-1,))
    """stop after this many steps (-1: epochs decide)"""
    opt: Literal["adamax", "adam", "adamw"] = "adamax"
    """optimiser"""
    lr: Optional[float] = bounded(None, low=0, strict=True)
    """learning rate (default: the optimiser's own; Adamax: 0.002)"""
    weight_decay: Optional[float] = bounded(None, low=0)
    """weight decay (default: the optimiser's own)"""
    gradient_clip: float = bounded(0.25, low=0)
    """max gradient norm"""
    seed: int = 7
    """random seed"""


@dataclass
class HardwareConfig:
    """Hardware"""
    gpus: int = bounded(0, low=0, also=(-1,))
    """N > 0: train on N GPUs, -1: on all (the specification's flag)"""
    accelerator: str = lightning_name("auto", "accelerator")
    """cpu, gpu, auto, ..."""
    devices: Optional[Union[int, str]] = None
    """devices per node (default: --gpus, or 1)"""
    num_nodes: int = bounded(1, low=1)
    """nodes"""
    strategy: str = lightning_name("auto", "strategy")
    """e.g. ddp"""
    precision: str = lightning_name("32-true", "precision")
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
        """The configuration of flat ``values`` (parsed flags, a ``config.json``); the dataset's
        ``<dataset>_<kind>`` paths, where set, fill its ``<kind>`` paths, other datasets' are ignored."""
        values = {**values, **dataset_paths(values)}
        return cls(**{group: GROUPS[group](**{f.name: values[f.name] for f in dataclasses.fields(GROUPS[group])
                                              if f.name in values})
                      for group in GROUPS})


GROUPS = {"run": RunConfig, "data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
          "hardware": HardwareConfig}
# the specification's and the modular branch's names of a dataset's directories: --gqa_cache, ...
TASK_PATH_FLAGS = tuple(f"{task}_{kind}" for task in TASK_NAMES for kind in PATH_KINDS)


def dataset_paths(values: dict) -> dict:
    """``{kind: path}`` from the ``<dataset>_<kind>`` entries of flat ``values`` that name its
    dataset and are set; the generic ``<kind>`` is overridden by them."""
    dataset = values.get("dataset", DataConfig.dataset)
    return {kind: values[f"{dataset}_{kind}"] for kind in PATH_KINDS if values.get(f"{dataset}_{kind}")}


@dataclass
class EvaluateConfig:
    """Evaluation"""
    checkpoint: str
    """a .ckpt written by train.py"""
    split: Optional[str] = None
    """default: the task's validation split (GQA: testdev)"""
    out: Optional[str] = None
    """predictions file (default <run dir>/predictions/<checkpoint name>/<split>-predictions.json, .csv for NLVR2)"""
    cache: Optional[str] = None
    """the feature stores and question cache, if not the run's (its config.json names them)"""
    questions: Optional[str] = None
    """the split's question files, if they moved since the question cache was built: the questions the cache
    left out (--drop_missing) and GQA's evaluation files (all questions, choices, scene graphs) are read there"""
    report: bool = False
    """also write <predictions stem>-report.html: one self-contained page of the scores, training curves,
    confusions and a gallery of questions with the boxes the model attended to"""
    report_examples: int = bounded(48, low=0)
    """questions in the report's gallery, sampled across types, right and wrong"""
    images: Optional[str] = None
    """the dataset's images, for the report's gallery (GQA <imageId>.jpg, COCO_<split>_<12 digits>.jpg,
    NLVR2 <id>.png); without it, or where a file is absent, boxes are drawn on a blank canvas of the image's size"""
    bsz: int = OptimConfig.bsz
    num_workers: int = DataConfig.num_workers
    accelerator: str = HardwareConfig.accelerator


# evaluate.py's flags that are training's: the same names, meanings and defaults
EVALUATE_SHARED = {OptimConfig: ("bsz",), DataConfig: ("num_workers",), HardwareConfig: ("accelerator",)}


def resolved(config: TrainConfig) -> TrainConfig:
    """The configuration with the values that follow from others filled in: the dataset's paths
    under ``--data`` and ``--devices``/``--accelerator`` from ``--gpus``. Idempotent."""
    data = dataclasses.replace(config.data)
    paths = data.paths()
    for kind in PATH_KINDS:
        setattr(data, kind, paths[kind])
    data.glove = paths["glove"]
    hw = dataclasses.replace(config.hardware)
    if hw.gpus != 0:
        hw.accelerator = "gpu" if hw.accelerator == "auto" else hw.accelerator
        hw.devices = hw.devices or hw.gpus
    hw.devices = hw.devices or 1
    if isinstance(hw.devices, str) and hw.devices.lstrip("-").isdigit():
        hw.devices = int(hw.devices)
    return dataclasses.replace(config, data=data, hardware=hw)


# flags whose bare form (no value) means a value: booleans true, these the value given
_BARE = {"fast_dev_run": 1}


_USAGE = {"train.py": "train.py --run_name NAME [--dataset gqa|vqa2|nlvr2] [--model butd|film] [flags]",
          "evaluate.py": "evaluate.py --checkpoint CKPT [--split SPLIT] [flags]"}


@functools.lru_cache(maxsize=None)
def _parser_class():
    """jsonargparse's ArgumentParser read as every command here reads flags (``butd.cli``): both
    spellings of a long flag, choices in any case, help lines with their default and choices in
    plain words, one-line usage errors (exit status 2)."""
    import re

    from jsonargparse import ActionYesNo, ArgumentParser, DefaultHelpFormatter

    from butd import cli

    class HelpFormatter(DefaultHelpFormatter):
        def _format_action_invocation(self, action):
            if isinstance(action, ActionYesNo):    # "--flag, --no_flag" ("--flag true|false" works too)
                return ", ".join(action.option_strings)
            return super()._format_action_invocation(action)

        def _get_help_string(self, action):
            if getattr(action, "_jsonargparse_preexpanded_help", False) or action.option_strings in (["--config"], []):
                return super()._get_help_string(action)
            text = action.help or ""
            return text + cli.help_suffix(action, "default" in text.lower() or action.dest == "print_config")

    class Parser(ArgumentParser):
        def parse_args(self, args=None, *rest, **kwargs):
            args = list(sys.argv[1:] if args is None else args)
            return super().parse_args(cli.canonical_flags(args, self._option_string_actions), *rest, **kwargs)

        def error(self, message, ex=None):
            # jsonargparse's own wording of a bad value, in plain words
            typed = re.match(r'Parser key "(\w+)":\s*Expected a <class \'(\w+)\'>\. Got value: (.*)', str(message), re.S)
            if typed:
                message = f"--{typed.group(1)}: expected {typed.group(2)}, got {typed.group(3).strip()!r}"
            cli.usage_error(self.prog, message, self._option_string_actions)

    return Parser, HelpFormatter


def _parser(description: str):
    from jsonargparse import set_parsing_settings
    set_parsing_settings(docstring_parse_attribute_docstrings=True)   # help from the fields' docstrings
    parser_class, formatter = _parser_class()
    prog = "evaluate.py" if description.startswith("Evaluate") else "train.py"
    # no abbreviations: --resum would parse as --resume, yet parse_config reads --resume first
    return parser_class(description=description, default_env=False, exit_on_error=True, allow_abbrev=False,
                        formatter_class=formatter, prog=prog, usage=_USAGE[prog])


def _trainer_names(what: str) -> tuple:
    # imported here: Lightning is needed only once a value other than the default is given
    from butd.training.lightning_internals import trainer_names
    return trainer_names(what)


def _choices(hint) -> tuple:
    """The values of a ``Literal`` (or ``Optional[Literal]``) type hint; () for another hint."""
    if get_origin(hint) is Union:
        hint = next((a for a in get_args(hint) if a is not type(None)), None)
    return get_args(hint) if get_origin(hint) is Literal else ()


def _add_fields(parser, group: type, only=None, aliases=None, as_group: bool = True) -> None:
    """``group``'s fields (``only`` those named) as flags, in an argument group of their own
    (``as_group``), help from the fields' docstrings. Booleans and ``_BARE`` fields also take no value (``--bidirectional``,
    ``--fast_dev_run``), booleans ``--no_<flag>``; fields of a ``Literal`` type take their values in
    any case (``--dataset GQA``); ``aliases``: ``{field: [other flag names]}``."""
    from docstring_parser import parse_from_object
    from jsonargparse import ActionYesNo

    from butd.cli import Bounded, Choice, Named
    hints = get_type_hints(group)
    fields = [f for f in dataclasses.fields(group) if only is None or f.name in only]
    target = parser.add_argument_group(group.__doc__) if as_group else parser
    docs = {p.arg_name: p.description for p in parse_from_object(group).params}
    for f in fields:      # in the dataclass's order, each as its kind of flag reads best
        names = [f"--{f.name}", *(f"--{a}" for a in (aliases or {}).get(f.name, ()))]
        hint, help = hints[f.name], docs.get(f.name)
        default = {"default": f.default} if f.default is not dataclasses.MISSING else {"required": True}
        choices = _choices(hint)
        if "bounds" in f.metadata:
            number = next((a for a in get_args(hint) if a is not type(None)), hint)
            target.add_argument(*names, type=Bounded(number, **f.metadata["bounds"]), help=help, **default)
        elif "lightning" in f.metadata:
            target.add_argument(*names, type=Named(functools.partial(_trainer_names, f.metadata["lightning"]), f.default),
                                help=help, **default)
        elif hint is bool:
            target.add_argument(names[0], action=ActionYesNo(yes_prefix="", no_prefix="no_"), nargs="?",
                                help=help, **default)
        elif f.name in _BARE:
            target.add_argument(*names, type=int, nargs="?", const=_BARE[f.name], help=help, **default)
        elif choices:
            target.add_argument(*names, type=Choice(choices), metavar="{" + ",".join(choices) + "}", help=help,
                                **default)
        else:
            target.add_argument(*names, type=hint, help=help, **default)


def make_parser(description: str = "Train BUTD/FiLM."):
    """The command line of ``train.py``: every field of ``GROUPS``, ``--config`` and ``--print_config``."""
    from jsonargparse import ActionConfigFile
    parser = _parser(description)
    parser.add_argument("--config", action=ActionConfigFile,
                        help="a YAML or JSON file of flags (e.g. a run's saved config.json); later flags override it")
    for group in GROUPS.values():
        _add_fields(parser, group)
    names = parser.add_argument_group("Dataset paths under the specification's names (each for its dataset only)")
    for name in TASK_PATH_FLAGS:
        task, kind = name.split("_", 1)
        names.add_argument(f"--{name}", type=Optional[str], default=None, help=f"--{kind} when --dataset is {task}")
    return parser


def make_evaluate_parser(description: str = "Evaluate a BUTD/FiLM checkpoint on a split of its task."):
    """The command line of ``evaluate.py``: ``EvaluateConfig``'s fields, ``--cache`` and
    ``--questions`` also under each dataset's name (``--gqa_cache``, ...)."""
    parser = _parser(description)
    aliases = {kind: [f"{task}_{kind}" for task in TASK_NAMES] for kind in ("cache", "questions")}
    _add_fields(parser, EvaluateConfig, only={f.name for f in dataclasses.fields(EvaluateConfig)}
                - {name for names in EVALUATE_SHARED.values() for name in names}, aliases=aliases)
    for group, names in EVALUATE_SHARED.items():
        _add_fields(parser, group, only=names, as_group=False)
    splits = "; ".join(f"{get_task(t).title}: {', '.join(get_task(t).split_names)}" for t in TASK_NAMES)
    parser._option_string_actions["--split"].help += f" ({splits})"
    return parser


def parse_evaluate(argv=None) -> EvaluateConfig:
    """``evaluate.py``'s flags (``sys.argv[1:]`` by default) as an ``EvaluateConfig``."""
    namespace = make_evaluate_parser().parse_args(argv)
    return EvaluateConfig(**{f.name: namespace[f.name] for f in dataclasses.fields(EvaluateConfig)})


def _resume_flags(argv: list):
    """What the command line itself gives ``--resume``, ``--config``, ``--checkpoint``,
    ``--max_steps``, ``--data``, ``--dataset`` and the dataset paths (the last of each, or None): a
    resume starts from the run's saved configuration, which must be found before the flags are parsed
    over it, and takes these from the command line only; a new ``--data`` moves the saved paths that
    the command line does not give (``_rederive_paths``). (argparse's ``parse_known_args``, which
    jsonargparse does not offer.)"""
    import argparse
    flags = ("--resume", "--config", "--checkpoint", "--max_steps", "--data", "--dataset",
             *(f"--{name}" for name in (*PATH_KINDS, "glove", *TASK_PATH_FLAGS)))
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    for flag in flags:
        pre.add_argument(flag, flag.replace("_", "-") if "_" in flag else flag)
    try:
        return pre.parse_known_args(argv)[0]
    except argparse.ArgumentError:   # a flag without its value: jsonargparse's parse says so, with the usage
        return argparse.Namespace(**{flag[2:]: None for flag in flags})


def parse_config(argv=None) -> TrainConfig:
    """Parse command-line flags (``sys.argv[1:]`` by default) into a resolved ``TrainConfig``.
    ``--resume CKPT`` without ``--config`` starts from the configuration saved beside CKPT (later
    flags override it) and writes where CKPT is (``<checkpoint>/runs/<run>/``), wherever the run
    was first made; where the interrupted invocation was to stop is not kept: ``--max_steps`` of a
    resume is the command line's (a run stopped by ``--max_steps 3`` resumes to its ``--epochs``).
    Only the command line resumes: a ``resume`` in a ``--config`` file (a resumed run's older
    config.json) is ignored, so starting from a run's file begins a new run. Raises
    FileNotFoundError for a ``--resume`` checkpoint that is not there."""
    argv = list(sys.argv[1:] if argv is None else argv)
    given = _resume_flags(argv)
    if given.resume:
        if not os.path.isfile(given.resume):
            raise FileNotFoundError(f"{given.resume}: no such checkpoint (--resume)")
        run_dir = os.path.dirname(os.path.abspath(given.resume))
        saved = os.path.join(run_dir, CONFIG_FILE)
        if given.config is None:
            if not os.path.exists(saved):
                raise FileNotFoundError(f"{saved}: the run's configuration is missing beside the checkpoint; "
                                        "resume with --config <that run's config.json> --resume ...")
            argv = ["--config", saved, *argv]
    values = dict(make_parser().parse_args(argv))
    values.pop("config", None)
    config_file = given.config or (saved if given.resume else None)
    if config_file and (given.data or given.dataset):
        _rederive_paths(values, config_file, {k for k, v in vars(given).items() if v is not None})
    values["resume"] = given.resume
    if given.resume:
        if given.max_steps is None:
            values["max_steps"] = OptimConfig.max_steps
        if os.path.basename(os.path.dirname(run_dir)) == "runs" and given.checkpoint is None:
            values["checkpoint"] = os.path.dirname(os.path.dirname(run_dir))   # a run moved or copied
    return resolved(TrainConfig.from_flat(values))


def _rederive_paths(values: dict, config_file: str, given: set) -> None:
    """``--data`` or ``--dataset`` given after a configuration file (a saved run's, whose paths are
    resolved): the dataset paths the file holds only because its ``--data`` implied them follow a
    new ``--data``, and another dataset takes none of the file's dataset directories (they hold the
    old dataset's files); the GloVe file it set itself, and every path the command line gives
    (``given``: their names), stay."""
    old = dict(make_parser().parse_args(["--config", config_file]))
    implied = DataConfig(dataset=old["dataset"], data=old["data"]).paths()
    glove = os.path.join(old["data"], "GloVe", "glove.6B.300d.txt")
    other_dataset = values["dataset"] != old["dataset"]
    for kind in (*PATH_KINDS, "glove"):
        could_be = {os.path.abspath(implied[kind])} | ({os.path.abspath(glove), os.path.abspath(glove + ".gz")}
                                                       if kind == "glove" else set())
        for key in (kind, f"{old['dataset']}_{kind}"):
            if key not in given and values.get(key) and values.get(key) == old.get(key) and \
                    ((other_dataset and kind != "glove") or os.path.abspath(old[key]) in could_be):
                values[key] = None


PATH_FIELDS = ("data", "checkpoint", "glove", *PATH_KINDS)


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
