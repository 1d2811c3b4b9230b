"""Bayesian cue integration (Ong, Zaki & Goodman 2015), plain and salience-weighted, vectorised over items.

Plain:     P(e|f,c) ∝ P(e|f) · P(e|c) / P(e)
Tempered:  log P(e|f,c) = log P(e) + w_face·[log P(e|f) − log P(e)] + w_context·[log P(e|c) − log P(e)] + const
           (each cue's evidence, its log-likelihood ratio against the prior, scaled by the salience weight;
           w = (1, 1) is plain BCI)
Pool:      P(e|f,c) = s·P(e|f) + (1 − s)·P(e|c), s = w_face / (w_face + w_context) (a linear opinion pool)
           Only the share s matters, so pool laws are fitted in s alone (total weight fixed at 1: w_face = s,
           w_context = 1 − s) and their gaps are gaps in face share.

All functions take arrays shaped (n_items, n_dimensions, n_support) and weights shaped (n_items,).
Weights are fitted to the combined-condition judgements (`fit_law`) by one of three objectives, the same for
every law of a run: likelihood of the individual judgements, KLD between each cell's observed and predicted
distribution, or squared error of each cell's mean (expected rating, or label probability for choices).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import minimize

from vlm_salience.cue_models import Block, CueTable
from vlm_salience.salience import LawKind, SalienceLaw

Rule = Literal["face", "context", "product", "pool"]
RULES: tuple[Rule, ...] = ("face", "context", "product", "pool")
Objective = Literal["likelihood", "kld", "rmse"]
OBJECTIVES: tuple[Objective, ...] = ("likelihood", "kld", "rmse")


CHUNK = 4096  # items per block of work: small enough that the temporaries stay in cache


def _mixed_logs(lf: np.ndarray, lc: np.ndarray, l0: np.ndarray, w_face: np.ndarray, w_context: np.ndarray
                ) -> np.ndarray:
    """Unnormalised log P = w_face lf + w_context lc + (1 - w_face - w_context) l0, max-shifted per row."""
    shape = (-1,) + (1,) * (lf.ndim - 1)
    wf, wc = np.reshape(w_face, shape), np.reshape(w_context, shape)
    logp = np.multiply(lf, wf)
    tmp = np.multiply(lc, wc)
    logp += tmp
    np.multiply(l0, 1.0 - wf - wc, out=tmp)
    logp += tmp
    logp -= logp.max(axis=-1, keepdims=True)
    return logp


def tempered_from_logs(lf: np.ndarray, lc: np.ndarray, l0: np.ndarray, w_face: np.ndarray,
                       w_context: np.ndarray) -> np.ndarray:
    """The tempered product from log-distributions (n, ..., S); returns probabilities."""
    w_face, w_context = np.broadcast_to(w_face, lf.shape[:1]), np.broadcast_to(w_context, lf.shape[:1])
    out = np.empty(lf.shape)
    for start in range(0, len(lf), CHUNK):
        sl = slice(start, start + CHUNK)
        p = _mixed_logs(lf[sl], lc[sl], l0[sl], w_face[sl], w_context[sl])
        np.exp(p, out=p)
        p /= p.sum(axis=-1, keepdims=True)
        out[sl] = p
    return out


def log_tempered(lf: np.ndarray, lc: np.ndarray, l0: np.ndarray, w_face: np.ndarray,
                 w_context: np.ndarray) -> np.ndarray:
    """Normalised log-probabilities of the tempered product (what likelihood fitting needs)."""
    logp = _mixed_logs(lf, lc, l0, np.broadcast_to(w_face, lf.shape[:1]), np.broadcast_to(w_context, lf.shape[:1]))
    logp -= np.log(np.exp(logp).sum(axis=-1, keepdims=True))
    return logp


def tempered_product(face: np.ndarray, context: np.ndarray, prior: np.ndarray,
                     w_face: np.ndarray, w_context: np.ndarray) -> np.ndarray:
    return tempered_from_logs(np.log(face), np.log(context), np.log(prior), w_face, w_context)


def linear_pool(face: np.ndarray, context: np.ndarray, face_share: np.ndarray) -> np.ndarray:
    s = np.reshape(face_share, (-1,) + (1,) * (face.ndim - 1))
    return s * face + (1.0 - s) * context


def combine(block: Block, rule: Rule, w_face: np.ndarray, w_context: np.ndarray) -> np.ndarray:
    if rule == "face":
        return block.face
    if rule == "context":
        return block.context
    if rule == "product":
        return tempered_from_logs(*block.logs(), w_face, w_context)
    if rule == "pool":
        return linear_pool(block.face, block.context, w_face / (w_face + w_context))
    raise ValueError(f"unknown combination rule '{rule}'; expected one of {RULES}")


def predict(cues: CueTable, rule: Rule, law: SalienceLaw, expressivity: np.ndarray
            ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Combined distributions per block, and the (n, 2) weights (w_face, w_context) each item got."""
    wf, wc = law.weights(expressivity)
    return {b.name: combine(b, rule, wf, wc) for b in cues.blocks}, np.column_stack([wf, wc])


