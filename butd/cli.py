"""What every command line shares: its user's errors as one line, and one way of reading flags.

Errors: an error its user can act on (a wrong path, bad input, a stale cache, a device that is not
there) is one line on stderr that names it, and exit status 1, not a traceback (``run``). A usage
error (an unknown flag, a value that is not one of a flag's choices) is one line too, with the
nearest flag or value suggested, and exit status 2, as argparse's. Errors of the code itself still
show their traceback; ``BUTD_TRACEBACK=1`` shows the traceback of a user error too.

    if __name__ == "__main__":
        sys.exit(run(main))

Flags (``ArgumentParser`` here for the argparse commands; ``butd.training.config`` gives train.py and
evaluate.py the same on jsonargparse): ``--flag_name`` and ``--flag-name`` are one flag; a flag with
choices takes them in any case (``--dataset GQA``); every help line says its default and choices.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys

# Exception types of user errors that are not OSError or ValueError, by module: stale caches, stores
# that cannot be read as they are, and Lightning's misconfigurations.
_USER_ERRORS = (("butd.questions.cache", "StaleCacheError"), ("butd.features.reader", "StoreError"),
                ("lightning_fabric.utilities.exceptions", "MisconfigurationException"))


def user_errors() -> tuple:
    """The exception types that describe the user's input, not a bug: files (OSError), values and
    formats (ValueError: TSVFormatError, QuestionFileError, GloveFormatError, ...) and those of
    ``_USER_ERRORS`` whose module is loaded (one that is not cannot have raised: importing it here
    would make every ``--help``, a SystemExit passing through ``run``, import torch)."""
    return (OSError, ValueError, *(getattr(sys.modules[module], name) for module, name in _USER_ERRORS
                                   if module in sys.modules))


def run(main, argv=None) -> int:
    """Call ``main(argv)``: its exit status (0 unless it returns an int); a user error is printed as
    ``error: <message>`` (one line) and gives 1, Ctrl-C gives 130, and a reader that closed the
    pipe early (``| head``) ends it quietly with 141, as SIGPIPE would."""
    try:
        result = main(argv)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Python would report the failed flush of stdout at exit too: point it at /dev/null first
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except user_errors() as e:
        if os.environ.get("BUTD_TRACEBACK"):
            raise
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


def excerpt(text, limit: int = 40) -> str:
    """``text`` (str or bytes) as an error message quotes it: its repr, cut to ``limit`` characters
    with its whole length said (a file in another format has a 'word' or an 'image id' of hundreds
    of kilobytes)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text):,} characters)"


def require_gpus(wanted: int, asked_by: str, instead: str) -> None:
    """Raise ValueError, before any work, when fewer than ``wanted`` GPUs are visible to PyTorch:
    ``asked_by`` names the flags that asked, ``instead`` says how to run without (Lightning and
    torch would end in a traceback)."""
    import torch
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < wanted:
        seen = "no GPU is visible" if not visible else f"only {visible} GPU(s) are visible"
        raise ValueError(f"{wanted} GPU(s) asked for ({asked_by}), but {seen} to PyTorch here (check "
                         f"CUDA_VISIBLE_DEVICES and the driver); {instead}")


# -- flags ----------------------------------------------------------------------------------------

def canonical_flags(argv: list, known) -> list:
    """``argv`` with each long flag spelt as in ``known`` (option strings) where it differs only by
    dashes against underscores (``--feature-dim`` -> ``--feature_dim``, ``--on_bad_row`` ->
    ``--on-bad-row``); ``--flag=value`` too. Anything else is left for the parser to judge."""
    def key(name):
        return name[2:].replace("-", "_")
    by_key = {key(name): name for name in known if name.startswith("--")}
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if arg.startswith("--") and len(arg) > 2 and name not in known:
            arg = by_key.get(key(name), name) + eq + value
        out.append(arg)
    return out


