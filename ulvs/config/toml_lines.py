"""Where a key sits in a TOML document: the line numbers ``tomllib`` does not give.

``KeyLines(text).line(path)`` is the line of the key or table at ``path`` -- a tuple of keys
and array indices as the parsed document has them, e.g. ``("service", 1, "dest", 0, "weight")``
-- or, failing that, of its nearest enclosing key or table.  Best effort, and only for
documents ``tomllib`` accepted: it follows table headers (``[a.b]``, ``[[a.b]]``, counting the
elements of arrays of tables per parent), ``key = value`` lines with dotted and quoted keys,
and skips the inside of multi-line strings, arrays and inline tables.  Pure.
"""

from __future__ import annotations

import re

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")


def key_parts(text: str) -> list[str] | None:
    """The parts of a (dotted, possibly quoted) TOML key, or None if it is not one."""
    parts: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            return None
        if text[i] in "\"'":
            quote = text[i]
            j = i + 1
            while j < n and text[j] != quote:
                j += 2 if quote == '"' and text[j] == "\\" else 1
            if j >= n:
                return None
            parts.append(text[i + 1:j])
            i = j + 1
        else:
            m = _BARE.match(text, i)
            if m is None:
                return None
            parts.append(m.group())
            i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i == n:
            return parts
        if text[i] != ".":
            return None
        i += 1


def _key_end(line: str) -> int:
    """Index of the ``=`` ending the key of a ``key = value`` line (outside quotes), or -1."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "=":
            return i
        elif c == "#":
            return -1
    return -1


def _header_end(line: str, closing: str) -> int:
    """Index of the ``]``/``]]`` closing a table header (outside quotes), or -1."""
    quote = ""
    for i in range(len(line)):
        c = line[i]
        if quote:
            if c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif line.startswith(closing, i):
            return i
    return -1


def scan_value(text: str, multiline: str, depth: int) -> tuple[str, int]:
    """Carry the lexical state of a value over ``text``: the open multi-line string delimiter
    (``\"\"\"``, ``'''`` or empty) and the nesting depth of arrays and inline tables."""
    i, n = 0, len(text)
    while i < n:
        if multiline:
            end = text.find(multiline, i)
            if end < 0:
                return multiline, depth
            i = end + 3
            multiline = ""
            continue
        c = text[i]
        if text.startswith('"""', i) or text.startswith("'''", i):
            multiline = text[i:i + 3]
            i += 3
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
        elif c == "'":
            end = text.find("'", i + 1)
            i = n if end < 0 else end + 1
        elif c == "#":
            break
        else:
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
            i += 1
    return multiline, depth


class KeyLines:
    """Line numbers (1-based) of the keys and tables of one TOML document."""

    def __init__(self, text: str) -> None:
        self._lines: dict[KeyPath, int] = {}
        self._arrays: dict[KeyPath, int] = {}    # array-of-tables path -> elements seen so far
        self._scan(text)

    def line(self, path: KeyPath) -> int | None:
        for k in range(len(path), 0, -1):
            found = self._lines.get(path[:k])
            if found is not None:
                return found
        return None

    def _resolve(self, parts: list[str]) -> KeyPath:
        """A header's dotted name as a concrete path: arrays of tables resolve to their latest
        element."""
        path: KeyPath = ()
        for part in parts:
            path += (part,)
            count = self._arrays.get(path)
            if count:
                path += (count - 1,)
        return path

    def _record(self, path: KeyPath, lineno: int) -> None:
        self._lines.setdefault(path, lineno)

    def _scan(self, text: str) -> None:
        current: KeyPath = ()
        multiline, depth = "", 0
        for lineno, raw in enumerate(text.splitlines(), 1):
            if multiline or depth > 0:
                multiline, depth = scan_value(raw, multiline, depth)
                continue
            s = raw.strip()
            if not s or s.startswith("#"):
                continue
            if s.startswith("[["):
                end = _header_end(s, "]]")
                parts = key_parts(s[2:end]) if end > 0 else None
                if parts:
                    array = self._resolve(parts[:-1]) + (parts[-1],)
                    count = self._arrays.get(array, 0)
                    self._arrays[array] = count + 1
                    current = array + (count,)
                    self._record(array, lineno)
                    self._record(current, lineno)
                continue
            if s.startswith("["):
                end = _header_end(s, "]")
                parts = key_parts(s[1:end]) if end > 0 else None
                if parts:
                    current = self._resolve(parts)
                    self._record(current, lineno)
                continue
            eq = _key_end(s)
            parts = key_parts(s[:eq]) if eq > 0 else None
            if parts:
                self._record(current + tuple(parts), lineno)
                multiline, depth = scan_value(s[eq + 1:], "", 0)
