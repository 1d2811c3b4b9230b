"""Bayesian cue integration (Ong, Zaki & Goodman 2015), plain and salience-weighted, vectorised over items.

Plain:     P(e|f,c) ∝ P(e|f) · P(e|c) / P(e)
Tempered:  log P(e|f,c) = log P(e) + w_face·[log P(e|f) − log P(e)] + w_context·[log P(e|c) − log P(e)] + const
           (each cue's evidence, its log-likelihood ratio against the prior, scaled by the salience weight;
           w = (1, 1) is plain BCI)
Pool:      P(e|f,c) = s·P(e|f) + (1 − s)·P(e|c), s = w_face / (w_face + w_context) (a linear opinion pool)

All functions take arrays shaped (n_items, n_dimensions, n_support) and weights shaped (n_items,).
Weights are fitted by maximum likelihood of the combined-condition judgements (`fit_law`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.optimize import minimize

from vlm_salience.cue_models import Block, CueTable
from vlm_salience.salience import LawKind, SalienceLaw

Rule = Literal["face", "context", "product", "pool"]
RULES: tuple[Rule, ...] = ("face", "context", "product", "pool")


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


def fit_law(cues: CueTable, rule: Rule, kind: LawKind, expressivity: np.ndarray, *,
            threshold: float = 0.5, ridge: float = 1e-4) -> SalienceLaw:
    """Maximum-likelihood salience weights on these items (the caller passes training items only)."""
    if kind == "plain" or rule in ("face", "context"):
        return SalienceLaw.plain(threshold)
    x = np.asarray(expressivity, dtype=float)
    start = SalienceLaw.initial(kind)

    def objective(theta: np.ndarray) -> float:
        law = SalienceLaw.from_vector(kind, theta, threshold)
        return nll(cues, rule, law, x) + ridge * float(np.sum((theta - start) ** 2))

    starts = [start]
    if kind == "logistic":
        starts += [start + np.array([0.0, 0.0, s]) for s in (-6.0, 6.0)]
    best = None
    for s0 in starts:
        res = minimize(objective, s0, method="L-BFGS-B", bounds=SalienceLaw.bounds(kind))
        if best is None or res.fun < best.fun:
            best = res
    return SalienceLaw.from_vector(kind, best.x, threshold)
