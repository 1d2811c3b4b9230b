"""Calibrating an expert's answers on held-out items before they are mixed with another expert's.

Two LoRA experts trained on different items answer on different scales: one may say valence 2v + 3 where the
other says 0.5v - 1, and one may be far more confident than the other. Each alone keeps its ordering, but a router
that takes some answers from one and some from the other puts two scales in one column and loses it. So each
expert gets, fitted on the VALIDATION items only (never the test items it is scored on):

- valence: a monotone map onto the observed valence (scikit-learn's `IsotonicRegression`, increasing, clipped
  outside the fitted range) or a least-squares line (`LinearRegression`);
- label distributions: one temperature T, p ∝ p^(1/T), chosen by minimising the mean KL(observed || tempered)
  over the validation items (scipy's bounded scalar search on log T); on rating corpora it tempers each
  emotion's distribution over the scale points.

`ExpertCalibration.apply` maps any of that expert's Predictions. The fit records the item ids it used and its
validation scores before and after, so a report can show what calibration did and on which items.
Core module: numpy, scipy, scikit-learn; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize_scalar

from vlm_salience.metrics import kl_per_item, pearson
from vlm_salience.data.corpus import RatingScale
from vlm_salience.predictions import Predictions, ratings_to_distribution

ValenceCalibration = Literal["none", "linear", "isotonic"]
LabelCalibration = Literal["none", "temperature"]
LOG_T_BOUNDS = (-4.0, 4.0)  # temperatures between e^-4 and e^4 (0.018 to 55)
_FLOOR = 1e-12


def temper(p: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised over the last axis (softmax(log p / T)); NaN rows stay NaN."""
    logp = np.log(np.clip(np.asarray(p, float), _FLOOR, None)) / temperature
    logp -= np.max(logp, axis=-1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(pred: np.ndarray, obs: np.ndarray) -> float:
    """The T minimising the mean KL(obs || temper(pred, T)) over rows (items, or items x emotions)."""
    pred = np.asarray(pred, float).reshape(-1, np.shape(pred)[-1])
    obs = np.asarray(obs, float).reshape(-1, np.shape(obs)[-1])
    res = minimize_scalar(lambda lt: float(kl_per_item(obs, temper(pred, float(np.exp(lt)))).mean()),
                          bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _label_block(p: Predictions) -> np.ndarray | None:
    """What temperature scaling acts on: per-emotion rating distributions on rating corpora, else the labels."""
    return p.rating_dist if p.rating_dist is not None else p.emotion_dist


def _usable(pred: Predictions, obs: Predictions) -> np.ndarray:
    ok = pred.ok & np.isfinite(pred.emotion_dist).all(axis=1) & np.isfinite(obs.emotion_dist).all(axis=1)
    return ok


def _fit_scores(pred: Predictions, obs: Predictions) -> dict[str, float]:
    ok = _usable(pred, obs)
    v_ok = ok & np.isfinite(pred.valence) & np.isfinite(obs.valence)
    out = {"kld": float(kl_per_item(obs.emotion_dist[ok], pred.emotion_dist[ok]).mean()) if ok.any()
           else float("nan")}
    if v_ok.any():
        out["valence_r"] = pearson(pred.valence[v_ok], obs.valence[v_ok])
        out["valence_mse"] = float(np.mean((pred.valence[v_ok] - obs.valence[v_ok]) ** 2))
    return out


@dataclass
class ExpertCalibration:
    """One expert's valence map and label temperature, and the validation items and scores of the fit."""

    expert: str
    valence_kind: ValenceCalibration
    label_kind: LabelCalibration
    fit_item_ids: np.ndarray
    temperature: float = 1.0
    valence_model: Any = None  # a fitted IsotonicRegression / LinearRegression, or None
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # before / after
    scale: RatingScale | None = None  # the corpus's rating scale (rating corpora)

    @property
    def identity(self) -> bool:
        return self.valence_model is None and self.label_kind == "none"

    def map_valence(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, float)
        if self.valence_model is None:
            return v
        out = np.full(v.shape, np.nan)
        ok = np.isfinite(v)
        out[ok] = self.valence_model.predict(v[ok].reshape(-1, 1) if self.valence_kind == "linear" else v[ok])
        return out

    def apply(self, pred: Predictions, name: str | None = None, scale: RatingScale | None = None) -> Predictions:
        """The calibrated answers (`scale`: the corpus's rating scale, on rating corpora). When valence is mapped,
        `valence_dist` is dropped: it no longer matches the calibrated valence (mixtures of calibrated experts
        mix their valences, see `mix_valence`)."""
        out = replace(pred, method=name or f"{pred.method}+calibrated", meta={**pred.meta, "calibrated": True})
        scale = scale if scale is not None else self.scale
        if self.label_kind == "temperature":
            if pred.rating_dist is not None:
                if scale is None:
                    raise ValueError("calibrating rating answers needs the corpus's rating scale")
                out.rating_dist = temper(pred.rating_dist, self.temperature)
                out.ratings = out.rating_dist @ np.asarray(scale.points, float)
                out.emotion_dist = ratings_to_distribution(out.ratings, scale)
            else:
                out.emotion_dist = temper(pred.emotion_dist, self.temperature)
        if self.valence_model is not None:
            out.valence = self.map_valence(pred.valence)
            out.valence_dist = None
        return out

    def summary(self) -> dict[str, Any]:
        s: dict[str, Any] = {"expert": self.expert, "valence": self.valence_kind, "labels": self.label_kind,
                             "fit_items": int(len(self.fit_item_ids)), "validation": self.validation}
        if self.label_kind == "temperature":
            s["temperature"] = self.temperature
        if self.valence_kind == "isotonic" and self.valence_model is not None:
            s["isotonic_knots"] = int(len(self.valence_model.X_thresholds_))
            s["valence_range"] = [float(self.valence_model.X_min_), float(self.valence_model.X_max_)]
        elif self.valence_kind == "linear" and self.valence_model is not None:
            s["slope"] = float(self.valence_model.coef_[0])
            s["intercept"] = float(self.valence_model.intercept_)
        return s


def fit_expert(pred: Predictions, obs: Predictions, *, valence: ValenceCalibration = "isotonic",
               labels: LabelCalibration = "temperature", expert: str | None = None,
               scale: RatingScale | None = None) -> ExpertCalibration:
    """Fit one expert's calibration on the items of `pred` (its answers on the validation items) against the
    observed judgements of the same items. Items the expert failed on are left out."""
    obs = obs.align(pred.item_ids)
    ok = _usable(pred, obs)
    if ok.sum() < 2:
        raise ValueError(f"calibrating {expert or pred.method}: fewer than 2 usable validation items")
    cal = ExpertCalibration(expert=expert or pred.method, valence_kind=valence, label_kind=labels,
                            fit_item_ids=np.asarray(pred.item_ids[ok], dtype=object), scale=scale)
    if labels == "temperature":
        block, target = _label_block(pred), _label_block(obs)
        if pred.rating_dist is not None and obs.rating_dist is None:
            raise ValueError("temperature scaling of rating distributions needs observed rating distributions")
        cal.temperature = fit_temperature(block[ok], target[ok])
    v_ok = ok & np.isfinite(pred.valence) & np.isfinite(obs.valence)
    if valence != "none" and v_ok.sum() >= 2:
        x, y = pred.valence[v_ok], obs.valence[v_ok]
        if valence == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            cal.valence_model = IsotonicRegression(increasing=True, out_of_bounds="clip").fit(x, y)
        else:
            from sklearn.linear_model import LinearRegression

            cal.valence_model = LinearRegression().fit(x.reshape(-1, 1), y)
    sub = np.flatnonzero(ok)
    cal.validation = {"before": _fit_scores(pred.take(sub), obs.take(sub)),
                      "after": _fit_scores(cal.apply(pred.take(sub)), obs.take(sub))}
    return cal


def mix_valence(face_valence: np.ndarray, context_valence: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The valence of a linear pool of two experts with per-item weights (w_face, w_context): the expected value
    of a mixture is the mixture of the expected values."""
    w = np.asarray(weights, float)
    s = w[:, 0] / (w[:, 0] + w[:, 1])
    return s * np.asarray(face_valence, float) + (1 - s) * np.asarray(context_valence, float)


def select_rows(face: Predictions, context: Predictions, to_face: np.ndarray, name: str) -> Predictions:
    """Hard routing of two answer sets on the same items: row i from `face` where to_face[i], else `context`."""
    context = context.align(face.item_ids)
    m = np.asarray(to_face, bool)

    def pick(a, b):
        if a is None or b is None:
            return None
        return np.where(m.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)
    return replace(face, method=name, emotion_dist=pick(face.emotion_dist, context.emotion_dist),
                   valence=pick(face.valence, context.valence), ratings=pick(face.ratings, context.ratings),
                   rating_dist=pick(face.rating_dist, context.rating_dist),
                   valence_dist=pick(face.valence_dist, context.valence_dist),
                   weights=np.column_stack([m.astype(float), (~m).astype(float)]),
                   error=pick(face.error, context.error) if face.error is not None and context.error is not None
                   else None)


def calibration_markdown(extra: dict[str, Any]) -> list[str]:
    """The routing report's calibration section (lines of markdown) from `result.extra['calibration']`."""
    c = extra.get("calibration")
    if not c:
        return []
    lines = ["## Expert calibration (fitted on the validation split)", "",
             f"valence: {c['valence']}; labels: {c['labels']}; fitted on {c['fit_on']} validation items "
             f"({c['validation_items']} in the split). Validation scores before -> after:", "",
             "| expert | items | temperature | isotonic knots | KLD | valence r | valence MSE |", "|---|---|---|---|---|---|---|"]

    def ba(s, k):
        b, a = s["validation"]["before"].get(k), s["validation"]["after"].get(k)
        return "" if b is None else f"{b:.3f} -> {a:.3f}"
    for s in c["experts"].values():
        t = f"{s['temperature']:.3f}" if "temperature" in s else ""
        lines.append(f"| {s['expert']} | {s['fit_items']} | {t} | {s.get('isotonic_knots', '')} | {ba(s, 'kld')} | "
                     f"{ba(s, 'valence_r')} | {ba(s, 'valence_mse')} |")
    lines.append("")
    comps = c.get("calibrated_vs_uncalibrated") or {}
    if comps:
        lines += ["Calibrated against uncalibrated routing on the test items (paired bootstrap, difference "
                  "calibrated - uncalibrated, 95% interval):", "", "| method | KLD | valence r |", "|---|---|---|"]
        for name, comp in comps.items():
            cells = [f"{comp[m]['diff']:+.3f} [{comp[m]['ci95'][0]:+.3f}, {comp[m]['ci95'][1]:+.3f}]"
                     for m in ("kld", "valence_r")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines
