"""Data configs (YAML in configs/data/): which files, which columns, which emotions and scales.

One class per corpus format, selected by `format:`. A researcher with the same design as a shipped corpus writes a
YAML like it and no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from vlm_salience.config import RelPath, StrictModel, load_config
from vlm_salience.data.corpus import RatingScale


class ScaleConfig(StrictModel):
    low: float
    high: float
    step: float = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> ScaleConfig:
        if not self.high > self.low or self.step <= 0:
            raise ValueError(f"scale needs low < high and step > 0, got low={self.low} high={self.high}")
        return self

    def build(self) -> RatingScale:
        return RatingScale(self.low, self.high, self.step)


class ValenceConfig(StrictModel):
    """Either a rated valence column on its own scale, or valence derived from signed emotion weights."""

    column: str | None = None
    scale: ScaleConfig | None = None
    from_emotions: dict[str, float] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ValenceConfig:
        if (self.column is None) == (self.from_emotions is None):
            raise ValueError("give exactly one of 'column' (with 'scale') or 'from_emotions'")
        if self.column is not None and self.scale is None:
            raise ValueError("a rated valence 'column' needs its 'scale' (low, high)")
        return self


class OutcomesConfig(StrictModel):
    """The possible outcomes of a situation, e.g. a lottery's payoffs: used to average the context model into
    the prior P(e) as the observer who has not seen the outcome would.

    Either per-row numeric outcomes (`values` and `probs` name columns), or fixed categorical `levels` with their
    probabilities, the same for every row (e.g. the four joint decisions CC/CD/DC/DD of a split-or-steal game;
    split_steal format only)."""

    feature: str  # the situation feature each outcome sets (e.g. win, outcome)
    values: list[str] = Field(default_factory=list)  # columns holding the possible values (payoff1, payoff2, ...)
    probs: list[str] = Field(default_factory=list)  # columns holding their probabilities
    levels: dict[str, float] | None = None  # fixed level -> probability (normalised)

    @model_validator(mode="after")
    def _paired(self) -> OutcomesConfig:
        if self.levels is not None:
            if self.values or self.probs:
                raise ValueError("give either outcomes.levels or outcomes.values with outcomes.probs, not both")
            if not self.levels or min(self.levels.values()) < 0 or sum(self.levels.values()) <= 0:
                raise ValueError("outcomes.levels must map each level to a non-negative probability, not all 0")
            return self
        if len(self.values) != len(self.probs) or not self.values:
            raise ValueError("outcomes.values and outcomes.probs must be non-empty and of equal length")
        return self


class BinConfig(StrictModel):
    """A numeric column turned into words (e.g. pot size), for readable text: embedding models read words, not
    magnitudes of digits."""

    column: str
    edges: list[float]  # increasing; a value v gets labels[i] for edges[i-1] <= v < edges[i]
    labels: list[str]

    @model_validator(mode="after")
    def _shape(self) -> BinConfig:
        if len(self.labels) != len(self.edges) + 1:
            raise ValueError("bins need one more label than edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:])):
            raise ValueError("bin edges must increase")
        return self


class SituationConfig(StrictModel):
    id: list[str] = Field(default_factory=list)  # columns that identify the situation (cue tables)
    features: list[str]  # context features the context model regresses on (strings become categories)
    interactions: list[tuple[str, str]] = Field(default_factory=list)  # products of two features, e.g. outcome x pot
    derived: dict[str, str] = Field(default_factory=dict)  # feature = pandas expression of columns
    bins: dict[str, BinConfig] = Field(default_factory=dict)  # word columns from numbers, for the text
    text: str  # readable description, a Python format string over the situation's columns
    outcomes: OutcomesConfig | None = None

    @model_validator(mode="after")
    def _interactions_known(self) -> SituationConfig:
        for pair in self.interactions:
            unknown = [f for f in pair if f not in self.features]
            if unknown:
                raise ValueError(f"interaction {list(pair)} names {unknown}, which are not in features")
        return self


class FaceConfig(StrictModel):
    id: list[str]  # columns that identify the expressive cue
    text: str | None = None  # a column describing the cue (e.g. the utterance)
    image: str | None = None  # a column with an image file name, relative to image_dir
    image_dir: RelPath | None = None
    expressivity: str | None = None  # a column holding a given expressivity score


class CueTablesFiles(StrictModel):
    face: str
    context: str
    combined: str | None = None


class CueTablesConfig(StrictModel):
    """Face-only / context-only / combined rating tables (Ong, Zaki & Goodman 2015 design)."""

    format: Literal["cue_tables"]
    name: str
    root: RelPath
    files: CueTablesFiles
    rater: str
    emotions: list[str]
    scale: ScaleConfig
    valence: ValenceConfig
    face: FaceConfig
    situation: SituationConfig

    @model_validator(mode="after")
    def _no_levels(self) -> CueTablesConfig:
        if self.situation.outcomes is not None and self.situation.outcomes.levels is not None:
            raise ValueError("situation.outcomes.levels (fixed categorical outcomes) is supported by the "
                             "split_steal format only; give outcomes.values and outcomes.probs columns")
        return self


class GoldenBallsFiles(StrictModel):
    expression: str = "expression_only_ratings.csv"
    context: str = "context_only_ratings.csv"
    episode_key: str = "episode_key.csv"


class GoldenBallsConfig(StrictModel):
    """Houlihan et al. (2022) Golden Balls ratings: expression-only and context-only, joined by the episode key."""

    format: Literal["golden_balls"]
    name: str
    root: RelPath
    files: GoldenBallsFiles = Field(default_factory=GoldenBallsFiles)
    emotions: list[str]
    scale: ScaleConfig
    valence: ValenceConfig
    situation: SituationConfig

    @model_validator(mode="after")
    def _no_levels(self) -> GoldenBallsConfig:
        if self.situation.outcomes is not None and self.situation.outcomes.levels is not None:
            raise ValueError("situation.outcomes.levels (fixed categorical outcomes) is supported by the "
                             "split_steal format only; give outcomes.values and outcomes.probs columns")
        return self


class SplitStealFiles(StrictModel):
    trials: str = "trials.csv"
    ratings: str = "ratings.csv"


class SplitStealConfig(StrictModel):
    """The USC Split-Steal manifest: one row per trial, one row per observer judgement (see README)."""

    format: Literal["split_steal"]
    name: str
    root: RelPath
    files: SplitStealFiles = Field(default_factory=SplitStealFiles)
    labels: list[str]
    neutral_label: str | None = None
    valence_scale: ScaleConfig
    situation: SituationConfig
    expressivity_column: str | None = None


DataConfig = Annotated[Union[CueTablesConfig, GoldenBallsConfig, SplitStealConfig], Field(discriminator="format")]


def load_data_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> DataConfig:
    """Load a data YAML (its top level is the data config itself)."""
    from vlm_salience.config import apply_overrides, read_yaml, validate

    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return validate(raw, DataConfig, source=path, base_dir=path.resolve().parent)


__all__ = [
    "CueTablesConfig", "DataConfig", "GoldenBallsConfig", "SplitStealConfig", "ScaleConfig", "ValenceConfig",
    "load_data_config", "load_config",
]
