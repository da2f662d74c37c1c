"""The evaluation report: one self-contained HTML page of an evaluation (``evaluate.py --report``).

``build`` (``write_report``: what the page holds, written), ``gather`` (confusions, the gallery's
sample and its second pass through the model), ``images`` (pictures and boxes, Pillow), ``charts``
(accuracy per type and training curves, matplotlib) and ``page`` (the Jinja2 template
``page.html.j2``).
"""
from butd.evaluation.report.build import report_path, write_report

__all__ = ["report_path", "write_report"]
