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


# A top-level key's array: '[' and the first element (or ']'), then ',' and the next (or ']').
_ARRAY_OPEN = re.compile(_WS + r"\[" + _WS + r"(?:(\])|(?=[^ \t\n\r]))")
_ARRAY_OPEN_PREFIX = re.compile(_WS + r"(?:\[" + _WS + ")?")
_ARRAY_NEXT = re.compile(_WS + r"(?:(\])|," + _WS + ")")
_ARRAY_NEXT_PREFIX = re.compile(_WS)
_NUMBER_TAIL = re.compile(r"[0-9.eE+\-]*\Z")


class _KeyArrayStream(_ObjectStream):
    """Walks a top-level object and streams the elements of one member's array; every other member
    (VQA v2's ``info``, ``license``, ...) is decoded and dropped."""

    def __init__(self, f, path: str):
        super().__init__(f, path)
        scan = self.scan

        def scan_whole(buf: str, pos: int):
            # A number cut after its '.' or 'e' by the buffer's end scans as a shorter number that
            # seems complete: while the rest of the buffer could belong to it, read more first.
            obj, end = scan(buf, pos)
            if not self.eof and _NUMBER_TAIL.match(buf, end):
                raise StopIteration(pos)
            return obj, end
        self.scan = scan_whole

    def key_elements(self, key: str):
        found = False
        for name, _ in self._members(key):
            if name == key:
                found = True
                yield from self._elements(key)
        if not found:
            raise QuestionFileError(f"{self.path}: no top-level {key!r} (expected an object with a "
                                    f"{key!r} array)")

    def _members(self, key: str):
        # items(), except that the wanted member's value is left for _elements to stream
        m = self.match(_FIRST, _FIRST_PREFIX)
        if m is None:
            raise self.error(f"expected '{{' (an object with a {key!r} array)")
        while m.group(1) is None:
            name = m.group(2)
            name = json.loads(f'"{name}"') if "\\" in name else name
            yield name, (None if name == key else self.value())
            m = self.match(_NEXT, _NEXT_PREFIX)
            if m is None:
                raise self.error("expected ',' and a key string, or '}'")
        end = _END.match(self.buf, self.pos).end()
        while end == len(self.buf) and not self.eof:
            self.pos = end
            self._more()
            end = _END.match(self.buf, self.pos).end()
        if end < len(self.buf):
            raise self.error("unexpected text after the closing '}'", end)

    def _elements(self, key: str):
        m = self.match(_ARRAY_OPEN, _ARRAY_OPEN_PREFIX)
        if m is None:
            raise self.error(f"expected '[': the value of {key!r} must be an array")
        if m.group(1) is not None:
            return
        while True:
            yield self.value()
            m = self.match(_ARRAY_NEXT, _ARRAY_NEXT_PREFIX)
            if m is None:
                raise self.error(f"expected ',' and the next element of {key!r}, or ']'")
            if m.group(1) is not None:
                return


def key_array_items(path: str, key: str) -> Iterator[object]:
    """Each element of the array under the top-level ``key`` of the JSON object in ``path``,
    streamed (e.g. ``key_array_items("v2_mscoco_val2014_annotations.json", "annotations")``: a
    200 MB file, one annotation at a time). Raises ``QuestionFileError`` naming the file, line and
    column of malformed JSON, or the missing key."""
    with open_text(path) as f:
        try:
            yield from _KeyArrayStream(f, path).key_elements(key)
        except UnicodeDecodeError as e:
            raise QuestionFileError(f"{path}: not UTF-8 text ({e})") from None
