"""The fit objectives of `bci.fit_law` with their analytic gradients, for L-BFGS-B's `jac=True`.

Why: numeric differencing evaluated each objective 1 + (number of parameters) times per gradient, about 87
evaluations per fit on exp. 4, and 30% of the study's time went into those evaluations. Here one pass gives the
objective and its gradient, by the chain rule in three links:

1. the loss with respect to the combination's inputs: the product's logits z = l0 + w_face (lf - l0) +
   w_context (lc - l0) (softmax over the support), or the pool's face share s (mixture s f + (1 - s) c,
   renormalised where s varies over a choice's support), for each objective (likelihood, KLD, RMSE);
2. those with respect to the per-item weights (w_face, w_context), (n,) or (n, E), through `bci.shape_weights`
   (a block without emotions reads the geometric mean of per-emotion weights) and, for a pool, s = wf / (wf + wc);
3. the weights with respect to the law's parameter vector (`weights_jacobian`, one branch per law kind, with a
   central-difference fallback for a kind it does not know, on the cheap weight map only).

`Prepared` holds what every evaluation of one fit reuses (log-cue differences, observed shares, counts), built once
per set of cues, support axis first so that the sums and maxima over the support are vectorised. At the same
parameters the objective is `bci.loss`'s up to rounding (tests/test_gradients.py checks values, to 1e-12 relative,
and gradients, against finite differences, on every law kind, rule and objective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlm_salience.cue_models import CueTable
from vlm_salience.salience import SalienceLaw


@dataclass
class _BlockData:
    """One block's arrays, support first: (S, n, D), so that every sum and max over the support runs over the
    outer axis, vectorised across items and dimensions (numpy's reductions over a short last axis were the slow
    part of an evaluation)."""

    ax: int | None  # the axis of the (n, D, S) distributions carrying the emotions (bci.emotion_axis)
    categorical: bool
    support: np.ndarray  # (S, 1, 1)
    l0: np.ndarray
    a: np.ndarray  # lf - l0: d z / d w_face
    b: np.ndarray  # lc - l0: d z / d w_context
    context: np.ndarray
    fmc: np.ndarray  # face - context: d mixture / d s
    targets: np.ndarray
    tot: np.ndarray  # (n, D) judgements per cell
    obs: np.ndarray  # observed shares per cell (0 where a cell has none)
    has: np.ndarray  # (n, D) cells with judgements
    log_obs: np.ndarray  # log(obs), 0 where obs is 0 (KLD's constant part)


@dataclass
class Prepared:
    """One fit's reusable arrays: built once (`prepare`), read by every evaluation of `loss_and_grad`."""

    blocks: list[_BlockData]
    objective: str
    count: float  # what the mean objective divides by (judgements, or cells, as bci.loss counts them)


def _t(a: np.ndarray) -> np.ndarray:
    """(n, D, S) -> (S, n, D), contiguous."""
    return np.ascontiguousarray(np.moveaxis(a, -1, 0))


def prepare(cues: CueTable, objective: str, axes: list[int | None]) -> Prepared:
    """`axes`: each block's emotion axis (bci.emotion_axis), in block order."""
    out, count = [], 0.0
    for blk, ax in zip(cues.blocks, axes, strict=True):
        if blk.targets is None:
            raise ValueError("fitting needs combined-condition judgements (targets); this corpus has none")
        lf, lc, l0 = blk.logs()
        tot = blk.targets.sum(axis=-1)
        obs = blk.targets / np.where(tot > 0, tot, 1.0)[..., None]
        has = tot > 0
        log_obs = np.log(np.where(obs > 0, obs, 1.0))
        out.append(_BlockData(ax, blk.categorical, np.asarray(blk.support, dtype=float)[:, None, None], _t(l0),
                              _t(lf - l0), _t(lc - l0), _t(blk.context), _t(blk.face - blk.context),
                              _t(blk.targets), tot, _t(obs), has, _t(log_obs)))
        if objective == "likelihood":
            count += float(blk.targets.sum())
        elif objective == "rmse" and blk.categorical:
            count += float(has.sum()) * blk.targets.shape[-1]
        else:
            count += float(has.sum())
    return Prepared(out, objective, max(count, 1.0))


# -- link 2: full-shape gradients back to the per-item weights ---------------------------------------------------

def _geo(w: np.ndarray) -> np.ndarray:
    """Per-emotion weights (n, E) summarised per item by their geometric mean, as bci.item_weights."""
    return np.exp(np.log(w).mean(axis=1))


def _shaped(w: np.ndarray, ax: int | None) -> np.ndarray:
    """Weights shaped to broadcast against (S, n, D) arrays, as bci.shape_weights shapes them against (n, D, S):
    (n,) per item, (n, E) on the emotion axis (D for ratings, S for a choice), or their geometric mean where the
    block carries no emotions."""
    w = np.asarray(w, dtype=float)
    if w.ndim == 2 and ax is None:
        w = _geo(w)
    if w.ndim <= 1:
        return w[None, :, None]
    return w[None, :, :] if ax == 1 else w.T[:, :, None]


