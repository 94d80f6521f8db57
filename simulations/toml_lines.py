"""Where a key of a TOML document stands: the line of `$.step[2].connect`, whether the step is a
`[[step]]` table or an inline table in an array, so that an error names the line it is about.

`tomllib` keeps no positions, so this reads the text once more, knowing only as much TOML as it
takes to follow keys, tables and arrays. It runs on text `tomllib` has already accepted, and on
anything else it returns what it found before it lost its way.
"""

from __future__ import annotations

import contextlib
import re

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_PATH_PART = re.compile(r"\.(\w+)|\[(\d+)\]")


def line_of(text: str, path: str) -> int | None:
    """The line of the deepest known part of `path` (`.step[2].connect`), or `None`."""
    lines = key_lines(text)
    parts: list[str | int] = [
        int(index) if index else key for key, index in _PATH_PART.findall(path)
    ]
    while parts:
        line = lines.get(tuple(parts))
        if line is not None:
            return line
        parts.pop()
    return None


def key_lines(text: str) -> dict[Path, int]:
    """The line where each key, table and array element of `text` begins."""
    scanner = _Scanner(text)
    with contextlib.suppress(ValueError, IndexError, RecursionError):
        scanner.document()
    return scanner.lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.at = 0
        self.line = 1
        self.lines: dict[Path, int] = {}
        self._arrays: dict[Path, int] = {}
        """The last index of each array of tables (`[[step]]`)."""

    def document(self) -> None:
        table: Path = ()
        while True:
            self._skip(newlines=True)
            if self.at >= len(self.text):
                return
            start = self.at
            if self._peek() == "[":
                table = self._header()
            else:
                self._pair(table)
            self._skip(newlines=False)
            if self.at == start:
                raise ValueError("no progress")

    def _header(self) -> Path:
        array = self.text.startswith("[[", self.at)
        self._advance(2 if array else 1)
        line = self.line
        key = self._key()
        path = (*self._resolve(key[:-1]), key[-1])
        self._skip(newlines=False)
        self._advance(2 if array else 1)
        if array:
            index = self._arrays.get(path, -1) + 1
            self._arrays[path] = index
            self.lines.setdefault(path, line)
            path = (*path, index)
        self.lines.setdefault(path, line)
        return path

    def _resolve(self, key: Path) -> Path:
        """`key` with the current index inserted after each array of tables it passes through."""
        path: Path = ()
        for part in key:
            path = (*path, part)
            if path in self._arrays:
                path = (*path, self._arrays[path])
        return path

    def _pair(self, table: Path) -> None:
        line = self.line
        path = (*table, *self._key())
        self._skip(newlines=False)
        if self._peek() != "=":
            raise ValueError("a key without a value")
        self._advance(1)
        self._skip(newlines=False)
        self.lines.setdefault(path, line)
        self._value(path)

    def _key(self) -> Path:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            quote = self._peek()
            if quote in ('"', "'"):
                start = self.at + 1
                self._string()
                parts.append(self.text[start : self.at - 1])
            else:
                match = _BARE_KEY.match(self.text, self.at)
                if match is None:
                    raise ValueError("not a key")
                parts.append(match.group())
                self._advance(match.end() - self.at)
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance(1)

    def _value(self, path: Path) -> None:
        first = self._peek()
        if first in ('"', "'"):
            self._string()
        elif first == "[":
            self._advance(1)
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() in ("]", ""):
                    self._advance(1)
                    return
                element = (*path, index)
                self.lines.setdefault(element, self.line)
                self._value(element)
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance(1)
                index += 1
        elif first == "{":
            self._advance(1)
            while True:
                self._skip(newlines=False)
                if self._peek() in ("}", ""):
                    self._advance(1)
                    return
                self._pair(path)
                self._skip(newlines=False)
                if self._peek() == ",":
                    self._advance(1)
        else:
            start = self.at
            while self._peek() not in (",", "]", "}", "\n", "#", ""):
                self._advance(1)
            if self.at == start:
                raise ValueError("not a value")

    def _string(self) -> None:
        quote = self._peek()
        delimiter = quote * 3 if self.text.startswith(quote * 3, self.at) else quote
        self._advance(len(delimiter))
        while not self.text.startswith(delimiter, self.at):
            if self.at >= len(self.text):
                raise ValueError("an unterminated string")
            self._advance(2 if quote == '"' and self._peek() == "\\" else 1)
        self._advance(len(delimiter))

    def _skip(self, *, newlines: bool) -> None:
        """Pass over spaces, tabs, comments, and (with `newlines`) line ends."""
        while self.at < len(self.text):
            char = self.text[self.at]
            if char in " \t\r" or (char == "\n" and newlines):
                self._advance(1)
            elif char == "#":
                end = self.text.find("\n", self.at)
                self._advance((len(self.text) if end < 0 else end) - self.at)
            else:
                return

    def _peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def _advance(self, count: int) -> None:
        end = min(self.at + count, len(self.text))
        self.line += self.text.count("\n", self.at, end)
        self.at = end
