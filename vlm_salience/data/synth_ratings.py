"""A synthetic RATING corpus with drawn faces: the Split-Steal generator of `data/synth.py`, rated per emotion.

Why: machine cues (`machine_cues.py`) replace the human face-only *ratings* of a rating corpus by a model's
reading, and the demo's synthetic corpus is a choice corpus (each rater picks one emotion). This module keeps
synth.py's whole generative story (participants, rounds, appraisal, the drawn face at its expressivity, the planted
salience law of the combined raters) and only changes what the simulated observers answer: every rater rates every
emotion on a scale (1-9 by default) instead of choosing one.

How a rater rates (one draw per rater, trial and emotion): the rater's belief is the condition's true distribution
over emotions (face-only: what the drawn face shows; context-only: the appraisal; combined: the tempered product
under the planted law), sharpened or flattened by the rater's own temperature as in synth.py; the rating of emotion
k is `low + (high - low) * q_k ** exponent` plus the rater's bias and noise, rounded to the scale and clipped.

The true distributions come from the generator itself (`synth.generate_with_distributions`), so this module
repeats none of its model; `tests/test_machine_cue_demo.py` checks them against the generator's own choice raters.

The corpus is written in the `cue_tables` format (configs/data/affcog_utterances.yaml is the real one): face.csv,
context.csv and combined.csv with one column per emotion, a face image column read from `faces/`, and data.yaml.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from vlm_salience.atomic import staged_dir, write_text
from vlm_salience.config import StrictModel
from vlm_salience.data.faces import render_face
from vlm_salience.data.synth import SynthConfig, data_config, generate_with_distributions
from vlm_salience.stats import softmax

# Signed valence of the synthetic labels (valence is derived from the rated emotions; no valence is rated).
VALENCE = {"joy": 1.0, "surprise": 0.0, "neutral": 0.0, "sadness": -1.0, "anger": -1.0, "fear": -1.0,
           "disgust": -1.0, "contempt": -1.0}


class RatingDrawConfig(StrictModel):
    """How a simulated observer turns a belief over emotions into per-emotion ratings."""

    scale: tuple[int, int] = (1, 9)
    exponent: float = Field(0.5, gt=0)  # < 1 lifts mid probabilities off the floor of the scale
    noise_sd: float = Field(0.8, ge=0)  # per rating
    rater_bias_sd: float = Field(0.4, ge=0)  # per rater, on every emotion

    @model_validator(mode="after")
    def _ordered(self) -> RatingDrawConfig:
        if not self.scale[1] > self.scale[0]:
            raise ValueError(f"ratings.scale needs low < high, got {list(self.scale)}")
        return self


class RatingSynthConfig(SynthConfig):
    """synth.py's SynthConfig plus `ratings:` (configs/synth/split_steal_ratings.yaml)."""

    name: str = "synthetic_split_steal_ratings"
    ratings: RatingDrawConfig = Field(default_factory=RatingDrawConfig)


def rate(p: np.ndarray, n_raters: int, rng: np.random.Generator, cfg: RatingSynthConfig) -> np.ndarray:
    """(n_raters, n, K) integer ratings of n trials by n_raters simulated raters whose belief is `p` (n, K)."""
    low, high = cfg.ratings.scale
    out = np.empty((n_raters, *p.shape))
    logp = np.log(np.clip(p, 1e-12, None))
    for r in range(n_raters):
        temp = np.exp(rng.normal(0, cfg.perception.rater_temperature_sd))
        q = softmax(logp / temp)
        mean = low + (high - low) * q ** cfg.ratings.exponent + rng.normal(0, cfg.ratings.rater_bias_sd)
        out[r] = np.clip(np.rint(mean + rng.normal(0, cfg.ratings.noise_sd, size=p.shape)), low, high)
    return out.astype(int)


def rating_data_config(cfg: RatingSynthConfig) -> dict:
    """The cue_tables data config that reads the written corpus (data.yaml beside it)."""
    situation = {k: v for k, v in data_config(cfg)["situation"].items() if k != "outcomes"}
    # cue_tables has no fixed categorical outcomes (split_steal only): the prior averages the observed situations
    situation["id"] = ["situation"]
    return {
        "format": "cue_tables", "name": cfg.name, "root": ".",
        "files": {"face": "face.csv", "context": "context.csv", "combined": "combined.csv"},
        "rater": "rater", "emotions": list(cfg.labels),
        "scale": {"low": cfg.ratings.scale[0], "high": cfg.ratings.scale[1]},
        "valence": {"from_emotions": {e: VALENCE.get(e, 0.0) for e in cfg.labels if VALENCE.get(e, 0.0)}},
        "face": {"id": ["face"], "image": "face_image", "image_dir": "faces"},
        "situation": situation,
    }


def generate_ratings(cfg: RatingSynthConfig) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, list]:
    """({face, context, combined} rating tables, truth, faces to render) without touching the disk."""
    trials, _choices, truth, faces, dists = generate_with_distributions(cfg)
    rng = np.random.default_rng(cfg.seed + 2)
    labels = list(cfg.labels)
    sit_cols = ["own_decision", "partner_decision", "outcome", "pot", "payoff"]
    ids = trials["trial_id"].to_numpy(object)
    keys = {"face": pd.DataFrame({"face": ids, "participant": trials["participant"],
                                  "face_image": [f"{t}.png" for t in ids]}),
            "context": pd.DataFrame({"situation": ids, **{c: trials[c] for c in sit_cols}}),
            "combined": pd.DataFrame({"face": ids, "situation": ids, **{c: trials[c] for c in sit_cols}})}
    tables = {}
    for cond in ("face", "context", "combined"):
        R = cfg.raters[cond]
        ratings = rate(dists[cond], R, rng, cfg)
        parts = [keys[cond].assign(rater=f"{cond[:3]}{r:02d}", **{e: ratings[r][:, k] for k, e in enumerate(labels)})
                 for r in range(R)]
        tables[cond] = pd.concat(parts, ignore_index=True)
    truth = truth.assign(**{f"p_face_{e}": dists["face"][:, k] for k, e in enumerate(labels)})
    return tables, truth, faces


def write_rating_corpus(cfg: RatingSynthConfig, out: str | Path, *, progress: bool = True) -> Path:
    """Generate and write the rating corpus into `out` atomically; returns the path of its data.yaml."""
    tables, truth, faces = generate_ratings(cfg)
    rng = np.random.default_rng(cfg.seed + 1)  # the face jitter stream of synth.write_corpus
    with staged_dir(out) as stage:
        (stage / "faces").mkdir()
        for tid, emotion, x, style in tqdm(faces, desc="rendering faces", disable=not progress, unit="face"):
            render_face(emotion, x, style, size=cfg.image_size, jitter=rng).save(stage / "faces" / f"{tid}.png")
        for cond, df in tables.items():
            write_text(stage / f"{cond}.csv", df.to_csv(index=False))
        write_text(stage / "truth.csv", truth.to_csv(index=False))
        write_text(stage / "data.yaml", yaml.safe_dump(rating_data_config(cfg), sort_keys=False, width=120))
        write_text(stage / "synth.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, width=120))
    return Path(out) / "data.yaml"
