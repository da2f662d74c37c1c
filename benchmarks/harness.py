"""The benchmarks' shared harness: timing with warm-up, peak memory of a process tree, the report.

    from harness import PeakMemory, Table, report, time_loop, timed
    out, seconds = timed(fn, *args)                        # one call, after a gc.collect()
    r = time_loop(step, warmup=2, steps=50, sync=...)      # step(i): untimed warm-up, then timed
    with PeakMemory() as mem: ...                          # mem.rss, mem.pss: peaks in bytes
    report("loader_speed", out_dir, summary, runs, columns=..., picture=picture)

``Table`` prints rows (also one at a time, as they are measured), ``series`` groups rows into the
lines of a plot panel, ``rollup`` reads one process's RSS and PSS.

``report`` prints the table, writes ``<out>/<name>.json`` ({"summary", "runs"}) and ``<name>.png``
(the benchmark's own ``picture(summary, runs, png)``, drawn with ``butd.evaluation.plots``, or line
panels), and ends with the summary as one JSON line.

Flags: every benchmark reads them with ``parser(__doc__)`` (``butd.cli.ArgumentParser``: ``--flag_name``
and ``--flag-name`` alike, defaults in the help, one-line usage errors) and the same names as train.py
(``--bsz``, ``--num_workers``, ``--out``); a list is one comma-separated value (``comma_list``).
"""
from __future__ import annotations

import gc
import json
import multiprocessing
import os
import re
import threading
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MB = 2 ** 20


# -- flags ----------------------------------------------------------------------------------------

def parser(doc: str, paragraphs: int = 2):
    """A benchmark's ``butd.cli.ArgumentParser``, described by the first ``paragraphs`` of its
    docstring (its summary and its examples); the rest stays in the docstring."""
    from butd.cli import ArgumentParser, description
    return ArgumentParser(description=description(doc, paragraphs))


def comma_list(kind=str, choices=None):
    """A flag type: ``"0,1,2"`` -> ``[0, 1, 2]`` of ``kind`` (an empty value: an empty list); with
    ``choices``, each item one of them, in any case (``butd.cli.Choice``)."""
    from butd.cli import Choice
    item = Choice(choices) if choices else kind

    def parse(text: str) -> list:
        return [item(part.strip()) for part in str(text).split(",") if part.strip()]
    parse.__name__ = "a comma-separated list of " + (item.__name__ if choices else f"{kind.__name__}s")
    return parse


def require_gpu(wanted: bool, flags: str) -> None:
    """Refuse, in one line before any work, a GPU asked for by ``flags`` on a machine without one."""
    if wanted:
        from butd.cli import require_gpus
        require_gpus(1, flags, "leave them out to measure on the CPU")


# -- timing ---------------------------------------------------------------------------------------

def timed(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), seconds)``, garbage collected first so that no earlier run's garbage
    is collected on this one's clock."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def spanned(target, shares) -> float:
    """Seconds from the first start to the last end of work spread over processes: one forked process
    per item of ``shares`` runs ``target(*share, barrier, results)``, which prepares, waits at
    ``barrier`` (so that no process's set-up is timed), works, and puts its ``(t0, t1)`` on ``results``."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(shares)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*share, barrier, results)) for share in shares]
    for p in procs:
        p.start()
    times = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return max(t1 for _, t1 in times) - min(t0 for t0, _ in times)


def time_loop(step, *, warmup: int = 0, steps: int | None = None, seconds: float | None = None, sync=None) -> dict:
    """Call ``step(i)`` ``warmup`` times untimed, then time it ``steps`` times, or until ``seconds``
    have passed (checked after each call), or until it raises StopIteration. ``sync()`` (e.g.
    ``torch.cuda.synchronize``) runs before each clock read. ``work`` sums what the timed steps
    return (numbers: e.g. samples), ``warmup_s`` is the warm-up's time."""
    sync = sync or (lambda: None)
    t0 = time.perf_counter()
    for i in range(warmup):
        step(i)
    sync()
    start = time.perf_counter()
    n, work = 0, 0
    try:
        while steps is None or n < steps:
            work += step(warmup + n) or 0
            n += 1
            if seconds is not None and time.perf_counter() - start >= seconds:
                break
    except StopIteration:
        pass
    sync()
    elapsed = time.perf_counter() - start
    return {"steps": n, "seconds": elapsed, "steps_per_s": n / elapsed, "work": work, "warmup_s": start - t0}


