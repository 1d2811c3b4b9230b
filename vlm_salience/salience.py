"""Salience adjustment: facial expressivity in [0, 1] -> weights (w_face, w_context) for the two cues.

Expression-salience hypothesis (Han & Gratch 2025): the more expressive the face, the more observers rely on it.
This module is the single home of that idea. Its users:
- tempered BCI (`bci.py`): log P = log P0 + w_face (log Pf - log P0) + w_context (log Pc - log P0);
- fusion of face-only and context-only VLM answers (prompting): the same product, or a pool by `face_share`;
- the choice of prompt template: `is_expressive`;
- the router between a face-focused and a context-focused LoRA expert: `is_expressive` (hard) / `face_share` (soft).

Laws, each a vector of free parameters so that one optimiser fits them all (what each kind reads, its parameter
count, start, bounds and prior are declared once in the table of `vlm_salience.law_kinds`; its weights are here):
- plain:    w = (1, 1) for every item: Bayesian cue integration as in Ong, Zaki & Goodman (2015);
- control:  one global pair (w_face, w_context): always reported; salience only counts where it beats this;
- hard:     one pair for subtle faces (x <= threshold) and one for expressive faces (x > threshold);
- logistic: total weight tau, face share s(x) = sigmoid(alpha + slope * (x - threshold)):
            w_face = tau * s(x), w_context = tau * (1 - s(x)). slope = 0 is the control.
- reliability: weights by each cue's own reliability r = 1/variance (`vlm_salience.reliability`), through a
            fitted exponent gamma: w_face / w_context = e^alpha (r_face / r_context)^gamma, total tau, i.e.
            s = sigmoid(alpha + gamma * z) with z = log(r_face / r_context). gamma = 0 is the control; gamma = 1,
            alpha = 0 is Ernst & Banks' inverse-variance weighting. Its covariates are (n, 2): column 0
            expressivity (for the reported expressive/subtle gap), column 1 z.
- per_emotion: one weight pair per emotion, shrunk toward the global pair by a hierarchical prior:
            log w_e = g + d_e - mean(d), d_e ~ N(0, sd^2) (the fit is its MAP; `bci.fit_law`'s `prior_sd`).
            Its weights are (n, E): per item AND per emotion (E = the corpus's emotion labels). A block that
            does not carry the emotions (valence) gets the geometric mean over emotions, which is the global pair.
            Parameters: (g_face, g_context, d_face_1..E, d_context_1..E); all d = 0 is the control. Beside a
            valence block it is fitted nested in its control (`bci.fit_law`): g is the control's fit (the MAP
            given g), so valence is predicted as the control does.
- learned:  a small gate over standardised item features f (columns of its covariates: expressivity, log
            reliability ratio, context entropy; `vlm_salience.reliability.gate_input`): total tau, face share
            sigmoid(b0 + b . (f - mean) / sd), the standardisation fixed from the training items (`scale`), the
            coefficients b under a N(0, sd^2) prior (ridge). b = 0 is the control.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlm_salience.law_kinds import LAWS, LawKind, check_covers, kinds, law_spec

# the kinds and their per-kind facts live in one table (law_kinds.py); these groups are read from it
LAW_KINDS: tuple[LawKind, ...] = kinds(covariates="expressivity", size=None)  # laws of expressivity alone
RELIABILITY_KINDS: tuple[LawKind, ...] = kinds(covariates="reliability")  # covariates include cue reliability
PER_EMOTION_KINDS: tuple[LawKind, ...] = kinds(size="emotions")  # laws whose weights are (items, emotions)
GATE_KINDS: tuple[LawKind, ...] = kinds(covariates="gate")  # laws over several standardised item features
ALL_LAW_KINDS: tuple[LawKind, ...] = tuple(LAWS)
SIZED_KINDS: tuple[LawKind, ...] = kinds(sized=True)  # parameter count set by the data (E or k)
DEFAULT_THRESHOLD = 0.5


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _expressivity(x: np.ndarray | float) -> np.ndarray:
    """Expressivity from a law's covariates: the array itself, or column 0 of an (n, k) covariate matrix."""
    a = np.asarray(x, dtype=float)
    return a[..., 0] if a.ndim == 2 else a


