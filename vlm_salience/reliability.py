"""How reliable each cue is for each item: the dispersion of what it says (issue 16).

Cue-combination work weighs each cue by its reliability, the inverse of its variance (Ernst & Banks 2002). Here a
cue's variance for an item is the variance of its distribution over the support, averaged over the response
dimensions: for a rated dimension the variance of the rating, for a categorical choice the total variance of the
one-hot answer, sum_k p_k (1 - p_k) (Gini impurity). The face cue's variance is the dispersion of the face-only
judgements of this face (through its smoothed estimate); the context cue's is the context model's predictive spread
for this situation. Their log ratio is the covariate of the `reliability` law (`vlm_salience.salience`).

Nothing here is fitted: every feature is a fixed function of one item's own cue distributions or of its face's
face-only judgements, so computing them on all items leaks nothing from a test fold (the cue models themselves are
estimated from the face-only and context-only conditions, never from the combined targets).

Beside it, descriptive features of the raw face-only judgements of each face (for reports and gates):
normalised entropy of the judgement distribution, mean per-dimension variance, and pairwise rater agreement.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import numpy as np

from vlm_salience.cue_models import Block, CueTable
from vlm_salience.law_kinds import Covariates, check_covers, law_spec
from vlm_salience.stats import distribution_variance  # numpy only; data/synth.py reads it there too

_EPS = 1e-12


def cue_variances(cues: CueTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per block: (face variance, context variance), each (n,)."""
    return {b.name: (distribution_variance(b.face, b.support, b.categorical),
                     distribution_variance(b.context, b.support, b.categorical)) for b in cues.blocks}


def log_reliability_ratio(cues: CueTable) -> np.ndarray:
    """(n,) z = log(reliability of the face / reliability of the context) = log(var_context / var_face), averaged
    over the blocks (each block's ratio is free of its scale's units). z > 0: the face is the more reliable cue."""
    parts = [np.log(np.maximum(vc, _EPS)) - np.log(np.maximum(vf, _EPS)) for vf, vc in cue_variances(cues).values()]
    return np.mean(parts, axis=0)


def law_input(cues: CueTable, expressivity: np.ndarray) -> np.ndarray:
    """(n, 2) covariates of a reliability law: column 0 expressivity (for the expressive/subtle split that gaps
    are reported on), column 1 the log reliability ratio of these items' cues."""
    x = np.asarray(expressivity, dtype=float)
    z = log_reliability_ratio(cues)
    if len(z) != len(x):
        raise ValueError(f"reliability covariates: {len(z)} items of cues but {len(x)} expressivity scores")
    return np.column_stack([x, z])


GATE_FEATURES = ("expressivity", "log_reliability_ratio", "context_entropy")


def context_entropy(cues: CueTable) -> np.ndarray:
    """(n,) normalised entropy (0: certain, 1: uniform) of the context model's prediction for each item, averaged
    over dimensions and blocks: how much the situation alone says."""
    parts = []
    for b in cues.blocks:
        p = b.context / b.context.sum(axis=-1, keepdims=True)
        h = -(p * np.log(np.maximum(p, _EPS))).sum(axis=-1) / np.log(p.shape[-1])
        parts.append(h.mean(axis=-1))
    return np.mean(parts, axis=0)


def gate_input(cues: CueTable, expressivity: np.ndarray) -> np.ndarray:
    """(n, 3) covariates of the learned gate, in the order of GATE_FEATURES: expressivity, log reliability ratio,
    context entropy (columns 0-1 are a reliability law's covariates, so both laws read the same matrix)."""
    return np.column_stack([law_input(cues, expressivity), context_entropy(cues)])


def _expressivity_only(cues: CueTable, expressivity: np.ndarray) -> np.ndarray:
    return expressivity


_COVARIATES = {"expressivity": _expressivity_only, "reliability": law_input, "gate": gate_input}
check_covers("reliability._COVARIATES (the builders of each covariate set)", _COVARIATES,
             expected=typing.get_args(Covariates))


def law_covariates(kind: str, cues: CueTable, expressivity: np.ndarray) -> np.ndarray:
    """A law's covariates for these items, as its table entry says (`covariates`): expressivity; (expressivity,
    log reliability ratio) for a reliability law; those and the context entropy for a learned gate. Computed from
    these very cues, so that resampled face cues carry their own reliability."""
    return _COVARIATES[law_spec(kind).covariates](cues, expressivity)