def nll(cues: CueTable, rule: Rule, law: SalienceLaw, expressivity: np.ndarray) -> float:
    """Mean negative log-likelihood of the combined-condition judgements."""
    wf, wc = law.weights(expressivity)
    total, n = 0.0, 0.0
    for b in cues.blocks:
        if b.targets is None:
            raise ValueError("fitting needs combined-condition judgements (targets); this corpus has none")
        if rule == "product":
            logp = log_tempered(*b.logs(), wf, wc)
        else:
            logp = np.log(np.clip(combine(b, rule, wf, wc), 1e-300, None))
        total -= float((b.targets * logp).sum())
        n += float(b.targets.sum())
    return total / max(n, 1.0)


def _cell_loss(cues: CueTable, rule: Rule, law: SalienceLaw, expressivity: np.ndarray, objective: Objective
               ) -> float:
    """Mean over (item x dimension) cells of every block: KL(observed || predicted), or the squared error of the
    cell's mean (expected value over the support; label probabilities for a categorical block)."""
    wf, wc = law.weights(expressivity)
    total, n = 0.0, 0
    for b in cues.blocks:
        if b.targets is None:
            raise ValueError("fitting needs combined-condition judgements (targets); this corpus has none")
        pred = combine(b, rule, wf, wc)
        tot = b.targets.sum(axis=-1, keepdims=True)
        obs = b.targets / np.where(tot > 0, tot, 1.0)
        has = tot[..., 0] > 0
        if objective == "kld":
            q = np.log(np.clip(pred, 1e-300, None))
            with np.errstate(divide="ignore", invalid="ignore"):
                terms = np.where(obs > 0, obs * (np.log(np.where(obs > 0, obs, 1.0)) - q), 0.0).sum(axis=-1)
            total += float(terms[has].sum())
            n += int(has.sum())
        elif b.categorical:
            se = ((pred - obs) ** 2)[has]
            total += float(se.sum())
            n += int(se.size)
        else:
            se = ((pred - obs) @ b.support) ** 2
            total += float(se[has].sum())
            n += int(has.sum())
    return total / max(n, 1)


def loss(cues: CueTable, rule: Rule, law: SalienceLaw, expressivity: np.ndarray,
         objective: Objective = "likelihood") -> float:
    """What a fit minimises: mean NLL per judgement, mean KLD per cell, or mean squared error per cell."""
    if objective == "likelihood":
        return nll(cues, rule, law, expressivity)
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown fit objective '{objective}'; expected one of {OBJECTIVES}")
    return _cell_loss(cues, rule, law, expressivity, objective)


def _log_sigmoid(a: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -a)


_POOL_N = {"control": 1, "hard": 2, "logistic": 2}


def _pool_theta(kind: LawKind, phi: np.ndarray) -> np.ndarray:
    """A pool law's parameters (face-share logits, or the logistic's alpha and slope) as the law's vector, with
    the total weight fixed at 1: w_face = s, w_context = 1 - s."""
    phi = np.asarray(phi, dtype=float)
    if kind == "control":
        return np.array([_log_sigmoid(phi[0]), _log_sigmoid(-phi[0])])
    if kind == "hard":
        return np.array([_log_sigmoid(phi[0]), _log_sigmoid(-phi[0]), _log_sigmoid(phi[1]),
                         _log_sigmoid(-phi[1])])
    return np.array([0.0, phi[0], phi[1]])


def fit_law(cues: CueTable, rule: Rule, kind: LawKind, expressivity: np.ndarray, *,
            threshold: float = 0.5, ridge: float = 1e-4, objective: Objective = "likelihood") -> SalienceLaw:
    """Salience weights that minimise the objective on these items (the caller passes training items only).
    Product laws are fitted in (log) weights; pool laws in face share alone, as only the share moves a pool."""
    if kind == "plain" or rule in ("face", "context"):
        return SalienceLaw.plain(threshold)
    x = np.asarray(expressivity, dtype=float)
    if rule == "pool":
        start = np.zeros(_POOL_N[kind])
        bounds = [(-8.0, 8.0)] * _POOL_N[kind]
        if kind == "logistic":
            bounds = SalienceLaw.bounds(kind)[1:]

        def to_theta(phi: np.ndarray) -> np.ndarray:
            return _pool_theta(kind, phi)
    else:
        start = SalienceLaw.initial(kind)
        bounds = SalienceLaw.bounds(kind)

        def to_theta(phi: np.ndarray) -> np.ndarray:
            return phi

    def objective_fn(phi: np.ndarray) -> float:
        law = SalienceLaw.from_vector(kind, to_theta(phi), threshold)
        return loss(cues, rule, law, x, objective) + ridge * float(np.sum((phi - start) ** 2))

    starts = [start]
    if kind == "logistic":
        starts += [start + np.eye(len(start))[-1] * s for s in (-6.0, 6.0)]
    best = None
    for s0 in starts:
        res = minimize(objective_fn, s0, method="L-BFGS-B", bounds=bounds)
        if best is None or res.fun < best.fun:
            best = res
    return SalienceLaw.from_vector(kind, to_theta(best.x), threshold)
