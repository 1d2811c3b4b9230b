"""Entropy-regularised optimal transport between text tokens and visual tokens: Sinkhorn in the log domain.

Why the log domain: the plain form scales K = exp(-C / eps); with costs of order 1 and eps = 1e-3, exp(-1000)
is 0 in fp32 and the plan becomes 0/0. The log-domain form keeps the dual potentials f, g as logs (a first step
that cannot underflow, then absorbed scalings on a stabilised kernel), which never leaves the representable range.
Batched over clips (one (B, n, m) tensor), masked (zero-mass rows or columns are padding), differentiable by
unrolling (autograd through the iterations).

The update order is POT's `ot.sinkhorn` (v first, then u), so at equal iterations the plans agree with POT's to
float precision: the tests and `benchmarks/bench_grace.py` compare them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numpy.lib.stride_tricks import as_strided


@dataclass
class Transport:
    """The result of one batched solve."""

    plan: torch.Tensor  # (B, n, m): rows sum to a, columns to b (after convergence)
    cost: torch.Tensor  # (B,): <plan, C>, the transport cost (the loss term)


PAD = -1e4  # log-mass of padding: exp(PAD + anything bounded) is 0 in fp32, yet every sum stays finite


def _log_mass(x: torch.Tensor) -> torch.Tensor:
    """log of a non-negative mass vector, PAD where it is zero (padding), with finite gradients."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), torch.full_like(x, PAD))


def sinkhorn_log(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, n_iters: int = 100, *,
                 tau: float = 30.0) -> Transport:
    """Batched log-domain Sinkhorn. cost (B, n, m), a (B, n), b (B, m) (each summing to the same mass; zeros mark
    padding), eps > 0. Returns the plan and the transport cost <plan, cost> per clip.

    The potentials f, g (log u, log v) live in the log domain; between absorptions the iterations run as
    batched mat-vecs on the stabilised kernel exp(-C/eps + f + g) with bounded scalings (Schmitzer's absorption:
    whenever a scaling leaves [e^-tau, e^tau] it is absorbed into the potentials and the kernel rebuilt). The
    first iteration cannot underflow (logsumexp form with gradients; without, a column-shifted kernel and a
    logsumexp u-step only where a row underflows). The iterates equal the plain ones (POT's order: v, then u)
    wherever those are representable.

    Speed (CPU, where the (B, n, m) tensors dominate): -C/eps is computed once, and the kernel and the plan are
    built with as few full-size temporaries as autograd allows; without gradients (inference, the benchmark)
    one exp2 builds the kernel, every full-size step runs in place and the mat-vecs (NumPy's BLAS on CPU) write
    into preallocated buffers, near the memory bandwidth (`benchmarks/bench_grace.py sinkhorn` times it
    against POT's per-problem loop)."""
    if cost.dim() == 2:
        out = sinkhorn_log(cost[None], a[None], b[None], eps, n_iters, tau=tau)
        return Transport(out.plan[0], out.cost[0])
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    grad = torch.is_grad_enabled() and (cost.requires_grad or a.requires_grad or b.requires_grad)
    tiny = torch.finfo(cost.dtype).tiny
    hi, lo = math.exp(tau), math.exp(-tau)  # |log s| > tau  <=>  s outside [e^-tau, e^tau]
    log_a, log_b = _log_mass(a), _log_mass(b)
    # padding's scalings are exactly 0 (mass 0): they must not trigger an absorption at every iteration
    padded = bool((a <= 0).any() | (b <= 0).any())
    real = (a > 0, b > 0) if padded else None
    if grad:
        return _solve_autograd(cost, a, b, eps, n_iters, log_a, log_b, real, tiny, hi, lo, padded)
    return _solve_inplace(cost, a, b, eps, n_iters, log_a, log_b, real, tiny, hi, lo, padded)