@dataclass(frozen=True)
class JudgementDispersion:
    """Per item, features of its face's raw face-only judgements (all in [0, 1] except variance)."""

    entropy: np.ndarray  # normalised entropy of the judgement distribution (0: all raters alike)
    variance: np.ndarray  # mean per-dimension variance of the judgements (ddof = 1)
    agreement: np.ndarray  # probability that two different raters give the same answer


def _block_dispersion(values: np.ndarray, groups: np.ndarray, n_faces: int, block: Block
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G,) entropy, variance, agreement per face from its rows (N, D) of ratings or (N, K) choice shares."""
    ent, var, agr = np.zeros(n_faces), np.zeros(n_faces), np.zeros(n_faces)
    for g in range(n_faces):
        rows = values[groups == g]
        n = len(rows)
        if block.categorical:
            counts = rows.sum(axis=0)[None, :]  # (1, K)
        else:
            idx = np.abs(rows[:, :, None] - block.support[None, None, :]).argmin(axis=-1)  # (n, D)
            counts = np.stack([np.bincount(idx[:, d], minlength=len(block.support))
                               for d in range(rows.shape[1])]).astype(float)  # (D, S)
        S = counts.shape[1]
        p = counts / np.maximum(counts.sum(axis=1, keepdims=True), _EPS)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=1) / np.log(S)
        ent[g] = h.mean()
        if block.categorical:
            var[g] = (p * (1 - p)).sum() * n / max(n - 1, 1)
        else:
            var[g] = rows.var(axis=0, ddof=1).mean() if n > 1 else 0.0
        agr[g] = ((counts * (counts - 1)).sum(axis=1) / max(n * (n - 1), 1)).mean() if n > 1 else 1.0
    return ent, var, agr


def judgement_dispersion(cues: CueTable, block: str = "emotions") -> JudgementDispersion:
    """Dispersion features of every item's face-only judgements, from the rows the face cues were estimated
    from (`CueTable.face_rows`)."""
    if block not in cues.face_rows or cues.face_index is None:
        raise ValueError(f"these cues record no face-only judgements for block '{block}'; build them with "
                         "build_cues")
    b = cues.block(block)
    values, groups = cues.face_rows[block]
    n_faces = int(groups.max()) + 1
    ent, var, agr = _block_dispersion(np.asarray(values, dtype=float), groups, n_faces, b)
    f = cues.face_index
    return JudgementDispersion(entropy=ent[f], variance=var[f], agreement=agr[f])


def empirical_face_cues(cues: CueTable) -> CueTable:
    """The same items with every face cue replaced by the raw histogram of its face-only judgements (floored):
    the plug-in truth for a no-law null of a reliability law. The smoothed estimate is not: smoothing (additive
    counts, a KDE's kernel) flattens a sharp face much more than an already smoothed one, so a null simulated from
    the estimate misses the bias that makes sharp faces look less reliable than they are, and a fit then finds
    gamma > 0 with no law planted."""
    from dataclasses import replace

    if not cues.face_rows or cues.face_index is None or cues.config is None:
        raise ValueError("these cues record no face-only judgements; build them with build_cues")
    blocks = []
    for b in cues.blocks:
        values, groups = cues.face_rows[b.name]
        values = np.asarray(values, dtype=float)
        G = int(groups.max()) + 1
        if b.categorical:
            hist = np.zeros((G, 1, values.shape[1]))
            np.add.at(hist[:, 0], groups, values)
        else:
            idx = np.abs(values[:, :, None] - b.support[None, None, :]).argmin(axis=-1)  # (N, D)
            hist = np.zeros((G, values.shape[1], len(b.support)))
            for d in range(values.shape[1]):
                np.add.at(hist[:, d], (groups, idx[:, d]), 1.0)
        hist = np.clip(hist / np.maximum(hist.sum(axis=-1, keepdims=True), _EPS), cues.config.floor, None)
        hist /= hist.sum(axis=-1, keepdims=True)
        nb = replace(b, face=hist[cues.face_index], _logs=None)
        nb.logs()
        blocks.append(nb)
    return replace(cues, blocks=blocks)