def nearest(word: str, candidates) -> str:
    """`` (did you mean X?)`` for the closest of ``candidates`` to ``word``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


class ChoiceError(argparse.ArgumentTypeError, ValueError):
    """A value that is not one of a flag's choices (argparse keeps this type's message as it is)."""


class Choice:
    """A flag type: one of ``choices``, matched in any case (``"GQA"`` -> ``"gqa"``); else
    ``ChoiceError`` listing them in plain words, with the nearest suggested."""

    def __init__(self, choices):
        self.choices = tuple(choices)
        self.__name__ = "one of " + ", ".join(map(str, self.choices))   # argparse names a type by it

    def __call__(self, value):
        text = str(value)
        for choice in self.choices:
            if text.lower() == str(choice).lower():
                return choice
        raise ChoiceError(f"{text!r} is not one of {', '.join(map(str, self.choices))}{nearest(text, self.choices)}")

    def __repr__(self) -> str:
        return self.__name__


class Bounded:
    """A flag type: a number of ``kind`` (int or float) of at least ``low`` (above it with
    ``strict``) and at most ``high``, or one of ``also`` (``-1``: all); else ``ChoiceError`` saying what
    was expected. None (an optional field's value in a ``--config`` file) passes."""

    def __init__(self, kind: type, low=None, high=None, strict: bool = False, also: tuple = ()):
        self.kind, self.low, self.high, self.strict, self.also = kind, low, high, strict, tuple(also)
        words = "an integer" if kind is int else "a number"
        if low is not None and high is not None:
            words += f" from {low} to {high}"
        elif low is not None:
            words += f" {'>' if strict else '>='} {low}"
        self.__name__ = " or ".join([*map(str, self.also), words])

    def __call__(self, value):
        if value is None:
            return None
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            number = None
        if number is not None and (number in self.also or (
                (self.low is None or number > self.low or (number == self.low and not self.strict))
                and (self.high is None or number <= self.high))):
            return number
        raise ChoiceError(f"{value!r} is not {self.__name__}")

    def __repr__(self) -> str:
        return self.__name__


class Named:
    """A flag type: ``default``, or a string that ``names()`` holds, matched in any case; else
    ``ChoiceError`` listing them, with the nearest suggested. ``names`` is called only for a value
    other than the default (the parser checks defaults too: ``--help`` imports nothing)."""

    def __init__(self, names, default):
        self.names, self.default = names, default
        self.__name__ = "a name"

    def __call__(self, value):
        if value is None or value == self.default:
            return value
        return Choice(self.names())(value)


def help_suffix(action, default_in_help: bool = False) -> str:
    """`` (one of a, b; default: x)`` for a flag's help line: its choices and default in plain words
    (nothing for a default of None whose help already says what it means, or a flag's own help)."""
    parts = []
    choices = action.choices or getattr(action.type, "choices", None)
    if choices:
        parts.append("one of " + ", ".join(map(str, choices)))
    default = action.default
    if action.required and action.option_strings:
        parts.append("required")
    elif default is not argparse.SUPPRESS and not default_in_help and action.option_strings \
            and not isinstance(action, argparse._HelpAction):
        if isinstance(default, bool) or (default is None and action.nargs == 0):
            parts.append(f"default: {'on' if default else 'off'}")
        elif default is not None:
            parts.append(f"default: {' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default}")
        else:
            parts.append("default: none")
    return f" ({'; '.join(parts)})" if parts else ""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's help line ends with its choices and default (``help_suffix``); the description
    keeps its own line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.help is argparse.SUPPRESS:
            return text
        return text + help_suffix(action, "default" in text.lower())


def description(doc: str, paragraphs: int = 2) -> str:
    """A help page's description: the first ``paragraphs`` of a command's docstring (its summary
    line and its examples); the rest stays in the docstring for the reader of the code."""
    return "\n\n".join(doc.strip().split("\n\n")[:paragraphs])


class ArgumentParser(argparse.ArgumentParser):
    """argparse as every command here reads flags (see the module docstring): both spellings of a
    long flag, choices in any case, defaults in the help, no abbreviations, one-line usage errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        choices = kwargs.get("choices")
        if choices is not None and kwargs.get("type") is None and all(isinstance(c, str) for c in choices):
            kwargs["type"], kwargs["choices"] = Choice(choices), None
            kwargs.setdefault("metavar", "{" + ",".join(choices) + "}")
        return super().add_argument(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        known = [s for action in self._actions for s in action.option_strings]
        return super().parse_known_args(canonical_flags(list(sys.argv[1:] if args is None else args), known),
                                        namespace)

    def error(self, message: str):
        usage_error(self.prog, message, [s for action in self._actions for s in action.option_strings])


def usage_error(prog: str, message: str, flags) -> None:
    """Print a usage error as one line (an unknown flag with the nearest known one) and exit 2."""
    message = " ".join(str(message).split())
    required = "the following arguments are required: "
    if message.startswith(required):     # jsonargparse names them without their dashes
        names = [n.strip() for n in message[len(required):].split(",")]
        message = required + ", ".join(f"--{n}" if f"--{n}" in flags else n for n in names)
    if "unrecognized arguments" in message.lower():
        unknown = [w for w in message.split(":", 1)[-1].split() if w.startswith("-")]
        message += "".join(nearest(w.split("=")[0], flags) for w in unknown[:1])
    print(f"{os.path.basename(prog)}: error: {message} (see --help)", file=sys.stderr)
    raise SystemExit(2)
