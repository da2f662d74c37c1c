"""What the generators' command lines share: ``--quick`` and ``--force``, and how they report.

    python -m butd.synthetic.gqa --quick      # a small sample for a smoke test, in seconds
"""
from __future__ import annotations

import argparse
import os
import sys

ALREADY_THERE = "is already there"   # what a generator says of a sample it left as it was (butd.demo reads it)


def add_sample_flags(parser: argparse.ArgumentParser, quick: dict) -> None:
    """``--quick`` (the generator's ``QUICK`` sizes) and ``--force``."""
    sizes = ", ".join(f"--{k} {v}" for k, v in quick.items())
    parser.add_argument("--quick", action="store_true", help=f"a small sample for a smoke test ({sizes})")
    parser.add_argument("--force", action="store_true",
                        help="write over files under --out that this generator did not write (real data!)")


def sample_options(args: argparse.Namespace, quick: dict) -> dict:
    """The keywords of ``generate`` from the parsed flags (``--quick`` overrides the sizes)."""
    options = {k: v for k, v in vars(args).items() if k != "quick"}
    if args.quick:
        options.update(quick)
    return options


def report(result: dict, title: str) -> None:
    """Say where a generated sample is, and whether it was written now."""
    out = os.path.dirname(os.path.normpath(result["questions"]))
    if not result["written"]:
        print(f"[*] the {title} sample in {out} {ALREADY_THERE} (same settings, files as written): nothing to do")
        return
    for name, path in result.items():
        if name != "written":
            print(f"[*] {title} sample {name}: {path}")


def run_generator(main) -> None:
    """Run a generator's ``main``: a refusal (a file it did not write) or bad flag values are one line on
    stderr and exit status 1."""
    from butd.cli import run
    sys.exit(run(main))
