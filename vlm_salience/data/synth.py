"""Synthetic Split-Steal corpus with a planted salience law, written in the Split-Steal manifest format.

Generative story (all seeded):
1. Participants have an individual expressivity (Beta), a face style and a tendency to split.
2. Each round has a pot (log-uniform), both decisions and the joint outcome CC/CD/DC/DD.
3. Appraisal: the outcome and the stakes give a context emotion distribution and a valence; the player feels an
   emotion drawn from it, and shows it on the face at their expressivity (a rendered image per trial).
4. Simulated observers in three conditions: face-only raters read the face (subtle faces read as neutral and
   uncertain), context-only raters read the appraisal, and combined raters integrate both as a tempered Bayesian
   product whose weights follow a configurable salience law (`vlm_salience.salience`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from vlm_salience.atomic import staged_dir, write_text
from vlm_salience.config import StrictModel
from vlm_salience.data.faces import ACTIONS, FaceStyle, render_face
from vlm_salience.law_kinds import check_covers, kinds, law_spec
from vlm_salience.salience import DEFAULT_THRESHOLD, SalienceLaw
from vlm_salience.stats import distribution_variance, softmax

OUTCOMES = ("CC", "CD", "DC", "DD")


class LawConfig(StrictModel):
    """The planted law of the combined raters; `control` with w = (1, 1) turns salience off. `kind`: a kind the
    law table marks plantable (vlm_salience/law_kinds.py)."""

    kind: str = "logistic"
    w_face: float = 1.0
    w_context: float = 1.0
    subtle: tuple[float, float] = (0.5, 1.5)
    expressive: tuple[float, float] = (1.5, 0.5)
    total: float = 2.0
    slope: float = 8.0
    alpha: float = 0.0
    gamma: float = 1.0  # reliability law: w_face / w_context = e^alpha (r_face / r_context)^gamma
    threshold: float = DEFAULT_THRESHOLD
    # per_emotion law: (w_face, w_context) of the listed emotions; unlisted ones take (w_face, w_context). The
    # valence ratings get the geometric mean pair over emotions (as bci does for a block without emotions)
    by_emotion: dict[str, tuple[float, float]] = Field(default_factory=dict)

    @field_validator("kind")
    @classmethod
    def _plantable(cls, kind: str) -> str:
        law_spec(kind)  # an unknown kind: refused with every known one
        if kind not in PLANTABLE_KINDS:
            raise ValueError(f"salience law '{kind}' cannot be planted by the generator; plantable kinds: "
                             f"{', '.join(PLANTABLE_KINDS)}")
        return kind

    def build(self, labels: list[str] | None = None) -> SalienceLaw:
        return _PLANT[self.kind](self, list(labels or []))


def _plant_per_emotion(cfg: LawConfig, labels: list[str]) -> SalienceLaw:
    unknown = sorted(set(cfg.by_emotion) - set(labels))
    if unknown:
        raise ValueError(f"law.by_emotion names unknown label(s) {unknown}; labels are {labels}")
    pairs = [cfg.by_emotion.get(lab, (cfg.w_face, cfg.w_context)) for lab in labels]
    return SalienceLaw.per_emotion([p[0] for p in pairs], [p[1] for p in pairs], cfg.threshold)


# each plantable kind's law from the config's natural units; the kinds are the table's plantable ones
PLANTABLE_KINDS: tuple[str, ...] = kinds(plantable=True)
_PLANT = {
    "plain": lambda c, labels: SalienceLaw.plain(c.threshold),
    "control": lambda c, labels: SalienceLaw.control(c.w_face, c.w_context, c.threshold),
    "hard": lambda c, labels: SalienceLaw.hard(c.subtle, c.expressive, c.threshold),
    "logistic": lambda c, labels: SalienceLaw.logistic(c.total, c.slope, c.alpha, c.threshold),
    "reliability": lambda c, labels: SalienceLaw.reliability(c.total, c.gamma, c.alpha, c.threshold),
    "per_emotion": _plant_per_emotion,
}
check_covers("data/synth._PLANT (the generator's plantable laws)", _PLANT, expected=PLANTABLE_KINDS)


class PerceptionConfig(StrictModel):
    face_clarity: float = 4.0  # how readable a fully expressive face is (logit of the shown emotion)
    neutral_pull: float = 2.0  # how strongly a subtle face reads as neutral
    rater_temperature_sd: float = 0.25  # rater-to-rater spread (log-normal temperature)
    valence_sd: float = 0.8
    subtle_valence_sd: float = 1.5  # extra valence uncertainty of a face with no expression
    # trial-to-trial readability of the face beyond its expressivity (log-normal sd; 0: none): a factor on the
    # face's logits and a divisor of its valence spread, so that face raters' agreement varies at one expressivity
    readability_sd: float = 0.0


class SynthConfig(StrictModel):
    name: str = "synthetic_split_steal"
    seed: int = 0
    participants: int = 40
    rounds: int = 8
    raters: dict[Literal["face", "context", "combined"], int] = Field(
        default_factory=lambda: {"face": 20, "context": 8, "combined": 8})
    expressivity_beta: tuple[float, float] = (1.5, 1.5)
    expressivity_jitter: float = 0.05
    split_tendency: tuple[float, float] = (0.3, 0.8)
    partner_split: float = 0.5
    pot: tuple[float, float] = (100.0, 100000.0)
    labels: list[str] = Field(default_factory=lambda: list(ACTIONS))
    neutral_label: str = "neutral"
    valence_scale: tuple[int, int] = (1, 7)
    appraisal: dict[str, dict[str, float]]
    valence_by_outcome: dict[str, float]
    pot_effect: float = 0.5
    perception: PerceptionConfig = Field(default_factory=PerceptionConfig)
    law: LawConfig = Field(default_factory=LawConfig)
    image_size: int = 112


def _gauss_grid(mu: np.ndarray, sd: np.ndarray, grid: np.ndarray) -> np.ndarray:
    p = np.exp(-0.5 * ((grid[None, :] - mu[:, None]) / sd[:, None]) ** 2)
    return p / p.sum(axis=1, keepdims=True)


def _temper(pf: np.ndarray, pc: np.ndarray, p0: np.ndarray, wf: np.ndarray, wc: np.ndarray) -> np.ndarray:
    """The tempered product written out here (independent of bci); weights (n,) or (n, K) per label."""
    lf, lc, l0 = (np.log(np.clip(p, 1e-12, None)) for p in (pf, pc, p0))
    wf, wc = (w if w.ndim == 2 else w[:, None] for w in (wf, wc))
    return softmax(l0 + wf * (lf - l0) + wc * (lc - l0))


def generate(cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, list[tuple[str, str, float, FaceStyle]]]:
    """Return (trials, ratings, truth, faces to render) without touching the disk."""
    return generate_with_distributions(cfg)[:4]


def generate_with_distributions(cfg: SynthConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame,
                                                             list[tuple[str, str, float, FaceStyle]],
                                                             dict[str, np.ndarray]]:
    """`generate`, plus the (n, K) true emotion distributions the raters drew from ({face, context, combined,
    prior}): other generators (data/synth_ratings.py) rate the same trials from them."""
    rng = np.random.default_rng(cfg.seed)
    labels = cfg.labels
    K = len(labels)
    unknown = sorted(set(labels) - set(ACTIONS))
    if unknown:
        raise ValueError(f"labels {unknown} have no facial actions; known: {sorted(ACTIONS)}")
    if cfg.neutral_label not in labels:
        raise ValueError(f"neutral_label '{cfg.neutral_label}' is not among labels {labels}")
    neutral = labels.index(cfg.neutral_label)
    base = np.zeros((4, K))
    for o, row in enumerate(OUTCOMES):
        for lab, logit in cfg.appraisal.get(row, {}).items():
            if lab not in labels:
                raise ValueError(f"appraisal.{row} names unknown label '{lab}'")
            base[o, labels.index(lab)] = logit
    val_off = np.array([cfg.valence_by_outcome[o] for o in OUTCOMES])

    P, R = cfg.participants, cfg.rounds
    expressivity = rng.beta(*cfg.expressivity_beta, size=P)
    tendency = rng.uniform(*cfg.split_tendency, size=P)
    styles = [FaceStyle.sample(rng) for _ in range(P)]
    part = np.repeat(np.arange(P), R)
    rnd = np.tile(np.arange(1, R + 1), P)
    n = P * R
    lo, hi = np.log(cfg.pot[0]), np.log(cfg.pot[1])
    log_pot = rng.uniform(lo, hi, size=n)
    z = (log_pot - (lo + hi) / 2) / ((hi - lo) / np.sqrt(12.0))
    stakes = np.clip(1.0 + cfg.pot_effect * z, 0.2, None)
    own = rng.random(n) < tendency[part]  # True = split
    partner = rng.random(n) < cfg.partner_split
    o_idx = np.where(own, np.where(partner, 0, 1), np.where(partner, 2, 3))
    x = np.clip(expressivity[part] + rng.normal(0, cfg.expressivity_jitter, size=n), 0.0, 1.0)

    def ctx_probs(outcome_idx: np.ndarray) -> np.ndarray:
        logits = base[outcome_idx] * stakes[:, None]
        return softmax(logits)

    p_ctx = ctx_probs(o_idx)
    p_prior = np.mean([ctx_probs(np.full(n, o)) for o in range(4)], axis=0)
    felt = np.array([rng.choice(K, p=p) for p in p_ctx])
    face_logits = np.zeros((n, K))
    face_logits[np.arange(n), felt] += cfg.perception.face_clarity * x
    face_logits[:, neutral] += cfg.perception.neutral_pull * (1.0 - x)
    readability = (np.exp(rng.normal(0, cfg.perception.readability_sd, size=n)) if cfg.perception.readability_sd > 0
                   else np.ones(n))  # drawn only when asked, so that existing configs generate the same corpus
    p_face = softmax(face_logits * readability[:, None])

    v_lo, v_hi = cfg.valence_scale
    vgrid = np.arange(v_lo, v_hi + 1, dtype=float)
    mid = (v_lo + v_hi) / 2.0
    mu_ctx = mid + val_off[o_idx] * stakes
    felt_val = np.clip(mu_ctx + rng.normal(0, 0.7, size=n), v_lo, v_hi)
    pv = cfg.perception
    pv_face = _gauss_grid(mid + x * (felt_val - mid), (pv.valence_sd + pv.subtle_valence_sd * (1 - x)) / readability,
                          vgrid)
    pv_ctx = _gauss_grid(mu_ctx, np.full(n, pv.valence_sd + 0.4), vgrid)
    pv_prior = np.mean([_gauss_grid(mid + val_off[o] * stakes, np.full(n, pv.valence_sd + 0.4), vgrid)
                        for o in range(4)], axis=0)

    law = cfg.law.build(labels)
    if law_spec(law.kind).covariates == "reliability":  # the raters' own reliabilities (true distributions)
        z = np.mean([np.log(distribution_variance(c[:, None], s, cat) / distribution_variance(f[:, None], s, cat))
                     for f, c, s, cat in ((p_face, p_ctx, np.arange(K, dtype=float), True),
                                          (pv_face, pv_ctx, vgrid, False))], axis=0)
        wf, wc = law.weights(np.column_stack([x, z]))
    else:
        wf, wc = law.weights(x)
    p_comb = _temper(p_face, p_ctx, p_prior, wf, wc)
    if wf.ndim == 2:  # per emotion: each label's own pair on the choice; valence gets the geometric mean pair
        wf, wc = np.exp(np.log(wf).mean(axis=1)), np.exp(np.log(wc).mean(axis=1))
    pv_comb = _temper(pv_face, pv_ctx, pv_prior, wf, wc)

    trial_ids = [f"p{p:03d}_r{r:02d}" for p, r in zip(part, rnd)]
    words = np.where(own, "split", "steal"), np.where(partner, "split", "steal")
    pots = np.round(np.exp(log_pot), 0)
    payoff = np.where(own & partner, pots / 2, np.where(~own & partner, pots, 0.0))
    trials = pd.DataFrame({
        "trial_id": trial_ids, "participant": [f"p{p:03d}" for p in part], "round": rnd,
        "own_decision": words[0], "partner_decision": words[1], "outcome": [OUTCOMES[o] for o in o_idx],
        "pot": pots, "payoff": payoff, "face_image": [f"faces/{t}.png" for t in trial_ids],
    })
    truth = pd.DataFrame({
        "trial_id": trial_ids, "expressivity": x, "participant_expressivity": expressivity[part],
        "felt_emotion": [labels[k] for k in felt], "felt_valence": felt_val, "w_face": wf, "w_context": wc,
    })

    rows = []
    dists = {"face": (p_face, pv_face), "context": (p_ctx, pv_ctx), "combined": (p_comb, pv_comb)}
    for cond in ("face", "context", "combined"):
        pe, pvv = dists[cond]
        for r in range(cfg.raters[cond]):
            temp = np.exp(rng.normal(0, pv.rater_temperature_sd))
            pe_r = softmax(np.log(np.clip(pe, 1e-12, None)) / temp)
            choice = (pe_r.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
            val = vgrid[(pvv.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)].astype(int)
            rows.append(pd.DataFrame({"trial_id": trial_ids, "condition": cond, "rater": f"{cond[:3]}{r:02d}",
                                      "valence": val, "emotion": [labels[k] for k in choice]}))
    ratings = pd.concat(rows, ignore_index=True)
    faces = [(t, labels[felt[i]], float(x[i]), styles[part[i]]) for i, t in enumerate(trial_ids)]
    return trials, ratings, truth, faces, {"face": p_face, "context": p_ctx, "combined": p_comb, "prior": p_prior}


def data_config(cfg: SynthConfig) -> dict:
    """The Split-Steal data config that reads the generated manifest (written beside it as data.yaml)."""
    return {
        "format": "split_steal", "name": cfg.name, "root": ".",
        "files": {"trials": "trials.csv", "ratings": "ratings.csv"},
        "labels": list(cfg.labels), "neutral_label": cfg.neutral_label,
        "valence_scale": {"low": cfg.valence_scale[0], "high": cfg.valence_scale[1]},
        "situation": {
            "features": ["outcome", "log_pot"], "interactions": [["outcome", "log_pot"]],
            "derived": {"log_pot": "log(pot)"},
            # the generator's prior: the four joint outcomes, equally weighted, at the trial's own pot; declared
            # so that plain BCI is correctly specified on its own corpus
            "outcomes": {"feature": "outcome", "levels": {o: 1.0 / len(OUTCOMES) for o in OUTCOMES}},
            "bins": {"pot_size": {"column": "pot", "edges": [1000, 10000, 40000],
                                  "labels": ["a small", "a medium", "a large", "a very large"]}},
            "text": "In a split-or-steal game with {pot_size} pot of ${pot:,.0f}, the player chose to "
                    "{own_decision} and the other player chose to {partner_decision}; the player took home "
                    "${payoff:,.0f}.",
        },
    }


def write_corpus(cfg: SynthConfig, out: str | Path, *, progress: bool = True) -> Path:
    """Generate and write the corpus into `out` atomically; returns the path of its data.yaml."""
    trials, ratings, truth, faces = generate(cfg)
    rng = np.random.default_rng(cfg.seed + 1)
    with staged_dir(out) as stage:
        (stage / "faces").mkdir()
        for tid, emotion, x, style in tqdm(faces, desc="rendering faces", disable=not progress, unit="face"):
            render_face(emotion, x, style, size=cfg.image_size, jitter=rng).save(stage / "faces" / f"{tid}.png")
        write_text(stage / "trials.csv", trials.to_csv(index=False))
        write_text(stage / "ratings.csv", ratings.to_csv(index=False))
        write_text(stage / "truth.csv", truth.to_csv(index=False))
        write_text(stage / "data.yaml", yaml.safe_dump(data_config(cfg), sort_keys=False, width=120))
        write_text(stage / "synth.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=120))
    return Path(out) / "data.yaml"
