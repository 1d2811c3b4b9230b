"""The table of salience law kinds: what each kind reads, how many parameters it has, where its fit starts and
stops, its prior, how the study judges it and whether the synthetic generator can plant it, declared once.

Why a table: the per-kind facts were kept in five places (the law, the fit, the study's covariates, the prior
settings, the generator's own list of kinds), and a kind added to one of them and not the others failed late or,
worse, silently fell through to another kind's branch. Every consumer now reads `LAWS`, and each one that keeps
per-kind code of its own (the weights in `salience.py`, the generator's builders in `data/synth.py`, the covariate
builders in `reliability.py`) checks at import that its code covers exactly the table (`check_covers`).

The maths of each kind (its weights as a function of its parameters) stays in `salience.py`; this module imports
nothing of the package, so that every layer can read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

# the static spelling of the kinds, for type checkers and pydantic configs; must equal the table (checked below)
LawKind = Literal["plain", "control", "hard", "logistic", "reliability", "per_emotion", "learned"]

Covariates = Literal["expressivity", "reliability", "gate"]  # what a law's weights are a function of
Size = Literal["emotions", "features"]  # what sets a sized law's parameter count: the emotions, the gate's features
Evidence = Literal["none", "gap", "exponent", "spread"]  # the statistic the study judges the law by
PoolForm = Literal["none", "pairs", "share", "emotion_share"]  # how a linear pool parametrises the law

MAX_LOG_WEIGHT = 4.0  # weights within [e^-4, e^4]: beyond that a cue is off or the product degenerate
MAX_GAMMA = 10.0
MAX_SLOPE = 60.0
_LW = (-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT)  # a log weight
_TOTAL = (-MAX_LOG_WEIGHT, MAX_LOG_WEIGHT + float(np.log(2)))  # log total weight (w_face + w_context)
_LOGIT = (-8.0, 8.0)  # a face-share intercept
_LOG2 = float(np.log(2.0))  # log total weight 2: w = (1, 1), plain BCI, at share 0.5


@dataclass(frozen=True)
class LawSpec:
    """One law kind. Parameters: `n_fixed` always, plus `per_size` for each unit of the law's size (an emotion of
    the corpus, a feature of the gate), so n = n_fixed + per_size * size."""

    name: str
    summary: str  # one line for errors and docs
    covariates: Covariates = "expressivity"  # expressivity (n,); reliability (n, 2); gate (n, k) features
    n_fixed: int = 0
    per_size: int = 0
    size: Size | None = None  # None: a fixed number of parameters
    initial: tuple[float, ...] = ()  # start of the fixed parameters (sized ones start at 0): plain BCI, w = (1, 1)
    bounds: tuple[tuple[float, float], ...] = ()  # of the fixed parameters
    size_bound: tuple[float, float] = (0.0, 0.0)  # of each sized parameter
    prior: str | None = None  # the study's `laws.<prior>`: the sd of the sized parameters' N(0, sd^2) prior
    prior_sd: float | None = None  # its default
    evidence: Evidence = "gap"  # gap: face-weight gap beyond the null's; exponent: `exponent` beyond the null's;
    #                             spread: the face share's spread beyond the null's; none: not judged
    exponent: int | None = None  # evidence exponent: the index of that parameter
    pool: PoolForm = "none"  # pairs: one share logit per weight pair; share: total fixed at 1, the rest as they are;
    #                          emotion_share: a share logit plus one deviation per emotion
    restarts: tuple[float, ...] = ()  # further starts of the fit, each moving the last parameter to this value
    nested: bool = False  # beside a block without emotions, fitted nested in its control (`bci._fit_per_emotion`)
    standardised: bool = False  # covariates standardised on the training items (the law carries the scale)
    plantable: bool = False  # the synthetic generator (`data/synth.py`) can plant it

    def n_params(self, size: int = 0) -> int:
        return self.n_fixed + self.per_size * size

    def initial_vector(self, size: int = 0) -> np.ndarray:
        return np.concatenate([np.asarray(self.initial, dtype=float), np.zeros(self.per_size * size)])

    def bounds_list(self, size: int = 0) -> list[tuple[float, float]]:
        return list(self.bounds) + [self.size_bound] * (self.per_size * size)

    def n_pool(self, size: int = 0) -> int:
        """Parameters of the law fitted as a linear pool (only the face share moves a pool)."""
        if self.pool == "pairs":
            return self.n_fixed // 2
        if self.pool == "share":
            return self.n_fixed - 1 + self.per_size * size
        if self.pool == "emotion_share":
            return 1 + size
        raise ValueError(f"salience law '{self.name}' has no pool form")

    @property
    def sized(self) -> bool:
        """Whether its parameter count is set by the data (and it carries a prior)."""
        return self.size is not None


LAWS: dict[str, LawSpec] = {s.name: s for s in (
    LawSpec("plain", "w = (1, 1) for every item: Bayesian cue integration (Ong, Zaki & Goodman 2015)",
            evidence="none", plantable=True),
    LawSpec("control", "one global pair (w_face, w_context): salience only counts where it beats it",
            n_fixed=2, initial=(0.0, 0.0), bounds=(_LW, _LW), evidence="none", pool="pairs", plantable=True),
    LawSpec("hard", "one pair for subtle faces (x <= threshold), one for expressive faces",
            n_fixed=4, initial=(0.0,) * 4, bounds=(_LW,) * 4, pool="pairs", plantable=True),
    LawSpec("logistic", "total tau, face share sigmoid(alpha + slope (x - threshold))",
            n_fixed=3, initial=(_LOG2, 0.0, 0.0), bounds=(_TOTAL, _LOGIT, (-MAX_SLOPE, MAX_SLOPE)), pool="share",
            restarts=(-6.0, 6.0), plantable=True),
    LawSpec("reliability", "total tau, face share sigmoid(alpha + gamma log(r_face / r_context))",
            covariates="reliability", n_fixed=3, initial=(_LOG2, 0.0, 0.0),
            bounds=(_TOTAL, _LOGIT, (-MAX_GAMMA, MAX_GAMMA)), evidence="exponent", exponent=2, pool="share",
            plantable=True),
    LawSpec("per_emotion", "one pair per emotion, shrunk toward the global pair by a prior",
            n_fixed=2, per_size=2, size="emotions", initial=(0.0, 0.0), bounds=(_LW, _LW), size_bound=_LW,
            prior="per_emotion_sd", prior_sd=0.5, evidence="spread", pool="emotion_share", nested=True,
            plantable=True),
    LawSpec("learned", "a gate over standardised item features: total tau, face share sigmoid(b0 + b . f)",
            covariates="gate", n_fixed=2, per_size=1, size="features", initial=(_LOG2, 0.0),
            bounds=(_TOTAL, _LOGIT), size_bound=(-MAX_GAMMA, MAX_GAMMA), prior="gate_sd", prior_sd=1.0,
            evidence="spread", pool="share", standardised=True),
)}


def known_kinds() -> str:
    return ", ".join(LAWS)


def law_spec(kind: str) -> LawSpec:
    """The table's entry of a kind; an unknown kind is refused with the known ones."""
    try:
        return LAWS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown salience law '{kind}'; known kinds: {known_kinds()}") from None