# -- memory ---------------------------------------------------------------------------------------

def rollup(pid: int) -> tuple[int, int]:
    """(RSS, anonymous + shared-memory PSS) in bytes of one process, from smaps_rollup. PSS splits
    each shared page among the processes mapping it, so summing it over the tree counts a page
    once; leaving out Pss_File leaves out page-cache pages (e.g. a memory-mapped store)."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return fields.get("Rss", 0), fields.get("Pss_Anon", 0) + fields.get("Pss_Shmem", 0)


class PeakMemory:
    """Peak RSS and PSS (bytes, summed over the process ``pid`` - default this one - and all its
    descendants), sampled every ``interval`` s in a thread and once more at exit. ``pss=False``
    reads RSS only, from the cheaper ``statm`` (``pss`` then stays 0): smaps_rollup walks the
    page tables, which costs CPU time a fast poll of a large process would steal from it."""

    def __init__(self, pid: int | None = None, interval: float = 0.05, pss: bool = True):
        import psutil
        self.root, self.interval, self.with_pss = psutil.Process(pid), interval, pss
        self.rss = self.pss = 0

    def __enter__(self):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        import psutil
        try:
            procs = [self.root] + self.root.children(recursive=True)
        except psutil.Error:   # the root has exited
            return
        rss = pss = 0
        for p in procs:
            try:
                r, u = rollup(p.pid) if self.with_pss else (p.memory_info().rss, 0)
            except (OSError, psutil.Error):   # a process that just exited
                continue
            rss, pss = rss + r, pss + u
        self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)

    def _run(self):
        self._sample()
        while not self.stop.wait(self.interval):
            self._sample()

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._sample()


# -- report ---------------------------------------------------------------------------------------

class Table:
    """Rows of dicts as a fixed-width table. ``columns``: ``(header, key, spec)``, where ``key``
    is a row key or a function of the row and ``spec`` a format spec with its width ("9.2f",
    "<30"); None shows as "-"."""

    def __init__(self, columns: list):
        self.columns = [(h, k, s, max(len(h), int(re.match(r"[<>^]?(\d+)", s).group(1))), s.startswith("<"))
                        for h, k, s in columns]

    def header(self) -> None:
        line = " ".join(f"{h:{'<' if left else '>'}{w}}" for h, _, _, w, left in self.columns)
        print(line + "\n" + "-" * len(line), flush=True)

    def row(self, r: dict) -> None:
        cells = []
        for _, key, spec, width, left in self.columns:
            v = key(r) if callable(key) else r.get(key)
            try:
                cell = "-" if v is None else format(v, spec)
            except (TypeError, ValueError):   # e.g. a string in a number column
                cell = str(v)
            cells.append(f"{cell:{'<' if left else '>'}{width}}")
        print(" ".join(cells), flush=True)

    def print(self, rows: list) -> None:
        self.header()
        for r in rows:
            self.row(r)


def series(rows: list, label, x: str, y: str) -> dict:
    """``{label(row): (xs, ys)}`` over the rows, in order, for ``line_plot``; rows whose label is
    None are left out."""
    out = {}
    for r in rows:
        name = label(r)
        if name is not None:
            xs, ys = out.setdefault(name, ([], []))
            xs.append(r[x])
            ys.append(r[y])
    return out


def report(name: str, out: str, summary: dict, runs: list, *, columns: list | None = None, panels: list | None = None,
           picture=None, title: str = "", table_rows: list | None = None, **extra) -> dict:
    """Print the table of ``table_rows`` (default ``runs``; none without ``columns``), write
    ``<out>/<name>.json`` ({"summary", "runs", **extra}) and ``<out>/<name>.png``: drawn by
    ``picture(summary, runs, png)``, or from ``panels`` as ``line_plot`` takes them; and print
    ``summary`` as the last line, in JSON."""
    from butd.evaluation.plots import line_plot
    if columns:
        print()
        Table(columns).print(runs if table_rows is None else table_rows)
    os.makedirs(out, exist_ok=True)
    png, js = os.path.join(out, f"{name}.png"), os.path.join(out, f"{name}.json")
    if picture is not None:
        picture(summary, runs, png)
    else:
        line_plot(panels, png, title=title or name)
    with open(js, "w") as f:
        json.dump({"summary": summary, "runs": runs, **extra}, f, indent=1, default=str)
    print(f"\n[*] wrote {png} and {js}")
    print(json.dumps(summary))
    return summary
