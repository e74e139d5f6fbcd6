"""JSON lines: the one reader of the project's .jsonl files (a run's metrics and episodes, data sets, samples).

    for n, record in numbered_jsonl("runs/x/metrics.jsonl"): ...     # (line number, value), streamed
    records = read_jsonl("data/questions.jsonl")                     # the values, as a list

Blank lines are skipped; a file whose name ends in .gz is read gunzipped. A line that is not JSON (or
not UTF-8) is a `BadLine`, a ValueError naming the file and the line:

    runs/x/metrics.jsonl:3: not JSON (Expecting ',' delimiter: column 12)

A reader of a file that may be cut off mid-line (a run's file read while it is written) passes
`on_bad`, which gets each such error instead, and the line is skipped. `NaN` and `Infinity`, which
Python's json writes for those floats, read back as floats. This module is a leaf: it imports no
other module of the project, so every layer may use it.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class BadLine(ValueError):
    """A line that is not JSON: `path` and `line` (from 1) where it is, when known; `msg` json's own message and
    `column` where it stopped (None for bad UTF-8). A reader with its own wording names `reason`."""

    def __init__(self, msg: str, column: int | None = None, path: str | Path | None = None, line: int | None = None):
        self.msg, self.column, self.path, self.line = msg, column, path, line
        super().__init__(f"{f'{path}:{line}: ' if path is not None else ''}not JSON ({self.reason})")

    @property
    def reason(self) -> str:
        """Why, in a few words: "Expecting ',' delimiter: column 12"."""
        return self.msg if self.column is None else f"{self.msg}: column {self.column}"


def loads(text: str | bytes, errors: str = "strict") -> Any:
    """One line's JSON value; a `BadLine` (without a file) when it is not JSON or not UTF-8.

    `errors="replace"` reads bytes that are not UTF-8 as U+FFFD instead of failing on them."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors)
        return json.loads(text)
    except UnicodeDecodeError as e:
        raise BadLine(f"not UTF-8 at byte {e.start}") from None
    except json.JSONDecodeError as e:
        raise BadLine(e.msg, e.colno) from None


def parse_jsonl(
    lines: Iterable[str | bytes],
    path: str | Path,
    on_bad: Callable[[BadLine], None] | None = None,
    errors: str = "strict",
) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value) of each non-blank line of `lines`, read from `path` (named in errors)."""
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = loads(line.rstrip(b"\r\n" if isinstance(line, bytes) else "\r\n"), errors)  # json: no line break
        except BadLine as e:
            bad = BadLine(e.msg, e.column, path, n)
            if on_bad is None:
                raise bad from None
            on_bad(bad)
            continue
        yield n, value


def numbered_jsonl(
    path: str | Path, on_bad: Callable[[BadLine], None] | None = None, errors: str = "strict"
) -> Iterator[tuple[int, Any]]:
    """(line number from 1, value) of each non-blank line of the file at `path`, streamed (see the module docstring)."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        yield from parse_jsonl(f, path, on_bad, errors)


def read_jsonl(path: str | Path, on_bad: Callable[[BadLine], None] | None = None, errors: str = "strict") -> list[Any]:
    """The value of each non-blank line of the file at `path`, in order (see the module docstring)."""
    return [value for _, value in numbered_jsonl(path, on_bad, errors)]
