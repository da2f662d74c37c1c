"""Streaming readers for question files: a 1 GB JSON object is read one question at a time, never
held as a multi-GB tree of Python dicts (``json.load``). Text may start with a UTF-8 byte-order
mark (some editors and Windows tools write one); it is skipped."""
from __future__ import annotations

import json
import re
from typing import Iterator, Optional, Tuple


class QuestionFileError(ValueError):
    """A question file that cannot be used: malformed JSON or a question missing what we need."""


_WS = r"[ \t\n\r]*"
_STRING = r'"((?:[^"\\]|\\.)*)"'
# What comes before a question's value: the opening '{' and the first key, or ',' and the next
# key; or the closing '}' (group 1). One regex call per question; the key is group 2.
_FIRST = re.compile(_WS + r"\{" + _WS + r"(?:(\})|" + _STRING + _WS + ":" + _WS + ")")
_NEXT = re.compile(_WS + r"(?:(\})|," + _WS + _STRING + _WS + ":" + _WS + ")")
# Text that is a prefix of a match of the pattern above: a failed match of it may succeed once
# more text is read. Any other failure is malformed JSON, found without reading further.
_KEY_PREFIX = r'(?:"(?:[^"\\]|\\.)*\\?(?:"' + _WS + r")?)?"
_FIRST_PREFIX = re.compile(_WS + r"(?:\{" + _WS + _KEY_PREFIX + ")?")
_NEXT_PREFIX = re.compile(_WS + r"(?:," + _WS + _KEY_PREFIX + ")?")
_OPEN = re.compile(_WS + r"\{")
_END = re.compile(_WS)
_BLOCK = 1 << 23


class _ObjectStream:
    """Walks a top-level JSON object ``{"key": value, ...}`` through a sliding text buffer."""

    def __init__(self, f, path: str):
        self.f, self.path = f, path
        self.buf, self.pos, self.eof, self.lines_before = "", 0, False, 0
        self.scan = json.JSONDecoder().scan_once

    def _more(self) -> None:
        # At least as much again as is left unread in the buffer: a value longer than a block
        # costs a linear number of copies, not a quadratic one.
        chunk = self.f.read(max(_BLOCK, len(self.buf) - self.pos))
        self.lines_before += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos, self.eof = self.buf[self.pos:] + chunk, 0, not chunk

    def error(self, what: str, pos: Optional[int] = None) -> QuestionFileError:
        pos = self.pos if pos is None else pos
        line = self.lines_before + self.buf.count("\n", 0, pos) + 1
        column = pos - self.buf.rfind("\n", 0, pos)
        return QuestionFileError(f"{self.path}, line {line} column {column}: malformed JSON: {what}")

    def match(self, pattern: re.Pattern, prefix: re.Pattern):
        """Match at the cursor, reading more text while the failure may be the buffer's end."""
        while True:
            m = pattern.match(self.buf, self.pos)
            if m is not None:
                self.pos = m.end()
                return m
            if self.eof or not prefix.fullmatch(self.buf, self.pos):
                return None
            self._more()

    def value(self):
        while True:
            try:
                obj, end = self.scan(self.buf, self.pos)
                # A value that ends with the buffer may go on (a number cut in two).
                if end < len(self.buf) or self.eof:
                    self.pos = end
                    return obj
            except StopIteration as e:
                if self.eof:
                    raise self.error("Expecting value", e.value) from None
            except json.JSONDecodeError as e:
                if self.eof:
                    raise self.error(e.msg, e.pos) from None
            self._more()
            self.pos = _END.match(self.buf, self.pos).end()

    def items(self):
        m = self.match(_FIRST, _FIRST_PREFIX)
        if m is None:
            if not _OPEN.match(self.buf, self.pos):
                raise self.error("expected '{' (a question file is one object keyed by question id)")
            raise self.error("expected a question id string or '}'", _OPEN.match(self.buf, self.pos).end())
        while m.group(1) is None:
            key = m.group(2)
            yield (json.loads(f'"{key}"') if "\\" in key else key), self.value()
            m = self.match(_NEXT, _NEXT_PREFIX)
            if m is None:
                raise self.error("expected ',' and a question id string, or '}'")
        while True:
            end = _END.match(self.buf, self.pos).end()
            if end < len(self.buf):
                raise self.error("unexpected text after the closing '}'", end)
            if self.eof:
                return
            self.pos = end
            self._more()



def open_text(path: str):
    """A question file opened as UTF-8 text, a leading byte-order mark skipped."""
    return open(path, encoding="utf-8-sig")


def object_items(path: str) -> Iterator[Tuple[str, object]]:
    """(key, value) of each member of the top-level JSON object in ``path``, streamed."""
    with open_text(path) as f:
        try:
            yield from _ObjectStream(f, path).items()
        except UnicodeDecodeError as e:
            raise QuestionFileError(f"{path}: not UTF-8 text ({e})") from None


def json_lines(path: str) -> Iterator[Tuple[int, object]]:
    """(line number, value) of each non-blank line of a JSON-lines file."""
    with open_text(path) as f:
        try:
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield line_no, json.loads(line)
                    except json.JSONDecodeError as e:
                        raise QuestionFileError(f"{path}, line {line_no} column {e.colno}: malformed JSON: "
                                                f"{e.msg}") from None
        except UnicodeDecodeError as e:
            raise QuestionFileError(f"{path}: not UTF-8 text ({e})") from None
