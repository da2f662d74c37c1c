"""Help pages and one flag vocabulary: every command's --help gives every flag a line of help and
shows its default, and the README's flag table is what the help pages say (every flag that two
commands share, with the commands that have it)."""
import argparse
import os
import re

import pytest
from help_pages import COMMANDS, ROOT, flags, help_block, help_page

from butd.cli import help_suffix

PAGES = {}


def page(command):
    if command not in PAGES:
        PAGES[command] = help_page(command)
    return PAGES[command]


def shown(action) -> bool:
    return action.help is not argparse.SUPPRESS


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_flag_has_a_line_of_help_and_shows_its_default(command):
    parser, text = page(command)
    assert text.startswith("usage:") and parser.description, command
    for name, action in flags(parser).items():
        if not shown(action):
            continue
        block = " ".join(help_block(text, action).split())
        suffix = " ".join(help_suffix(action).split())    # the choices and default the parser adds
        described = [w for w in block.removesuffix(suffix).replace(",", " ").split()
                     if w not in action.option_strings and w != action.metavar and not w.startswith("{")]
        assert described, f"{command} {name}: no help text"
        if action.default is not None and action.default is not argparse.SUPPRESS:
            assert "default" in block.lower(), f"{command} {name}: its default {action.default!r} is not shown"


def readme_table() -> dict:
    """``{flag: set of commands}`` from the README's flag table."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## One vocabulary of flags", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*`(--[\w-]+)`[^|]*\|[^|]*\|([^|]*)\|\s*$", line)
        if match:
            rows[match.group(1)] = {c.strip().strip("`") for c in match.group(2).split(",")}
    return rows


def test_the_readme_flag_table_is_the_help_pages():
    shared = {}
    for command in COMMANDS:
        for name, action in flags(page(command)[0]).items():
            if shown(action):
                shared.setdefault(name, set()).add(command)
    shared = {name: commands for name, commands in shared.items() if len(commands) > 1}
    table = readme_table()
    assert table, "README.md has no flag table under '## One vocabulary of flags'"
    for name in sorted(set(shared) | set(table)):
        assert table.get(name) == shared.get(name), f"{name}: README says {table.get(name)}, --help {shared.get(name)}"
