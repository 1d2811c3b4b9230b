"""Loader for the Golden Balls ratings (Houlihan et al. 2022): expression-only and context-only ratings of the same
players, joined through the episode key. The corpus has no combined condition: methods can predict, not be scored.

A clip `257_2` is episode No. 257, player 2. Its outcome reads that player's own decision first:
CC both split, CD the player split and the other stole, DC the player stole, DD both stole.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from vlm_salience.data.config import GoldenBallsConfig
from vlm_salience.data.corpus import Corpus, DropReport, Face, Item, Judgements
from vlm_salience.data.situations import build_situations
from vlm_salience.data.tables import TableChecker, read_table
from vlm_salience.data.valence import valence_weights
from vlm_salience.errors import DataError

_DECISION = {1: "C", 2: "D"}
_STIMULUS = re.compile(r"^(\d+)_([12])$")


def load_golden_balls(cfg: GoldenBallsConfig, *, drop_invalid: bool = False) -> Corpus:
    report = DropReport()
    scale = cfg.scale.build()
    key_path = cfg.root / cfg.files.episode_key
    episodes = _episode_key(key_path)

    def judgements(path, rater_col: str, condition) -> tuple[pd.DataFrame, TableChecker, Judgements, list]:
        df = read_table(path)
        checker = TableChecker(df, path, drop_invalid=drop_invalid, report=report)
        checker.require_columns([rater_col, "stimulus", "pot", *cfg.emotions])
        rater = checker.text(rater_col)
        stimulus = checker.text("stimulus")
        emotions = np.column_stack([checker.numbers(e, scale) for e in cfg.emotions])
        checker.numbers("pot", positive=True)
        contexts = []
        for pos, stim in enumerate(stimulus):
            ctx = _context(stim, episodes)
            contexts.append(ctx)
            if isinstance(ctx, str):
                checker.mark(np.arange(len(df)) == pos, "stimulus", ctx, df["stimulus"])
        j = Judgements(condition=condition, source=path.name, key=stimulus, rater=rater, emotions=emotions,
                       line=np.arange(len(df)) + 2)
        return df, checker, j, contexts

    expr_path, ctx_path = cfg.root / cfg.files.expression, cfg.root / cfg.files.context
    edf, ec, face_j, e_ctx = judgements(expr_path, "workerIdAnon", "face")
    cdf, cc, ctx_j, c_ctx = judgements(ctx_path, "subjectId", "context")
    cc.require_columns(["outcome"])
    outcome = cdf["outcome"].astype(str).str.strip()
    keyed = pd.Series([c["outcome"] if isinstance(c, dict) else "" for c in c_ctx])
    cc.mark((outcome != keyed).to_numpy(), "outcome",
            f"outcome disagrees with {cfg.files.episode_key} for this stimulus", cdf["outcome"])

    # One situation per player clip: the key's decisions and the rating file's pot (US dollars).
    rows = []
    for df, checker, contexts in ((edf, ec, e_ctx), (cdf, cc, c_ctx)):
        for pos in np.flatnonzero(checker.ok):
            rows.append({**contexts[pos], "pot": float(str(df["pot"].iloc[pos]).replace(",", ""))})
    sit_df = pd.DataFrame(rows).drop_duplicates("stimulus").reset_index(drop=True).astype(str)
    sc = TableChecker(sit_df, key_path, drop_invalid=drop_invalid, report=report)
    situations = build_situations(sit_df, sit_df["stimulus"].to_numpy(dtype=object), cfg.situation, sc)

    face_j = _keep(face_j, ec.ok)
    ctx_j = _keep(ctx_j, cc.ok)
    for j, path in ((face_j, expr_path), (ctx_j, ctx_path)):
        if len(j) == 0:
            raise DataError("no valid rows (an empty condition).", file=path)
    files = dict(zip(edf["stimulus"].astype(str), edf.get("stimFileName", pd.Series(dtype=str)).astype(str)))
    items = []
    for stim in dict.fromkeys(face_j.key):
        if stim not in situations:
            continue
        ep = stim.split("_")[0]
        items.append(Item(
            id=stim, face=Face(id=stim, text=None), situation=situations[stim],
            groups={"face": stim, "player": stim, "episode": ep, "situation": stim},
            meta={"video": files.get(stim, "")},
        ))
    categorical = tuple(f for f in cfg.situation.features
                        if any(isinstance(s.features[f], str) for s in situations.values()))
    return Corpus(
        name=cfg.name, labels=tuple(cfg.emotions), response="ratings", items=items, face_only=face_j,
        context_only=ctx_j, combined=None, scale=scale, valence_weights=valence_weights(cfg.valence, cfg.emotions),
        context_features=tuple(cfg.situation.features), categorical_features=categorical,
        context_interactions=tuple(tuple(i) for i in cfg.situation.interactions), dropped=report,
        root=cfg.root, situations=situations,
    )


def _keep(j: Judgements, ok: np.ndarray) -> Judgements:
    return Judgements(condition=j.condition, source=j.source, key=j.key[ok], rater=j.rater[ok],
                      emotions=j.emotions[ok], line=j.line[ok])


def _episode_key(path) -> dict[int, dict]:
    df = read_table(path)
    checker = TableChecker(df, path, drop_invalid=True, report=DropReport())
    checker.require_columns(["No.", "Pot", "P1.Decision", "P2.Decision"])
    out = {}
    for pos, row in df.iterrows():
        try:
            no = int(float(row["No."]))
        except ValueError:
            raise DataError("episode number is not a number.", file=path, row=pos + 2, column="No.") from None
        pot = str(row["Pot"]).replace(",", "").strip()
        out[no] = {"pot_gbp": pot, "p1": str(row["P1.Decision"]).strip(), "p2": str(row["P2.Decision"]).strip()}
    return out


def _context(stimulus: str, episodes: dict[int, dict]) -> dict | str:
    """The situation fields of a player clip, or the reason it has none."""
    m = _STIMULUS.match(stimulus)
    if not m:
        return f"stimulus '{stimulus}' is not of the form <episode>_<player 1 or 2>"
    ep, player = int(m.group(1)), int(m.group(2))
    if ep not in episodes:
        return f"episode {ep} is not in the episode key"
    e = episodes[ep]
    try:
        own, other = (_DECISION[int(float(e[f"p{p}"]))] for p in (player, 3 - player))
    except (ValueError, KeyError):
        return f"episode {ep} has no decisions in the episode key"
    pot_gbp = float(e["pot_gbp"]) if e["pot_gbp"] not in ("", "NA") else math.nan
    words = {"C": "split", "D": "steal"}
    return {"stimulus": stimulus, "episode": ep, "player": player, "own_decision": words[own],
            "other_decision": words[other], "outcome": own + other, "pot_gbp": pot_gbp}
