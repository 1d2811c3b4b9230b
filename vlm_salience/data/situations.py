"""Situations (context cues) from table rows: typed features, derived features, readable text, possible outcomes."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vlm_salience.data.config import SituationConfig
from vlm_salience.data.corpus import Situation
from vlm_salience.data.tables import TableChecker
from vlm_salience.errors import ConfigError, DataError


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Columns whose non-empty values are all numbers become floats; the rest stay text (categorical)."""
    out = df.copy()
    for col in out.columns:
        raw = out[col].astype(str).str.strip().str.replace(",", "", regex=False)
        filled = raw[~raw.str.lower().isin({"", "na", "nan", "null", "none"})]
        num = pd.to_numeric(filled, errors="coerce")
        if len(filled) and num.notna().all():
            out[col] = pd.to_numeric(raw.where(raw.isin(filled), "nan"), errors="coerce")
    return out


def _derive(df: pd.DataFrame, derived: dict[str, str], file: Path, bins=None) -> pd.DataFrame:
    df = df.copy()
    for name, expr in derived.items():
        try:
            df[name] = df.eval(expr, engine="python")
        except Exception as exc:  # pandas raises several types for a bad expression
            raise DataError(
                f"cannot compute derived feature '{name}' = '{expr}' ({exc}).", file=file, column=name,
                fix=f"use columns of the file ({list(df.columns)}) in situation.derived.",
            ) from None
    for name, b in (bins or {}).items():
        if b.column not in df.columns:
            raise DataError(f"situation.bins.{name} names column '{b.column}', which the file does not have.",
                            file=file, column=b.column)
        values = pd.to_numeric(df[b.column], errors="coerce").to_numpy(dtype=float)
        idx = np.searchsorted(np.asarray(b.edges, dtype=float), values, side="right")
        df[name] = np.where(np.isfinite(values), np.asarray(b.labels, dtype=object)[idx], "")
    return df


def template_fields(template: str) -> list[str]:
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


def render_text(template: str, row: dict[str, Any], *, where: str) -> str:
    try:
        return template.format_map(row)
    except KeyError as exc:
        raise ConfigError(f"{where}: situation.text names {exc} which is not a column or derived feature.") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where}: situation.text cannot format a row ({exc}).") from None


def build_situations(
    df: pd.DataFrame, ids: np.ndarray, cfg: SituationConfig, checker: TableChecker
) -> dict[str, Situation]:
    """One Situation per distinct id among the rows still marked valid by `checker`."""
    file = checker.file
    typed = _derive(_typed(df), cfg.derived, file, cfg.bins)
    for feat in cfg.features:
        if feat not in typed.columns:
            raise DataError(f"missing context feature '{feat}'.", file=file, column=feat,
                            fix="name a column of the file or a situation.derived feature.")
        values = typed[feat]
        if pd.api.types.is_numeric_dtype(values):
            checker.mark(~np.isfinite(values.to_numpy(dtype=float)), feat, "missing or non-finite context feature",
                         df[feat] if feat in df.columns else None)
        else:
            checker.mark(values.astype(str).str.strip().str.lower().isin({"", "na", "nan"}).to_numpy(), feat,
                         "missing context feature", values)
    needed = list(dict.fromkeys(cfg.features + template_fields(cfg.text)))
    if cfg.outcomes is not None:
        for col in [cfg.outcomes.feature, *cfg.outcomes.values, *cfg.outcomes.probs]:
            if col not in typed.columns:
                raise DataError(f"missing outcome column '{col}'.", file=file, column=col,
                                fix="correct situation.outcomes in the data config.")
        for col in cfg.outcomes.values + cfg.outcomes.probs:
            if not pd.api.types.is_numeric_dtype(typed[col]):
                typed[col] = pd.to_numeric(typed[col], errors="coerce")
            checker.mark(~np.isfinite(typed[col].to_numpy(dtype=float)), col, "missing outcome value", df[col])
    situations: dict[str, Situation] = {}
    rows = typed.to_dict("records")
    for pos in np.flatnonzero(checker.ok):
        sid, row = str(ids[pos]), rows[pos]
        features = {f: _plain(row[f]) for f in cfg.features}
        if sid in situations:
            if situations[sid].features != features:
                checker.mark(np.arange(len(df)) == pos, cfg.features[0],
                             f"situation '{sid}' appears with different feature values")
            continue
        text = render_text(cfg.text, row, where=str(file))
        outcomes: tuple[tuple[float, dict[str, Any]], ...] = ()
        if cfg.outcomes is not None:
            outcomes = _outcomes(row, cfg, file)
        missing = [f for f in needed if f not in row]
        if missing:
            raise ConfigError(f"{file}: situation fields {missing} are neither columns nor derived features.")
        situations[sid] = Situation(id=sid, features=features, text=text, outcomes=outcomes)
    return situations


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return float(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    return str(v).strip()


def _outcomes(row: dict[str, Any], cfg: SituationConfig, file: Path) -> tuple[tuple[float, dict[str, Any]], ...]:
    oc = cfg.outcomes
    assert oc is not None
    probs = np.array([float(row[p]) for p in oc.probs])
    if probs.min() < 0 or probs.sum() <= 0:
        raise DataError(f"outcome probabilities {probs.tolist()} are not a distribution.", file=file,
                        column=oc.probs[0])
    probs = probs / probs.sum()
    frame = pd.DataFrame([dict(row) for _ in oc.values])
    frame[oc.feature] = [float(row[v]) for v in oc.values]
    frame = _derive(frame, cfg.derived, file, cfg.bins)
    return tuple(
        (float(p), {f: _plain(frame.iloc[i][f]) for f in cfg.features}) for i, p in enumerate(probs)
    )


def merge_situations(*parts: dict[str, Situation], file: str) -> dict[str, Situation]:
    merged: dict[str, Situation] = {}
    for part in parts:
        for sid, sit in part.items():
            if sid in merged and merged[sid].features != sit.features:
                raise DataError(
                    f"situation '{sid}' has features {merged[sid].features} in one file and {sit.features} in "
                    "another.", file=file, fix="make the situation columns agree across the condition files.")
            merged.setdefault(sid, sit)
    return merged