@dataclass(frozen=True)
class SalienceLaw:
    kind: LawKind
    params: tuple[float, ...] = ()
    threshold: float = DEFAULT_THRESHOLD
    scale: tuple[float, ...] = ()  # learned gate: feature means then sds, fixed from the training items

    def __post_init__(self) -> None:
        spec = law_spec(self.kind)  # an unknown kind is refused with the known ones
        n = len(self.params)
        if spec.standardised:
            k = len(self.scale) // 2
            if k < 1 or len(self.scale) % 2 or n != spec.n_params(k):
                raise ValueError(f"salience law '{self.kind}' takes {spec.n_fixed} + k parameters and 2k scale values "
                                 f"(k features), got {n} and {len(self.scale)}")
        elif spec.sized:
            size, rest = divmod(n - spec.n_fixed, spec.per_size)
            if size < 1 or rest:
                raise ValueError(f"salience law '{self.kind}' takes {spec.n_fixed} + {spec.per_size} x n_{spec.size} "
                                 f"parameters, got {n}")
        elif n != spec.n_fixed:
            raise ValueError(f"salience law '{self.kind}' takes {spec.n_fixed} parameters, got {n}")

    # -- constructors in natural units -------------------------------------------------------------------------
    @classmethod
    def plain(cls, threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("plain", (), threshold)

    @classmethod
    def control(cls, w_face: float, w_context: float, threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("control", (float(np.log(w_face)), float(np.log(w_context))), threshold)

    @classmethod
    def hard(cls, subtle: tuple[float, float], expressive: tuple[float, float],
             threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("hard", tuple(float(np.log(w)) for w in (*subtle, *expressive)), threshold)

    @classmethod
    def logistic(cls, total: float, slope: float, alpha: float = 0.0,
                 threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("logistic", (float(np.log(total)), float(alpha), float(slope)), threshold)

    @classmethod
    def reliability(cls, total: float, gamma: float, alpha: float = 0.0,
                    threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("reliability", (float(np.log(total)), float(alpha), float(gamma)), threshold)

    @classmethod
    def per_emotion(cls, w_face: np.ndarray, w_context: np.ndarray,
                    threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        """From one (w_face, w_context) pair per emotion; the global pair is their geometric mean."""
        lf, lc = np.log(np.asarray(w_face, dtype=float)), np.log(np.asarray(w_context, dtype=float))
        return cls("per_emotion", (float(lf.mean()), float(lc.mean()), *(lf - lf.mean()), *(lc - lc.mean())),
                   threshold)

    @classmethod
    def learned(cls, total: float, intercept: float, coef: np.ndarray, mean: np.ndarray, sd: np.ndarray,
                threshold: float = DEFAULT_THRESHOLD) -> SalienceLaw:
        return cls("learned", (float(np.log(total)), float(intercept), *map(float, coef)), threshold,
                   (*map(float, mean), *map(float, sd)))

    @property
    def n_emotions(self) -> int:
        return (len(self.params) - 2) // 2 if self.kind == "per_emotion" else 0

    def emotion_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(E,) w_face and w_context of each emotion (per_emotion law)."""
        p = np.asarray(self.params)
        E = self.n_emotions
        df, dc = p[2:2 + E], p[2 + E:]
        return np.exp(p[0] + df - df.mean()), np.exp(p[1] + dc - dc.mean())

    def gate_features(self, covariates: np.ndarray) -> np.ndarray:
        """(n, k) standardised features of a learned gate (the first k covariate columns)."""
        cov = np.asarray(covariates, dtype=float)
        k = len(self.scale) // 2
        if cov.ndim != 2 or cov.shape[1] < k:
            raise ValueError(f"salience law 'learned' needs (n, {k}) covariates (vlm_salience.reliability."
                             f"gate_input), got shape {cov.shape}")
        mean, sd = np.asarray(self.scale[:k]), np.asarray(self.scale[k:])
        return (cov[:, :k] - mean) / sd

    # -- the one mapping everything uses ----------------------------------------------------------------------
    def weights(self, expressivity: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(w_face, w_context), each shaped like `expressivity` (one weight per row of a covariate matrix)."""
        return _WEIGHTS[self.kind](self, expressivity)

    def face_share(self, expressivity: np.ndarray | float) -> np.ndarray:
        """w_face / (w_face + w_context): the weight of the face in a linear pool or a soft router."""
        wf, wc = self.weights(expressivity)
        return wf / (wf + wc)

    def share_spread(self, covariates: np.ndarray) -> float:
        """How much the face share varies: its sd over items (and, for per-emotion weights, emotions). 0 for the
        control; the evidence statistic of the per_emotion and learned laws (judged against a no-law null)."""
        return float(np.std(self.face_share(covariates)))

    def is_expressive(self, expressivity: np.ndarray | float) -> np.ndarray:
        """The hard split used for prompt templates and hard routing: expressive above the threshold."""
        return _expressivity(expressivity) > self.threshold

    # -- for optimisers and reports ---------------------------------------------------------------------------
    @staticmethod
    def n_params(kind: LawKind, size: int = 0) -> int:
        """`size`: the number of emotions (per_emotion) or gate features (learned)."""
        return law_spec(kind).n_params(size)

    @staticmethod
    def initial(kind: LawKind, size: int = 0) -> np.ndarray:
        """Start every fit at plain BCI (w = 1, 1)."""
        return law_spec(kind).initial_vector(size)

    @staticmethod
    def bounds(kind: LawKind, size: int = 0) -> list[tuple[float, float]]:
        return law_spec(kind).bounds_list(size)

    @classmethod
    def from_vector(cls, kind: LawKind, theta: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                    scale: tuple[float, ...] = ()) -> SalienceLaw:
        return cls(kind, tuple(float(t) for t in np.asarray(theta, dtype=float)), threshold, tuple(scale))

    def describe(self) -> dict[str, Any]:
        """Weights in natural units, for metrics.json and the report."""
        out: dict[str, Any] = {"kind": self.kind, "threshold": self.threshold}
        p = np.exp(np.asarray(self.params))
        if self.kind == "control":
            out.update(w_face=p[0], w_context=p[1])
        elif self.kind == "hard":
            out.update(subtle={"w_face": p[0], "w_context": p[1]}, expressive={"w_face": p[2], "w_context": p[3]})
        elif self.kind == "logistic":
            out.update(total=p[0], alpha=self.params[1], slope=self.params[2])
        elif self.kind == "per_emotion":
            wf, wc = self.emotion_pairs()
            out.update(w_face=p[0], w_context=p[1], by_emotion={"w_face": wf.tolist(), "w_context": wc.tolist(),
                                                                "face_share": (wf / (wf + wc)).tolist()})
            return _floats(out)
        elif self.kind == "learned":
            k = len(self.scale) // 2
            out.update(total=p[0], intercept=self.params[1], coef=list(self.params[2:]),
                       feature_mean=list(self.scale[:k]), feature_sd=list(self.scale[k:]))
            return _floats(out)
        elif self.kind == "reliability":
            out.update(total=p[0], alpha=self.params[1], gamma=self.params[2])
            z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
            wf, wc = self.weights(np.column_stack([np.full_like(z, self.threshold), z]))
            out["curve"] = {"log_reliability_ratio": z.tolist(), "w_face": wf.tolist(), "w_context": wc.tolist()}
            return _floats(out)
        if self.kind != "plain":
            grid = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
            wf, wc = self.weights(grid)
            out["curve"] = {"expressivity": grid.tolist(), "w_face": wf.tolist(), "w_context": wc.tolist()}
        return _floats(out)

    def face_weight_gap(self, expressivity: np.ndarray) -> float:
        """Mean w_face over expressive items minus over subtle ones: the quantity the hypothesis predicts > 0."""
        wf, _ = self.weights(expressivity)
        x = expressivity
        hi, lo = self.is_expressive(x), ~self.is_expressive(x)
        if not hi.any() or not lo.any():
            return float("nan")
        return float(wf[hi].mean() - wf[lo].mean())


# -- each kind's weights: covariates -> (w_face, w_context); the table (law_kinds.py) says what each reads ------
def _plain(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    x = _expressivity(cov)
    return np.ones_like(x), np.ones_like(x)


def _control(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    x, p = _expressivity(cov), law.params
    return np.full_like(x, np.exp(p[0])), np.full_like(x, np.exp(p[1]))


def _hard(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    x, p = _expressivity(cov), law.params
    expressive = law.is_expressive(x)
    return (np.where(expressive, np.exp(p[2]), np.exp(p[0])),
            np.where(expressive, np.exp(p[3]), np.exp(p[1])))


def _logistic(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    x, p = _expressivity(cov), law.params
    tau = np.exp(p[0])
    share = _sigmoid(p[1] + p[2] * (x - law.threshold))
    return tau * share, tau * (1.0 - share)


def _reliability(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    cov, p = np.asarray(cov, dtype=float), law.params
    if cov.ndim != 2 or cov.shape[1] < 2:
        raise ValueError(f"salience law '{law.kind}' needs (n, 2) covariates (expressivity, log reliability "
                         f"ratio from vlm_salience.reliability.law_input), got shape {cov.shape}")
    share = _sigmoid(p[1] + p[2] * cov[:, 1])
    return np.exp(p[0]) * share, np.exp(p[0]) * (1.0 - share)


def _per_emotion(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    n = len(_expressivity(cov))
    wf, wc = law.emotion_pairs()
    return np.tile(wf, (n, 1)), np.tile(wc, (n, 1))


def _learned(law: SalienceLaw, cov: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    p = law.params
    share = _sigmoid(p[1] + law.gate_features(cov) @ np.asarray(p[2:]))
    return np.exp(p[0]) * share, np.exp(p[0]) * (1.0 - share)


_WEIGHTS = {"plain": _plain, "control": _control, "hard": _hard, "logistic": _logistic,
            "reliability": _reliability, "per_emotion": _per_emotion, "learned": _learned}
check_covers("SalienceLaw.weights (salience.py)", _WEIGHTS)


def _floats(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _floats(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_floats(v) for v in d]
    if isinstance(d, (np.floating, np.integer)):
        return float(d)
    return d
