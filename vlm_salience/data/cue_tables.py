"""Loader for cue-judgement tables: a face-only, a context-only and a combined file of per-emotion ratings."""

from __future__ import annotations

import numpy as np

from vlm_salience.data.config import CueTablesConfig
from vlm_salience.data.corpus import Corpus, DropReport, Face, Item, Judgements
from vlm_salience.data.situations import build_situations, merge_situations
from vlm_salience.data.tables import TableChecker, join_key, read_table
from vlm_salience.data.valence import rated_valence, valence_weights
from vlm_salience.errors import DataError


def load_cue_tables(cfg: CueTablesConfig, *, drop_invalid: bool = False) -> Corpus:
    report = DropReport()
    scale = cfg.scale.build()
    weights = valence_weights(cfg.valence, cfg.emotions)

    def ratings(checker: TableChecker, condition, key_cols: list[str]) -> Judgements:
        checker.require_columns([cfg.rater, *key_cols, *cfg.emotions])
        for col in key_cols:
            checker.text(col)
        rater = checker.text(cfg.rater)
        emotions = np.column_stack([checker.numbers(e, scale) for e in cfg.emotions])
        valence = rated_valence(checker, cfg.valence)
        return Judgements(condition=condition, source=checker.file.name, key=np.empty(0, dtype=object),
                          rater=rater, emotions=emotions, valence=valence, line=np.arange(len(checker.df)) + 2)

    # Face-only.
    face_path = cfg.root / cfg.files.face
    face_df = read_table(face_path)
    fc = TableChecker(face_df, face_path, drop_invalid=drop_invalid, report=report)
    face_j = ratings(fc, "face", cfg.face.id)
    face_j.key = join_key(face_df, cfg.face.id)
    faces = _faces(face_df, face_j.key, cfg, fc)
    given = _given_expressivity(face_df, cfg, fc)
    face_j = _keep(face_j, fc.ok)

    # Context-only.
    ctx_path = cfg.root / cfg.files.context
    ctx_df = read_table(ctx_path)
    cc = TableChecker(ctx_df, ctx_path, drop_invalid=drop_invalid, report=report)
    cc.require_columns(cfg.situation.id, "situation id column")
    ctx_j = ratings(cc, "context", cfg.situation.id)
    ctx_j.key = join_key(ctx_df, cfg.situation.id)
    situations = build_situations(ctx_df, ctx_j.key, cfg.situation, cc)
    ctx_j = _keep(ctx_j, cc.ok)

    combined_j = None
    pairs: list[tuple[str, str]] = []
    if cfg.files.combined:
        comb_path = cfg.root / cfg.files.combined
        comb_df = read_table(comb_path)
        kc = TableChecker(comb_df, comb_path, drop_invalid=drop_invalid, report=report)
        kc.require_columns(cfg.situation.id, "situation id column")
        combined_j = ratings(kc, "combined", [*cfg.face.id, *cfg.situation.id])
        face_ids = join_key(comb_df, cfg.face.id)
        sit_ids = join_key(comb_df, cfg.situation.id)
        situations = merge_situations(situations, build_situations(comb_df, sit_ids, cfg.situation, kc),
                                      file=comb_path.name)
        known_faces = set(face_j.key)
        kc.mark(~np.isin(face_ids, np.array(sorted(known_faces), dtype=object)), cfg.face.id[0],
                f"face has no face-only judgements in {cfg.files.face} (an empty condition)",
                comb_df[cfg.face.id[0]])
        combined_j.key = np.array([f"{f}|{s}" for f, s in zip(face_ids, sit_ids)], dtype=object)
        pairs = list(dict.fromkeys(zip(face_ids[kc.ok], sit_ids[kc.ok])))
        combined_j = _keep(combined_j, kc.ok)
        if len(combined_j) == 0:
            raise DataError("no valid combined-condition rows (an empty condition).", file=comb_path)
    else:
        pairs = [(f, s) for f in faces for s in situations]
    for name, j, path in (("face-only", face_j, face_path), ("context-only", ctx_j, ctx_path)):
        if len(j) == 0:
            raise DataError(f"no valid {name} rows (an empty condition).", file=path)

    items = [
        Item(id=f"{f}|{s}", face=faces[f], situation=situations[s], groups={"face": f, "situation": s},
             expressivity=given.get(f))
        for f, s in pairs
    ]
    categorical = tuple(f for f in cfg.situation.features
                        if any(isinstance(s.features[f], str) for s in situations.values()))
    return Corpus(
        name=cfg.name, labels=tuple(cfg.emotions), response="ratings", items=items, face_only=face_j,
        context_only=ctx_j, combined=combined_j, scale=scale,
        valence_scale=cfg.valence.scale.build() if cfg.valence.column else None,
        valence_weights=weights, context_features=tuple(cfg.situation.features),
        categorical_features=categorical,
        context_interactions=tuple(tuple(i) for i in cfg.situation.interactions), dropped=report, root=cfg.root, situations=situations,
    )


def _keep(j: Judgements, ok: np.ndarray) -> Judgements:
    return Judgements(condition=j.condition, source=j.source, key=j.key[ok], rater=j.rater[ok],
                      emotions=j.emotions[ok], valence=None if j.valence is None else j.valence[ok],
                      line=None if j.line is None else j.line[ok])


def _faces(df, keys: np.ndarray, cfg: CueTablesConfig, checker: TableChecker) -> dict[str, Face]:
    texts = None
    if cfg.face.text:
        checker.require_columns([cfg.face.text])
        texts = df[cfg.face.text].astype(str).to_numpy()
    media = None
    if cfg.face.image:
        checker.require_columns([cfg.face.image])
        if cfg.face.image_dir is None:
            raise DataError("face.image is set but face.image_dir is not.", column=cfg.face.image,
                            fix="set face.image_dir to the folder holding the images.")
        media = checker.files_exist(cfg.face.image, cfg.face.image_dir)
    faces: dict[str, Face] = {}
    for pos in np.flatnonzero(checker.ok):
        fid = str(keys[pos])
        if fid not in faces:
            faces[fid] = Face(
                id=fid, text=None if texts is None else texts[pos],
                media=() if media is None else (media[pos],), media_kind=None if media is None else "image",
            )
    return faces


def _given_expressivity(df, cfg: CueTablesConfig, checker: TableChecker) -> dict[str, float]:
    if not cfg.face.expressivity:
        return {}
    checker.require_columns([cfg.face.expressivity])
    values = checker.numbers(cfg.face.expressivity)
    keys = join_key(df, cfg.face.id)
    return {str(k): float(v) for k, v, ok in zip(keys, values, checker.ok) if ok}