def _solve_autograd(cost, a, b, eps, n_iters, log_a, log_b, real, tiny, hi, lo, padded) -> Transport:
    """The differentiable solve: out-of-place steps (autograd keeps what the backward pass needs)."""
    m = cost * (-1.0 / eps)  # (B, n, m), once
    g = log_b - torch.logsumexp(m, dim=1)  # f = 0 at the start
    f = log_a - torch.logsumexp(m + g[:, None, :], dim=2)
    kernel = _kernel(m, f, g)  # the current plan: rows sum to a
    kernel_t = kernel.transpose(1, 2).contiguous()  # row-vector products on both sides: torch's fast path
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(n_iters - 1):
        v = b / (u[:, None, :] @ kernel)[:, 0].clamp_min(tiny)
        u = a / (v[:, None, :] @ kernel_t)[:, 0].clamp_min(tiny)
        if _outside(u, v, hi, lo, real):  # absorb the scalings into the potentials; rebuild the kernel
            f = f + u.clamp_min(tiny).log()
            g = g + v.clamp_min(tiny).log()
            kernel = _kernel(m, f, g)
            kernel_t = kernel.transpose(1, 2).contiguous()
            u, v = torch.ones_like(a), torch.ones_like(b)
    plan = u[:, :, None] * kernel * v[:, None, :]
    if padded:
        plan = plan.masked_fill((a <= 0)[:, :, None] | (b <= 0)[:, None, :], 0.0)
    return Transport(plan=plan, cost=(plan * cost).sum(dim=(1, 2)))


@torch.no_grad()
def _solve_inplace(cost, a, b, eps, n_iters, log_a, log_b, real, tiny, hi, lo, padded) -> Transport:
    """The same iterates without autograd: one full-size buffer on CPU (the kernel; elsewhere also its
    transpose), one exp, the mat-vecs into preallocated buffers (see _MatVecs).

    The kernel starts as exp(-(C - min_i C)/eps): each column's largest real entry is 1, so the first v-step
    (column sums in [1, n]) is exact for any eps, and the first u-step is exact unless a row's products
    underflow (checked: then that step is redone in logsumexp form, a second exp, as small eps needs). u and
    v share one buffer, so the absorption check is one min/max with no concatenation."""
    bsz, n, m = cost.shape
    kernel = torch.empty(cost.shape, dtype=cost.dtype, device=cost.device)  # contiguous whatever cost is
    pad_rows = (a <= 0)[:, :, None] if padded else None
    # the column minima are over real rows; padded rows get no kernel mass (exp(-inf) = 0)
    cmin = (cost.masked_fill(pad_rows, math.inf) if padded else cost).amin(dim=1)
    f, g = torch.zeros_like(a), cmin * (1.0 / eps)  # exp(m + f + g) with m = -C/eps
    _build_kernel(cost, eps, None, g, kernel, pad_rows)  # f = 0: one pass fewer
    uv = kernel.new_empty(bsz, n + m)  # u | v: one buffer, one min/max per iteration
    u, v = uv[:, None, :n], uv[:, None, n:]
    u.fill_(1.0)
    mv = _MatVecs(kernel, uv)
    uk, vk = mv.uk, mv.vk  # u K (B, 1, m), K v as (B, 1, n)
    a3, b3 = a[:, None, :], b[:, None, :]
    real_uv = torch.cat([real[0], real[1]], dim=1) if padded else None
    # iteration 1: v exactly; u exactly unless K v underflows on a real row
    mv.row()
    torch.div(b3, uk.clamp_min_(tiny), out=v)
    mv.col()
    low = vk[:, 0].masked_fill(pad_rows[:, :, 0], 1.0).amin() if padded else vk.amin()
    if not low.item() >= _SAFE:  # redo the u-step in logsumexp form: the kernel becomes the plan so far
        g = g + log_b - uk[:, 0].log()  # uk >= 1 on real columns (column maxima are 1): exact
        k = torch.add((g * _LOG2E)[:, None, :], cost, alpha=-_LOG2E / eps, out=kernel)  # (m + g) in bits
        top = k.amax(dim=2)
        k.sub_(top[:, :, None]).exp2_()
        top = top * _LN2
        f = log_a - (k.sum(dim=2).log() + top)
        kernel.mul_((f + top).exp()[:, :, None])  # exp(m + f + g): rows sum to a; 0 on padded rows
        mv.refresh()
        uv.fill_(1.0)
    else:
        torch.div(a3, vk.clamp_min_(tiny), out=u)
    for it in range(n_iters):
        if it:
            mv.row()
            torch.div(b3, uk.clamp_min_(tiny), out=v)
            mv.col()
            torch.div(a3, vk.clamp_min_(tiny), out=u)
        if _outside_uv(uv, hi, lo, real_uv):  # absorb the scalings into the potentials; rebuild the kernel
            f = f + u[:, 0].clamp_min(tiny).log()
            g = g + v[:, 0].clamp_min(tiny).log()
            _build_kernel(cost, eps, f, g, kernel, pad_rows)
            mv.refresh()
            uv.fill_(1.0)
    plan = kernel.mul_(u.transpose(1, 2)).mul_(v)  # the kernel is not needed any more
    if padded:
        plan.masked_fill_(pad_rows | (b <= 0)[:, None, :], 0.0)
    return Transport(plan=plan, cost=mv.inner(plan, cost))  # <plan, C>, no temporary