def _reduce(g: np.ndarray, w: np.ndarray, ax: int | None) -> np.ndarray:
    """d loss / d w (w's shape) from g (S, n, D) = d loss / d (the shaped weight at every entry)."""
    if w.ndim <= 1:  # (the outer axis first: numpy sums it vectorised, a multi-axis sum was 3x slower)
        return g.sum(axis=0).sum(axis=1)
    if ax is None:  # the geometric mean over emotions: d gm / d w_e = gm / (E w_e)
        gm = _geo(w)
        return (g.sum(axis=0).sum(axis=1) * gm)[:, None] / (w.shape[1] * w)
    return g.sum(axis=0) if ax == 1 else np.einsum("snd->ns", g)


# -- link 1: each rule and objective ------------------------------------------------------------------------------

def _product_block(d: _BlockData, wf: np.ndarray, wc: np.ndarray, objective: str
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """(unnormalised loss, d/d wf, d/d wc) of one block under the tempered product: softmax over the support of
    z = l0 + wf (lf - l0) + wc (lc - l0), max-shifted."""
    wf, wc = np.asarray(wf, dtype=float), np.asarray(wc, dtype=float)
    z = d.a * _shaped(wf, d.ax)
    z += d.b * _shaped(wc, d.ax)
    z += d.l0
    z -= z.max(axis=0)
    e = np.exp(z)
    zsum = e.sum(axis=0)
    p = e / zsum
    if objective == "likelihood":
        value = -(float(np.vdot(d.targets, z)) - float(np.vdot(d.tot, np.log(zsum))))
        gz = d.tot * p - d.targets
    elif objective == "kld":
        q = np.log(np.clip(p, 1e-300, None))
        terms = np.where(d.obs > 0, d.obs * (d.log_obs - q), 0.0).sum(axis=0)
        value = float(terms[d.has].sum())
        gz = d.has * p - d.obs
    elif d.categorical:
        r = p - d.obs
        value = float((r ** 2)[:, d.has].sum())
        gz = 2.0 * p * (r - (r * p).sum(axis=0)) * d.has
    else:
        m = ((p - d.obs) * d.support).sum(axis=0)
        value = float((m ** 2)[d.has].sum())
        mean = (p * d.support).sum(axis=0)
        gz = 2.0 * (m * d.has) * p * (d.support - mean)
    return value, _reduce(gz * d.a, wf, d.ax), _reduce(gz * d.b, wc, d.ax)


def _pool_block(d: _BlockData, wf: np.ndarray, wc: np.ndarray, objective: str
                ) -> tuple[float, np.ndarray, np.ndarray]:
    """(unnormalised loss, d/d wf, d/d wc) of one block under the linear pool (bci.combine's 'pool')."""
    wf, wc = np.asarray(wf, dtype=float), np.asarray(wc, dtype=float)
    geo = wf.ndim == 2 and d.ax is None  # no emotions here: the global pair's share
    gf, gc = (_geo(wf), _geo(wc)) if geo else (wf, wc)
    s_raw = gf / (gf + gc)
    ax = None if geo else d.ax
    s = _shaped(s_raw, ax)
    mixed = d.context + s * d.fmc  # s face + (1 - s) context
    renorm = s.shape[0] > 1  # a share that varies over a choice's support
    if renorm:
        msum = mixed.sum(axis=0)
        pred = mixed / msum
    else:
        pred = mixed
    if objective in ("likelihood", "kld"):
        clipped = np.clip(pred, 1e-300, None)
        q = np.log(clipped)
        if objective == "likelihood":
            value = -float(np.vdot(d.targets, q))
            gp = -d.targets / clipped
        else:
            terms = np.where(d.obs > 0, d.obs * (d.log_obs - q), 0.0).sum(axis=0)
            value = float(terms[d.has].sum())
            gp = -d.obs / clipped
    elif d.categorical:
        r = pred - d.obs
        value = float((r ** 2)[:, d.has].sum())
        gp = 2.0 * r * d.has
    else:
        m = ((pred - d.obs) * d.support).sum(axis=0)
        value = float((m ** 2)[d.has].sum())
        gp = 2.0 * (m * d.has) * d.support
    if renorm:
        gp = (gp - (gp * pred).sum(axis=0)) / msum
    g_s = _reduce(gp * d.fmc, s_raw, ax)
    den = (gf + gc) ** 2
    g_gf, g_gc = g_s * gc / den, -g_s * gf / den
    if geo:
        E = wf.shape[1]
        return value, (g_gf * gf)[:, None] / (E * wf), (g_gc * gc)[:, None] / (E * wc)
    return value, g_gf, g_gc


def loss_and_weight_grad(prep: Prepared, rule: str, wf: np.ndarray, wc: np.ndarray
                         ) -> tuple[float, np.ndarray, np.ndarray]:
    """The mean objective (as bci.loss) at per-item weights (wf, wc), and its gradient in each."""
    step = _product_block if rule == "product" else _pool_block
    if rule not in ("product", "pool"):
        raise ValueError(f"only the product and the pool have weights to fit, not '{rule}'")
    total, gf, gc = 0.0, np.zeros(np.shape(wf)), np.zeros(np.shape(wc))
    for d in prep.blocks:
        v, a, b = step(d, wf, wc, prep.objective)
        total += v
        gf += a
        gc += b
    return total / prep.count, gf / prep.count, gc / prep.count


# -- link 3: the weights as functions of the law's parameters --------------------------------------------------

# kinds whose weight Jacobian is written out below; any other is differenced (cheap: the weights alone)
ANALYTIC_KINDS = ("control", "hard", "logistic", "reliability", "learned", "per_emotion")

def weights_jacobian(law: SalienceLaw, covariates: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(w_face, w_context, J_face, J_context): the law's weights (from `law.weights`, the one mapping) and their
    derivatives in its parameters, J shaped weights.shape + (n_params,), or with 1 item where every item has the
    same weights (per_emotion)."""
    wf, wc = law.weights(covariates)
    p = np.asarray(law.params, dtype=float)
    P, kind = len(p), law.kind
    jf, jc = np.zeros(wf.shape + (P,)), np.zeros(wc.shape + (P,))
    if kind not in ANALYTIC_KINDS and kind != "plain":  # a kind without formulas: differences of the weight map
        for j in range(P):
            h = 1e-6 * max(1.0, abs(p[j]))
            up, dn = p.copy(), p.copy()
            up[j] += h
            dn[j] -= h
            (fu, cu), (fd, cd) = (SalienceLaw.from_vector(kind, v, law.threshold, law.scale).weights(covariates)
                                  for v in (up, dn))
            jf[..., j], jc[..., j] = (fu - fd) / (2 * h), (cu - cd) / (2 * h)
    elif kind == "control":
        jf[:, 0], jc[:, 1] = wf, wc
    elif kind == "hard":
        hi = law.is_expressive(covariates)
        jf[:, 0], jf[:, 2] = np.where(hi, 0.0, wf), np.where(hi, wf, 0.0)
        jc[:, 1], jc[:, 3] = np.where(hi, 0.0, wc), np.where(hi, wc, 0.0)
    elif kind in ("logistic", "reliability", "learned"):
        cov = np.asarray(covariates, dtype=float)
        if kind == "logistic":
            feats = (cov[..., 0] if cov.ndim == 2 else cov)[:, None] - law.threshold
        elif kind == "reliability":
            feats = cov[:, 1:2]
        else:
            feats = law.gate_features(cov)
        tau = np.exp(p[0])
        share = wf / tau
        ds = tau * share * (1.0 - share)  # d w_face / d logit = - d w_context / d logit
        jf[:, 0], jc[:, 0] = wf, wc
        jf[:, 1], jc[:, 1] = ds, -ds
        jf[:, 2:], jc[:, 2:] = ds[:, None] * feats, -ds[:, None] * feats
    elif kind == "per_emotion":  # one pair per emotion, the same for every item: J is (1, E, P)
        E = law.n_emotions
        centre = np.eye(E) - 1.0 / E  # d (d_e - mean d) / d d_j
        jf, jc = np.zeros((1, E, P)), np.zeros((1, E, P))
        jf[0, :, 0], jc[0, :, 1] = wf[0], wc[0]
        jf[0, :, 2:2 + E] = wf[0, :, None] * centre
        jc[0, :, 2 + E:] = wc[0, :, None] * centre
    return wf, wc, jf, jc


def loss_and_grad(prep: Prepared, rule: str, law: SalienceLaw, covariates: np.ndarray
                  ) -> tuple[float, np.ndarray]:
    """The mean objective of `law` on the prepared cues (bci.loss) and its gradient in the law's parameters."""
    wf, wc, jf, jc = weights_jacobian(law, covariates)
    value, gwf, gwc = loss_and_weight_grad(prep, rule, wf, wc)
    if len(jf) == 1 and len(gwf) > 1:  # the same weights for every item: sum the items first
        gwf, gwc = gwf.sum(axis=0, keepdims=True), gwc.sum(axis=0, keepdims=True)
    axes = list(range(gwf.ndim))
    grad = np.tensordot(gwf, jf, axes=(axes, axes)) + np.tensordot(gwc, jc, axes=(axes, axes))
    return value, grad
