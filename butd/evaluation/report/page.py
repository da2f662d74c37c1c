"""The report's HTML, from the Jinja2 template ``page.html.j2`` beside this file (autoescaped)."""
from __future__ import annotations

import os

import jinja2

TEMPLATE = "page.html.j2"
# the colour of the box of each attention rank (1 = most attended), and of a box without weights
RANK_COLOURS = ("#e6194b", "#f58231", "#ffe119", "#3cb44b", "#42d4f4")
PLAIN_BOX = "#42d4f4"

_environment = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.dirname(os.path.abspath(__file__))),
                                  autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                                  lstrip_blocks=True)


def render(**context) -> str:
    """The page of ``context`` (the names ``build.write_report`` passes)."""
    return _environment.get_template(TEMPLATE).render(rank_colours=RANK_COLOURS, plain_box=PLAIN_BOX, **context)
