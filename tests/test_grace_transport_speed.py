"""GRACE's batched log-domain Sinkhorn has two solvers: the differentiable one (training) and the in-place one
(no gradient: evaluation, inspection, the benchmark). They must give the same plans and costs, with and without
padding, at large and small regularisation (where the scalings are absorbed), and match POT; padding must not
trigger absorptions (an absorption rebuilds the full kernel: one per iteration made padded batches slow).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _problem(b: int = 4, n: int = 6, m: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(b, n, m, generator=g) * 2
    a = torch.rand(b, n, generator=g) + 0.1
    w = torch.rand(b, m, generator=g) + 0.1
    return c, a / a.sum(1, keepdim=True), w / w.sum(1, keepdim=True)


def _padded(c, a, w):
    """Clip 0 keeps 4 text tokens and 6 visual tokens; clip 2 keeps 5 visual tokens; the rest is padding."""
    a, w = a.clone(), w.clone()
    a[0, 4:] = 0
    w[0, 6:] = 0
    w[2, 5:] = 0
    return c, a / a.sum(1, keepdim=True), w / w.sum(1, keepdim=True)


@pytest.mark.parametrize("eps", [0.5, 0.05, 2e-3])
@pytest.mark.parametrize("pad", [False, True])
@pytest.mark.parametrize("numpy_blas", [True, False])
def test_inplace_solver_equals_the_differentiable_one_and_pot(eps, pad, numpy_blas, monkeypatch):
    """Both mat-vec routes of the in-place solver: NumPy's BLAS on CPU, torch.bmm with K^T elsewhere."""
    import ot

    import vlm_salience.grace.transport as tr
    from vlm_salience.grace.transport import sinkhorn_log

    monkeypatch.setattr(tr, "_NUMPY_BLAS", numpy_blas)
    routes = []
    real_init = tr._MatVecs.__init__
    monkeypatch.setattr(tr._MatVecs, "__init__", lambda self, *x: real_init(self, *x) or routes.append(self.numpy))

    c, a, w = _problem()
    if pad:
        c, a, w = _padded(c, a, w)
    iters = 80
    with torch.no_grad():
        fast = sinkhorn_log(c, a, w, eps, iters)
    slow = sinkhorn_log(c.clone().requires_grad_(True), a, w, eps, iters)
    assert slow.plan.requires_grad and not fast.plan.requires_grad  # the two paths really ran
    assert routes == [numpy_blas]  # the in-place solver ran once, on the route asked for
    np.testing.assert_allclose(fast.plan.numpy(), slow.plan.detach().numpy(), atol=1e-6, rtol=0)
    np.testing.assert_allclose(fast.cost.numpy(), slow.cost.detach().numpy(), atol=1e-6, rtol=0)
    assert fast.plan.dtype == torch.float32 and torch.isfinite(fast.plan).all()
    for i in range(len(c)):
        rows, cols = (a[i] > 0).numpy(), (w[i] > 0).numpy()
        ci = c[i].numpy()[np.ix_(rows, cols)].astype(np.float64)
        method = "sinkhorn_log" if eps < 0.01 else "sinkhorn"
        ref = ot.sinkhorn(a[i].numpy()[rows].astype(np.float64), w[i].numpy()[cols].astype(np.float64), ci, eps,
                          method=method, numItermax=iters, stopThr=0.0)
        np.testing.assert_allclose(fast.plan[i].numpy()[np.ix_(rows, cols)], ref, atol=1e-4, rtol=0)
        assert fast.plan[i].numpy()[~rows].sum() == 0 and fast.plan[i].numpy()[:, ~cols].sum() == 0
        assert fast.cost[i].item() == pytest.approx(float((ref * ci).sum()), abs=1e-4)


def test_padding_does_not_trigger_absorptions(monkeypatch):
    import vlm_salience.grace.transport as tr

    calls = []
    real = tr._outside_uv
    monkeypatch.setattr(tr, "_outside_uv", lambda *args: calls.append(r := real(*args)) or r)
    c, a, w = _problem()
    with torch.no_grad():
        tr.sinkhorn_log(c, a, w, 0.5, 30)
        plain = sum(calls)
        calls.clear()
        tr.sinkhorn_log(*_padded(c, a, w), 0.5, 30)
        padded = sum(calls)
    assert len(calls) == 30 and plain == 0  # eps 0.5: the scalings stay bounded, nothing to absorb
    assert padded == 0  # zero scalings of padding tokens are not "unbounded"
    calls.clear()
    with torch.no_grad():
        out = tr.sinkhorn_log(*_padded(c, a, w), 1e-3, 60)  # small eps: absorptions do happen, and stay exact
    assert sum(calls) > 0 and torch.isfinite(out.plan).all()
    np.testing.assert_allclose(out.plan.sum(2).numpy(), _padded(c, a, w)[1].numpy(), atol=1e-5)


def test_non_contiguous_cost_gives_the_same_plan():
    """A cost that is a transposed view (e.g. C^T of visual x text costs) must not reach BLAS with odd strides."""
    from vlm_salience.grace.transport import sinkhorn_log

    c, a, w = _problem()
    ct = c.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major per clip
    assert not ct.is_contiguous()
    with torch.no_grad():
        ref, out = sinkhorn_log(c, a, w, 0.05, 40), sinkhorn_log(ct, a, w, 0.05, 40)
    np.testing.assert_allclose(out.plan.numpy(), ref.plan.numpy(), atol=1e-7, rtol=0)
    np.testing.assert_allclose(out.cost.numpy(), ref.cost.numpy(), atol=1e-7, rtol=0)


def test_no_grad_context_with_a_cost_that_requires_grad():
    """Under torch.no_grad the in-place solver runs even for a leaf that requires grad (NumPy views need detach)."""
    from vlm_salience.grace.transport import sinkhorn_log

    c, a, w = _problem()
    ref = sinkhorn_log(c, a, w, 0.05, 30)
    with torch.no_grad():
        out = sinkhorn_log(c.clone().requires_grad_(True), a, w, 0.05, 30)
    assert not out.plan.requires_grad
    np.testing.assert_allclose(out.cost.numpy(), ref.cost.numpy(), atol=1e-7, rtol=0)
