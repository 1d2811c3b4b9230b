"""Reading rating tables and checking them row by row, with errors that name file, line and column.

In strict mode the first problem raises a DataError. With drop_invalid=True each bad row is skipped and recorded
in a DropReport (how many, and why), so a researcher can see exactly what was left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_salience.data.corpus import DropReport, RatingScale
from vlm_salience.errors import DataError


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (UTF-8, a byte-order mark allowed) with every column kept as text until checked."""
    if not path.is_file():
        raise DataError("file not found.", file=path, fix="check 'root' and 'files' in the data config.")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"not UTF-8 text ({exc.reason} at byte {exc.start}).", file=path,
                        fix="save the file as UTF-8.") from None
    except pd.errors.EmptyDataError:
        raise DataError("the file is empty (no header row).", file=path) from None
    except pd.errors.ParserError as exc:
        raise DataError(f"not a well-formed CSV ({exc}).", file=path) from None
    df.columns = [c.strip() for c in df.columns]
    return df


_MISSING = {"", "na", "nan", "null", "none"}


class TableChecker:
    """Row checks on one table; tracks which rows survive."""

    def __init__(self, df: pd.DataFrame, file: Path, *, drop_invalid: bool, report: DropReport) -> None:
        self.df, self.file, self.drop_invalid, self.report = df, file, drop_invalid, report
        self.ok = np.ones(len(df), dtype=bool)

    def line(self, pos: int) -> int:
        return pos + 2  # line 1 is the header

    def require_columns(self, columns: Iterable[str], what: str = "column") -> None:
        have = list(self.df.columns)
        for col in columns:
            if col not in self.df.columns:
                close = [c for c in have if c.lower() == col.lower()]
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise DataError(
                    f"missing {what} '{col}'{hint}.", file=self.file, column=col,
                    fix=f"the file has columns {have}; correct the name in the data config or the file.",
                )

    def _fail(self, bad: np.ndarray, column: str, reason: str, values: pd.Series | None = None) -> None:
        bad = bad & self.ok
        if not bad.any():
            return
        positions = np.flatnonzero(bad)
        first = positions[0]
        shown = "" if values is None else f" (value {values.iloc[first]!r})"
        if not self.drop_invalid:
            raise DataError(f"{reason}{shown}.", file=self.file, row=self.line(first), column=column,
                            fix="correct the row, or pass --drop-invalid to skip such rows.")
        for pos in positions:
            v = "" if values is None else f" {values.iloc[pos]!r}"
            self.report.add(self.file.name, f"{reason} in column '{column}'", f"line {self.line(pos)}{v}")
        self.ok &= ~bad

    def text(self, column: str) -> np.ndarray:
        """A non-empty text column (ids, labels)."""
        values = self.df[column].astype(str).str.strip()
        self._fail(values.str.lower().isin(_MISSING).to_numpy(), column, "empty or missing value", values)
        return values.to_numpy(dtype=object)

    def numbers(self, column: str, scale: RatingScale | None = None, *, positive: bool = False) -> np.ndarray:
        """A numeric column: NaN/missing, non-numbers and values outside `scale` are problems."""
        raw = self.df[column].astype(str).str.strip().str.replace(",", "", regex=False)
        missing = raw.str.lower().isin(_MISSING).to_numpy()
        self._fail(missing, column, "missing value (NaN)", self.df[column])
        values = pd.to_numeric(raw.where(~missing, "nan"), errors="coerce").to_numpy(dtype=float)
        self._fail(np.isnan(values) & ~missing, column, "not a number", self.df[column])
        self._fail(np.isinf(values), column, "not a finite number", self.df[column])
        if scale is not None:
            out = ~scale.contains(np.nan_to_num(values, nan=scale.low))
            self._fail(out, column, f"rating outside the scale {scale.low:g}-{scale.high:g}", self.df[column])
        if positive:
            self._fail(np.nan_to_num(values, nan=1.0) <= 0, column, "must be positive", self.df[column])
        return values

    def labels(self, column: str, allowed: Iterable[str]) -> np.ndarray:
        allowed = list(allowed)
        values = self.text(column)
        bad = ~np.isin(values, np.asarray(allowed, dtype=object))
        self._fail(bad, column, f"unknown emotion name (expected one of {allowed})", self.df[column])
        return values

    def unique(self, values: np.ndarray, column: str) -> None:
        s = pd.Series(values)
        dup = (s.duplicated(keep="first") & self.ok).to_numpy()
        self._fail(dup, column, "duplicate id", s)

    def mark(self, bad: np.ndarray, column: str, reason: str, values: pd.Series | None = None) -> None:
        self._fail(np.asarray(bad, dtype=bool), column, reason, values)

    def files_exist(self, column: str, folder: Path) -> np.ndarray:
        names = self.text(column)
        paths = np.array([folder / str(n) for n in names], dtype=object)
        exists = np.array([p.exists() for p in paths])
        self._fail(~exists, column, f"missing media file (looked in {folder})", self.df[column])
        return paths


def join_key(df: pd.DataFrame, columns: list[str]) -> np.ndarray:
    """A readable id from one or more columns: the value itself, or 'a=1,b=2'."""
    if len(columns) == 1:
        return df[columns[0]].astype(str).str.strip().to_numpy(dtype=object)
    parts = [columns[0] + "=" + df[columns[0]].astype(str).str.strip()]
    for col in columns[1:]:
        parts.append("," + col + "=" + df[col].astype(str).str.strip())
    out = parts[0]
    for p in parts[1:]:
        out = out + p
    return out.to_numpy(dtype=object)
