"""Entropy-regularised optimal transport between text tokens and visual tokens: Sinkhorn in the log domain.

Why the log domain: the plain form scales K = exp(-C / eps); with costs of order 1 and eps = 1e-3, exp(-1000)
is 0 in fp32 and the plan becomes 0/0. The log-domain form iterates the dual potentials f, g with logsumexp,
which never leaves the representable range. Batched over clips (one (B, n, m) tensor), masked (zero-mass rows or
columns are padding), differentiable by unrolling (autograd through the iterations).

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


def _log_mass(x: torch.Tensor) -> torch.Tensor:
    """log of a non-negative mass vector, -inf where it is zero (padding), with finite gradients."""
    return torch.where(x > 0, x.clamp_min(torch.finfo(x.dtype).tiny).log(), torch.full_like(x, -float("inf")))


def sinkhorn_log(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, n_iters: int = 100) -> Transport:
    """Batched log-domain Sinkhorn. cost (B, n, m), a (B, n), b (B, m) (each summing to the same mass; zeros mark
    padding), eps > 0. Returns the plan and the transport cost <plan, cost> per clip."""
    if cost.dim() == 2:
        out = sinkhorn_log(cost[None], a[None], b[None], eps, n_iters)
        return Transport(out.plan[0], out.cost[0])
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    log_a, log_b = _log_mass(a), _log_mass(b)
    m = -cost / eps  # (B, n, m)
    # pad rows/cols: keep them out of every logsumexp (-inf), but keep sums finite where a whole row is padding
    m = m.masked_fill(~torch.isfinite(log_a)[:, :, None] | ~torch.isfinite(log_b)[:, None, :], -float("inf"))
    f = torch.zeros_like(log_a)  # f / eps, i.e. log u
    ninf_a, ninf_b = torch.full_like(log_a, -float("inf")), torch.full_like(log_b, -float("inf"))
    live_a, live_b = torch.isfinite(log_a), torch.isfinite(log_b)
    for _ in range(n_iters):
        g = torch.where(live_b, log_b - _lse(m + f[:, :, None], dim=1), ninf_b)
        f = torch.where(live_a, log_a - _lse(m + g[:, None, :], dim=2), ninf_a)
    log_plan = m + f[:, :, None] + g[:, None, :]
    plan = torch.where(torch.isfinite(log_plan), log_plan, torch.full_like(log_plan, -float("inf"))).exp()
    return Transport(plan=plan, cost=(plan * cost.masked_fill(plan == 0, 0.0)).sum(dim=(1, 2)))


def _lse(x: torch.Tensor, dim: int) -> torch.Tensor:
    """logsumexp that gives -inf (not nan) over an all -inf slice, with zero gradient there."""
    mx = x.amax(dim=dim, keepdim=True)
    mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx)).detach()
    s = (x - mx).exp().sum(dim=dim)
    return torch.where(s > 0, s.clamp_min(torch.finfo(x.dtype).tiny).log(), torch.full_like(s, -float("inf"))) \
        + mx.squeeze(dim)


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