_NUMPY_BLAS = True  # the CPU route below; the tests switch it off to check the torch.bmm route too


class _MatVecs:
    """u K -> uk (B, 1, m) and K v -> vk (B, 1, n) for a batched kernel K (B, n, m) and u | v in one buffer
    uv (B, n + m), by the fastest route measured (256 clips of 32 x 128, one thread, a 2-core AMD EPYC).
    On CPU, NumPy's matmul on the same memory: its OpenBLAS gemv ran these products ~1.3-1.8x faster than
    torch.bmm (MKL), and its column form K v as fast as the row form, so no K^T is kept. Elsewhere (GPU,
    other dtypes) torch.bmm with row-vector products on K and on a copy of K^T (torch's column-vector bmm ran
    1.5-10x slower than its row form on CPU)."""

    def __init__(self, kernel: torch.Tensor, uv: torch.Tensor):
        bsz, n, m = kernel.shape
        self.kernel, self.uk, self.vk = kernel, kernel.new_empty(bsz, 1, m), kernel.new_empty(bsz, 1, n)
        self.numpy = (_NUMPY_BLAS and kernel.device.type == "cpu"
                      and kernel.dtype in (torch.float32, torch.float64))
        if self.numpy:  # views of the torch buffers: the products write straight into uk, vk
            buf, s = uv.numpy(), uv.element_size()
            row = buf.strides[0]
            self._k, self._uk = kernel.numpy(), self.uk.numpy()
            self._u = as_strided(buf, (bsz, 1, n), (row, row, s))
            self._v = as_strided(buf[:, n:], (bsz, m, 1), (row, s, s))  # a column per clip, BLAS-ready
            self._vk = as_strided(self.vk.numpy(), (bsz, n, 1), (n * s, s, s))
        else:
            self.u, self.v = uv[:, None, :n], uv[:, None, n:]
            self.kernel_t = _transposed(kernel)

    def refresh(self) -> None:
        """After the kernel was rebuilt in place."""
        if not self.numpy:
            _transposed(self.kernel, out=self.kernel_t)

    def row(self) -> None:
        if self.numpy:
            np.matmul(self._u, self._k, out=self._uk)
        else:
            torch.bmm(self.u, self.kernel, out=self.uk)

    def col(self) -> None:
        if self.numpy:
            np.matmul(self._k, self._v, out=self._vk)
        else:
            torch.bmm(self.v, self.kernel_t, out=self.vk)

    def inner(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """<x_b, y_b> per clip (B,), no full-size temporary (torch.bmm's (1, nm) x (nm, 1) form took ~1.4 ms
        here, NumPy's ~0.25 ms)."""
        bsz = x.shape[0]
        if self.numpy:
            xs, ys = x.numpy().reshape(bsz, 1, -1), y.detach().contiguous().numpy().reshape(bsz, -1, 1)
            return torch.from_numpy(np.matmul(xs, ys)[:, 0, 0])
        return torch.bmm(x.view(bsz, 1, -1), y.reshape(bsz, -1, 1))[:, 0, 0]


def _build_kernel(cost, eps, f, g, out, pad_rows=None) -> torch.Tensor:
    """out = exp(-C/eps + f_i + g_j) (f None: 0), 0 on padded rows, in two passes and an exp2 (torch's exp2
    measured ~2x faster than its exp here; the log2(e) factor is folded into the scale)."""
    torch.add((g * _LOG2E)[:, None, :], cost, alpha=-_LOG2E / eps, out=out)
    if f is not None:
        out.add_((f * _LOG2E)[:, :, None])
    if pad_rows is not None:
        out.masked_fill_(pad_rows, -math.inf)
    return out.exp2_()


_LOG2E, _LN2 = 1.0 / math.log(2.0), math.log(2.0)
_SAFE = 1e-30  # K v above this on every real row: the kernel entries lost to underflow (< 1.2e-38 each,
# times v <= b) change it by < 1e-8 relative, so the first u-step is exact to fp32


def _transposed(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """A contiguous copy of x (B, n, m) as (B, m, n). On CPU through NumPy: its strided copy measured ~1.6x
    faster than torch's here (0.9 vs 1.4 ms for 256 x 32 x 128 fp32)."""
    if out is None:
        out = x.new_empty(x.shape[0], x.shape[2], x.shape[1])
    if x.device.type == "cpu" and x.is_contiguous() and out.is_contiguous():
        np.copyto(out.numpy(), x.numpy().transpose(0, 2, 1))
    else:
        out.copy_(x.transpose(1, 2))
    return out


def _outside_uv(uv: torch.Tensor, hi: float, lo: float, real: torch.Tensor | None) -> bool:
    """Whether a scaling of a real token (u | v in one buffer) left [lo, hi]."""
    if real is not None:
        uv = torch.where(real, uv, 1.0)
    low, high = torch.aminmax(uv)
    return high.item() > hi or low.item() < lo  # NaN compares False: no absorption (as before)


def _kernel(m: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """exp(m + f_i + g_j)."""
    return torch.exp(m + f[:, :, None] + g[:, None, :])


def _outside(u: torch.Tensor, v: torch.Tensor, hi: float, lo: float,
             real: tuple[torch.Tensor, torch.Tensor] | None = None) -> bool:
    """`_outside_uv` for separate u (B, n) and v (B, m), as the differentiable solve keeps them."""
    with torch.no_grad():
        return _outside_uv(torch.cat([u, v], dim=1), hi, lo, None if real is None else torch.cat(real, dim=1))


def sinkhorn_plain(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float,
                   n_iters: int = 100) -> torch.Tensor:
    """The plain (scaling) form, for comparison only: u, v with K = exp(-C/eps). Underflows at small eps."""
    k = torch.exp(-cost / eps)
    u = torch.ones_like(a) / a.shape[-1]
    v = torch.ones_like(b)
    for _ in range(n_iters):
        v = b / (k.transpose(-1, -2) @ u[..., None])[..., 0]
        u = a / (k @ v[..., None])[..., 0]
    return u[..., :, None] * k * v[..., None, :]


def cosine_cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - cos between every x token (B, n, D) and y token (B, m, D): (B, n, m) in [0, 2]."""
    x = torch.nn.functional.normalize(x.float(), dim=-1)
    y = torch.nn.functional.normalize(y.float(), dim=-1)
    return 1.0 - x @ y.transpose(-1, -2)