def kinds(**where: object) -> tuple[str, ...]:
    """The kinds whose table fields equal the given values, in table order: kinds(covariates="gate")."""
    for key in where:
        if key not in LawSpec.__dataclass_fields__ and not isinstance(getattr(LawSpec, key, None), property):
            raise ValueError(f"LawSpec has no field '{key}'")
    return tuple(n for n, s in LAWS.items() if all(getattr(s, k) == v for k, v in where.items()))


def check_covers(consumer: str, implemented: Iterable[str], expected: Iterable[str] | None = None) -> None:
    """Raise unless `consumer`'s per-kind code covers exactly `expected` (default: every kind of the table): a kind
    added to the table and not to its consumer, or the other way round, fails at import, naming both sides."""
    order = list(dict.fromkeys(LAWS if expected is None else expected))
    have, want = set(implemented), set(order)
    if have != want:
        missing, extra = sorted(want - have), sorted(have - want)
        raise RuntimeError(f"{consumer} does not match the salience law table (vlm_salience/law_kinds.py): "
                           + "; ".join(p for p in (f"missing {missing}" if missing else "",
                                                   f"unexpected {extra}" if extra else "") if p)
                           + f"; expected: {', '.join(order)}")


def check_table() -> None:
    """The table is coherent: the static `LawKind` spelling equals it, and each entry's fields fit together."""
    check_covers("LawKind (law_kinds.py)", get_args(LawKind))
    for s in LAWS.values():
        problems = [f"{f} '{getattr(s, f)}' is not one of {get_args(t)}" for f, t in
                    (("covariates", Covariates), ("evidence", Evidence), ("pool", PoolForm))
                    if getattr(s, f) not in get_args(t)]
        if s.size is not None and s.size not in get_args(Size):
            problems.append(f"size '{s.size}' is not one of {get_args(Size)}")
        if len(s.initial) != s.n_fixed or len(s.bounds) != s.n_fixed:
            problems.append(f"initial and bounds need {s.n_fixed} values")
        if s.sized != (s.per_size > 0) or s.sized != (s.prior is not None) or (s.prior is None) != (s.prior_sd is None):
            problems.append("a sized law has per_size > 0, a prior and its default sd; an unsized one none")
        if (s.evidence == "exponent") != (s.exponent is not None):
            problems.append("exponent evidence needs the exponent's index, and only it")
        if (s.pool == "none") != (s.n_fixed == 0):
            problems.append("every law with parameters has a pool form")
        if s.nested and s.size != "emotions":
            problems.append("only a per-emotion law is nested in its control")
        if problems:
            raise RuntimeError(f"salience law '{s.name}' in vlm_salience/law_kinds.py: {'; '.join(problems)}")


check_table()


_READS = {"expressivity": "expressivity", "reliability": "expressivity, log reliability ratio",
          "gate": "expressivity, log reliability ratio, context entropy"}
_JUDGED = {"none": "-", "gap": "face-weight gap beyond the null's", "exponent": "exponent beyond the null's",
           "spread": "spread of the face share beyond the null's"}


def markdown_table() -> str:
    """The table as docs/study.md shows it (a test keeps the page equal to this)."""
    rows = ["| kind | reads | parameters | prior sd (study config) | judged by | synth can plant |",
            "|---|---|---|---|---|---|"]
    for s in LAWS.values():
        n = f"{s.n_fixed}" + (f" + {s.per_size} per {s.size[:-1]}" if s.size else "")
        prior = f"`laws.{s.prior}` ({s.prior_sd})" if s.prior else "-"
        rows.append(f"| `{s.name}` | {_READS[s.covariates]} | {n} | {prior} | {_JUDGED[s.evidence]} | "
                    f"{'yes' if s.plantable else 'no'} |")
    return "\n".join(rows)
