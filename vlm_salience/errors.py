"""Errors a user can fix. The CLI prints them as one clear message, without a traceback."""

from __future__ import annotations

import re
from pathlib import Path


class VlmSalienceError(Exception):
    """Base class: anything raised as this is the user's to fix, and says how."""


class ConfigError(VlmSalienceError):
    """A YAML config is missing, malformed, or names a field or value the code does not know."""


class DataError(VlmSalienceError):
    """Bad input data. The message names the file, the row (as a line number) and the column."""

    def __init__(
        self,
        problem: str,
        *,
        file: str | Path | None = None,
        row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem, self.file, self.row, self.column, self.fix = problem, file, row, column, fix
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"line {row}")
        if column is not None:
            where.append(f"column '{column}'")
        text = (", ".join(where) + ": " if where else "") + problem
        if fix:
            text += f" Fix: {fix}"
        super().__init__(text)


_DROP_ADVICE = re.compile(r",? or pass --drop-invalid(?= *[.;)]| *$)|,? pass --drop-invalid to skip [^.]*")


def without_drop_advice(message: str) -> str:
    """A message shown for a row or clip that --drop-invalid already skipped, less its advice to pass the flag."""
    return _DROP_ADVICE.sub("", message)
