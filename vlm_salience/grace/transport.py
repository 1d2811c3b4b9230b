"""Entropy-regularised optimal transport between text tokens and visual tokens: Sinkhorn in the log domain.

Why the log domain: the plain form scales K = exp(-C / eps); with costs of order 1 and eps = 1e-3, exp(-1000)
is 0 in fp32 and the plan becomes 0/0. The log-domain form keeps the dual potentials f, g as logs (logsumexp
for the first step, then absorbed scalings on a stabilised kernel), which never leaves the representable range.
Batched over clips (one (B, n, m) tensor), masked (zero-mass rows or columns are padding), differentiable by
unrolling (autograd through the iterations).

The update order is POT's `ot.sinkhorn` (v first, then u), so at equal iterations the plans agree with POT's to
float precision: the tests and `benchmarks/bench_grace.py` compare them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
    first iteration runs fully in logsumexp form, so the kernel never starts underflowed. The iterates equal the
    plain ones (POT's order: v, then u) wherever those are representable."""
    if cost.dim() == 2:
        out = sinkhorn_log(cost[None], a[None], b[None], eps, n_iters, tau=tau)
        return Transport(out.plan[0], out.cost[0])
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if n_iters < 1:
        raise ValueError(f"n_iters must be >= 1, got {n_iters}")
    tiny = torch.finfo(cost.dtype).tiny
    log_a, log_b = _log_mass(a), _log_mass(b)
    m = -cost / eps  # (B, n, m)
    g = log_b - torch.logsumexp(m, dim=1)  # f = 0 at the start
    f = log_a - torch.logsumexp(m + g[:, None, :], dim=2)
    kernel = torch.exp(m + f[:, :, None] + g[:, None, :])  # the current plan: rows sum to a
    kernel_t = kernel.transpose(1, 2).contiguous()  # row-vector products on both sides: torch's fast path
    u, v = torch.ones_like(a), torch.ones_like(b)
    for _ in range(n_iters - 1):
        v = b / (u[:, None, :] @ kernel)[:, 0].clamp_min(tiny)
        u = a / (v[:, None, :] @ kernel_t)[:, 0].clamp_min(tiny)
        with torch.no_grad():
            big = bool((u.clamp_min(tiny).log().abs() > tau).any() | (v.clamp_min(tiny).log().abs() > tau).any())
        if big:  # absorb the scalings into the potentials; rebuild the kernel
            f = f + u.clamp_min(tiny).log()
            g = g + v.clamp_min(tiny).log()
            kernel = torch.exp(m + f[:, :, None] + g[:, None, :])
            kernel_t = kernel.transpose(1, 2).contiguous()
            u, v = torch.ones_like(a), torch.ones_like(b)
    plan = u[:, :, None] * kernel * v[:, None, :]
    pad = (a <= 0)[:, :, None] | (b <= 0)[:, None, :]
    plan = plan.masked_fill(pad, 0.0)
    return Transport(plan=plan, cost=(plan * cost).sum(dim=(1, 2)))


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
