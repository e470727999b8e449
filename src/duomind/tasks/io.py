"""JSONL and text files: strict reading with file:line errors, atomic writing."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from duomind.tasks.record import Task


class DataError(ValueError):
    """A data file is missing, empty or malformed; the message names the file (and line) and the fix."""


def _lines(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such file. Make task data with `duomind data make --out_dir {path.parent}` "
            "(see `duomind data make --help`)"
        )
    found = False
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            found = True
            yield lineno, obj
    if not found:
        raise DataError(f"{path} is empty: it holds no records. Regenerate it with `duomind data make`")


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a JSONL file (blank lines skipped).

    Raises:
        DataError: If the file is missing or empty, or a line is not a JSON object (names file:line).
    """
    return [obj for _, obj in _lines(path)]


def read_tasks(path: str | os.PathLike) -> list[Task]:
    """Task records of a JSONL file such as `tasks.jsonl` or `heldout.jsonl`, validated.

    Raises:
        DataError: As `read_jsonl`, or if a record lacks a field or has a wrong type (names file:line).
    """
    tasks = []
    for lineno, obj in _lines(path):
        try:
            tasks.append(Task.from_dict(obj))
        except ValueError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
    return tasks


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[str]], None]) -> Path:
    # Temp file in the same directory + fsync + rename: readers see the old file or the new one, never half.
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable; not possible on every platform
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def write_jsonl(path: str | os.PathLike, records: Iterable[Task | dict[str, Any]]) -> Path:
    """Write records (dicts or `Task`s) one JSON object a line, atomically; returns the path."""

    def write(f: IO[str]) -> None:
        for r in records:
            f.write(json.dumps(r.to_dict() if isinstance(r, Task) else r, ensure_ascii=False) + "\n")

    return _atomic_write(path, write)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically; returns the path."""
    return _atomic_write(path, lambda f: f.write(text))
