"""Loader for the USC Split-Steal manifest (the format is documented in the README).

trials.csv: one row per trial: trial_id, participant, round, own_decision, partner_decision (split|steal),
  outcome (CC/CD/DC/DD, optional: derived and checked), pot, payoff, and the face media in one of face_image,
  face_frames (a folder of frames) or face_video; paths relative to the manifest folder.
ratings.csv: one row per observer judgement: trial_id, condition (face|context|combined), rater, valence on the
  declared scale, and the emotion choice: an `emotion` column holding one label, or one column per label holding
  counts or a distribution.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from vlm_salience.data.config import SituationConfig, SplitStealConfig
from vlm_salience.data.corpus import CONDITIONS, Corpus, DropReport, Face, Item, Judgements, Situation
from vlm_salience.data.situations import build_situations
from vlm_salience.data.tables import TableChecker, read_table
from vlm_salience.errors import DataError

DECISIONS = ("split", "steal")
MEDIA_COLUMNS = {"face_image": "image", "face_frames": "frames", "face_video": "video"}
FRAME_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def outcome_code(own: str, partner: str) -> str:
    return ("C" if own == "split" else "D") + ("C" if partner == "split" else "D")


def load_split_steal(cfg: SplitStealConfig, *, drop_invalid: bool = False) -> Corpus:
    report = DropReport()
    root = Path(cfg.root)
    labels = list(cfg.labels)
    if cfg.neutral_label is not None and cfg.neutral_label not in labels:
        raise DataError(f"neutral_label '{cfg.neutral_label}' is not one of the labels {labels}.",
                        fix="add it to labels or unset neutral_label.")
    trials_path = root / cfg.files.trials
    tdf = read_table(trials_path)
    tc = TableChecker(tdf, trials_path, drop_invalid=drop_invalid, report=report)
    tc.require_columns(["trial_id", "participant", "round", "own_decision", "partner_decision", "pot"])
    trial_id = tc.text("trial_id")
    tc.unique(trial_id, "trial_id")
    participant = tc.text("participant")
    own = _decisions(tc, "own_decision")
    partner = _decisions(tc, "partner_decision")
    tc.numbers("pot", positive=True)
    codes = np.array([outcome_code(o, p) for o, p in zip(own, partner)], dtype=object)
    if "outcome" in tdf.columns:
        given = tdf["outcome"].astype(str).str.strip().str.upper().to_numpy(dtype=object)
        tc.mark(given != codes, "outcome", "outcome disagrees with own_decision/partner_decision", tdf["outcome"])
    tdf = tdf.assign(outcome=codes)
    media_col = next((c for c in MEDIA_COLUMNS if c in tdf.columns), None)
    media = tc.files_exist(media_col, root) if media_col else None
    given_expr = None
    if cfg.expressivity_column:
        tc.require_columns([cfg.expressivity_column])
        given_expr = tc.numbers(cfg.expressivity_column)
    situations = build_situations(tdf, trial_id, _without_levels(cfg.situation), tc)
    if cfg.situation.outcomes is not None and cfg.situation.outcomes.levels is not None:
        situations = _with_levels(situations, cfg.situation, trials_path)

    ratings_path = root / cfg.files.ratings
    rdf = read_table(ratings_path)
    rc = TableChecker(rdf, ratings_path, drop_invalid=drop_invalid, report=report)
    rc.require_columns(["trial_id", "condition", "rater", "valence"])
    r_trial = rc.text("trial_id")
    condition = _conditions(rc)
    rater = rc.text("rater")
    valence = rc.numbers("valence", cfg.valence_scale.build())
    emotions = _choices(rc, labels)
    known = np.asarray(sorted(set(trial_id[tc.ok])), dtype=object)
    rc.mark(~np.isin(r_trial, known), "trial_id", f"trial not in {cfg.files.trials} (or dropped there)",
            rdf["trial_id"])

    items = []
    for pos in np.flatnonzero(tc.ok):
        tid = str(trial_id[pos])
        kind = MEDIA_COLUMNS[media_col] if media_col else None
        paths: tuple[Path, ...] = ()
        if media is not None:
            paths = _frames(media[pos]) if kind == "frames" else (media[pos],)
        items.append(Item(
            id=tid, face=Face(id=tid, media=paths, media_kind=kind), situation=situations[tid],
            groups={"face": tid, "trial": tid, "participant": str(participant[pos]),
                    "round": str(tdf["round"].iloc[pos])},
            expressivity=None if given_expr is None else float(given_expr[pos]),
            meta={"own_decision": own[pos], "partner_decision": partner[pos], "outcome": codes[pos],
                  "pot": float(str(tdf["pot"].iloc[pos]).replace(",", ""))},
        ))
    split = {}
    for cond in CONDITIONS:
        mask = rc.ok & (condition == cond)
        split[cond] = Judgements(condition=cond, source=ratings_path.name, key=r_trial[mask], rater=rater[mask],
                                 emotions=emotions[mask], valence=valence[mask], line=np.flatnonzero(mask) + 2)
    for cond, name in (("face", "face-only"), ("context", "context-only")):
        if len(split[cond]) == 0:
            raise DataError(f"no valid {name} ratings (condition '{cond}' is empty).", file=ratings_path,
                            column="condition")
    with_face = set(split["face"].key)
    items = [it for it in items if it.id in with_face or not _flag(report, ratings_path, it.id, drop_invalid)]
    categorical = tuple(f for f in cfg.situation.features
                        if any(isinstance(s.features[f], str) for s in situations.values()))
    return Corpus(
        name=cfg.name, labels=tuple(labels), response="choice", items=items, face_only=split["face"],
        context_only=split["context"], combined=split["combined"] if len(split["combined"]) else None,
        valence_scale=cfg.valence_scale.build(), neutral_label=cfg.neutral_label,
        context_features=tuple(cfg.situation.features), categorical_features=categorical,
        context_interactions=tuple(tuple(i) for i in cfg.situation.interactions), dropped=report,
        root=root, situations=situations,
    )


def _without_levels(sit: SituationConfig) -> SituationConfig:
    """Fixed categorical outcome levels are attached here (`_with_levels`); the generic builder reads columns."""
    if sit.outcomes is None or sit.outcomes.levels is None:
        return sit
    return sit.model_copy(update={"outcomes": None})


def _with_levels(situations: dict[str, Situation], sit: SituationConfig, file: Path) -> dict[str, Situation]:
    """Each situation's possible outcomes: the declared levels of one categorical feature (e.g. the joint
    decisions), every other feature as observed (so a derived feature must not depend on this one)."""
    oc = sit.outcomes
    assert oc is not None and oc.levels is not None
    if oc.feature not in sit.features:
        raise DataError(f"situation.outcomes.feature '{oc.feature}' is not one of situation.features "
                        f"{sit.features}.", file=file, column=oc.feature,
                        fix="name the feature whose levels are the possible outcomes.")
    levels = list(oc.levels)
    probs = np.array([oc.levels[k] for k in levels], dtype=float)
    probs = probs / probs.sum()
    out = {}
    for sid, s in situations.items():
        if str(s.features[oc.feature]) not in levels:
            raise DataError(f"situation '{sid}' has {oc.feature} = '{s.features[oc.feature]}', not one of the "
                            f"declared outcome levels {levels}.", file=file, column=oc.feature,
                            fix="list every level under situation.outcomes.levels.")
        outcomes = tuple((float(p), {**s.features, oc.feature: lev}) for p, lev in zip(probs, levels))
        out[sid] = replace(s, outcomes=outcomes)
    return out


def _flag(report: DropReport, path: Path, trial: str, drop_invalid: bool) -> bool:
    if not drop_invalid:
        raise DataError(f"trial '{trial}' has no face-only ratings (an empty condition).", file=path,
                        column="condition", fix="add its face-only ratings, or pass --drop-invalid.")
    report.add(path.name, "trial without face-only ratings", trial)
    return False


def _decisions(checker: TableChecker, column: str) -> np.ndarray:
    values = checker.text(column)
    lowered = np.array([str(v).lower() for v in values], dtype=object)
    checker.mark(~np.isin(lowered, np.array(DECISIONS, dtype=object)), column, "decision must be split or steal",
                 checker.df[column])
    return lowered


def _conditions(checker: TableChecker) -> np.ndarray:
    values = np.array([str(v).lower() for v in checker.text("condition")], dtype=object)
    checker.mark(~np.isin(values, np.array(CONDITIONS, dtype=object)), "condition",
                 f"condition must be one of {list(CONDITIONS)}", checker.df["condition"])
    return values


def _choices(checker: TableChecker, labels: list[str]) -> np.ndarray:
    """(n, K) choice weights: one-hot from an `emotion` column, else per-label counts or probabilities."""
    df = checker.df
    if "emotion" in df.columns:
        chosen = checker.labels("emotion", labels)
        return (np.asarray(chosen)[:, None] == np.asarray(labels, dtype=object)[None, :]).astype(float)
    missing = [lab for lab in labels if lab not in df.columns]
    if missing:
        checker.require_columns(["emotion"] if len(missing) == len(labels) else missing, "emotion column")
    extra = [c for c in df.columns
             if c not in labels and c not in {"trial_id", "condition", "rater", "valence", "n_raters"}]
    if extra:
        raise DataError(f"unknown column(s) {extra}: not an emotion label of the config ({labels}).",
                        file=checker.file, column=extra[0], fix="rename the column or add the label to the config.")
    weights = np.column_stack([checker.numbers(lab) for lab in labels])
    checker.mark((np.nan_to_num(weights, nan=0.0) < 0).any(axis=1), labels[0], "negative emotion count")
    checker.mark(np.nan_to_num(weights, nan=0.0).sum(axis=1) <= 0, labels[0], "no emotion chosen (all zero)")
    return np.nan_to_num(weights, nan=0.0)


def _frames(folder: Path) -> tuple[Path, ...]:
    if not folder.is_dir():
        return (folder,)
    return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES))


def write_manifest(trials: pd.DataFrame, ratings: pd.DataFrame, out: Path) -> None:
    """Write the two manifest tables atomically (used by the synthetic generator)."""
    from vlm_salience.atomic import write_text

    write_text(out / "trials.csv", trials.to_csv(index=False))
    write_text(out / "ratings.csv", ratings.to_csv(index=False))
