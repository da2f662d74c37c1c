"""Every command's help page, read as its user reads it (``--help``), with the parser that printed
it: for the tests of one flag vocabulary and of help pages that show every default."""
import argparse
import contextlib
import glob
import importlib
import importlib.util
import io
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _runs(path: str) -> bool:
    """A benchmark script, not one of the modules the benchmarks share (harness.py, layouts.py)."""
    with open(path, encoding="utf-8") as f:
        return '__name__ == "__main__"' in f.read()


# the command as the README names it -> the module whose main(argv) it runs
COMMANDS = {
    "train.py": "train",
    "evaluate.py": "evaluate",
    "tsv_to_zarr.py": "tsv_to_zarr",
    "questions_to_shards.py": "questions_to_shards",
    "butd.demo": "butd.demo",
    "butd.synthetic.gqa": "butd.synthetic.gqa",
    "butd.synthetic.vqa2": "butd.synthetic.vqa2",
    "butd.synthetic.nlvr2": "butd.synthetic.nlvr2",
    "butd.evaluation.plots": "butd.evaluation.plots",
    **{os.path.basename(p): p for p in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))) if _runs(p)},
}


def _module(name: str):
    if not name.endswith(".py"):
        return importlib.import_module(name)
    if os.path.dirname(name) not in sys.path:    # a benchmark imports its neighbours (harness.py)
        sys.path.insert(0, os.path.dirname(name))
    spec = importlib.util.spec_from_file_location(f"benchmark_{os.path.basename(name)[:-3]}", name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def help_page(command: str) -> tuple:
    """``(parser, text)``: the parser that ``<command> --help`` printed, and what it printed."""
    seen = {}
    original = argparse.ArgumentParser.print_help

    def capture(self, file=None):
        seen.setdefault("parser", self)
        original(self, file)
    argparse.ArgumentParser.print_help = capture
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            _module(COMMANDS[command]).main(["--help"])
    finally:
        argparse.ArgumentParser.print_help = original
    return seen["parser"], out.getvalue()


def flags(parser) -> dict:
    """``{canonical name: action}`` of a parser's flags; a flag's canonical name is its first long
    option string, with underscores for dashes (both spellings are one flag everywhere)."""
    found = {}
    for action in parser._actions:
        names = [s for s in action.option_strings if s.startswith("--")]
        if names and not isinstance(action, argparse._HelpAction):
            found[names[0].replace("-", "_").replace("__", "--", 1)] = action
    return found


def help_block(text: str, action) -> str:
    """The lines of a help page's options that describe ``action``: its line (a flag's line is
    indented by two spaces) and the more deeply indented lines after it."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.match(r"  -", line)]
    for i in starts:
        if any(re.search(rf"(^|[\s,]){re.escape(s)}([\s,=]|$)", lines[i]) for s in action.option_strings):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith("   ")), len(lines))
            return "\n".join(lines[i:end])
    return ""
