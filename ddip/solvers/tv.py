"""Total variation by ADMM: the z-TV data-consistency step of DiffusionMBIR and the classical ADMM-TV baseline.

Objective (paper Eq. 14/29, with the differences ``D_d`` along the chosen axes of the ``(D, C, H, W)`` volume):

    min_x ½‖y − A x‖² + λ Σ_d ‖D_d x‖₁

ADMM with splitting ``z_d = D_d x`` and scaled duals ``u_d`` (as the authors' code runs it):

    x ← CG on (A^H A + ρ Σ D_dᴴD_d) x = A^H y + ρ Σ D_dᴴ(z_d − u_d)     (started at the current x)
    z_d ← soft(D_d x + u_d, λ/ρ)
    u_d ← u_d + D_d x − z_d

Differences are circular forward differences, as in the authors' code (the last slice wraps to the first). When the
volume's slices are split across processes (:mod:`ddip.physics.sharding`), the differences along the slice axis fetch
the neighbouring block's edge slice (a halo exchange) and the CG inner products are summed over the ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddip.physics.base import normal_of
from ddip.physics.cg import conjugate_gradient
from ddip.physics.sharding import Shard, shard_of


def diff(x: Tensor, dim: int, shard: Shard | None = None) -> Tensor:
    """Circular forward difference ``x[k+1] − x[k]`` along ``dim``.

    With ``shard`` (``x`` one block of slices of a split volume, ``dim`` 0) the slice after the block comes from
    the next rank.
    """
    if shard is not None and dim == 0:
        return torch.cat([x[1:], shard.next_first(x)]) - x
    return torch.roll(x, -1, dims=dim) - x


def diff_adjoint(d: Tensor, dim: int, shard: Shard | None = None) -> Tensor:
    """Exact adjoint of :func:`diff`: ``d[k−1] − d[k]`` (the slice before a block comes from the previous rank)."""
    if shard is not None and dim == 0:
        return torch.cat([shard.previous_last(d), d[:-1]]) - d
    return torch.roll(d, 1, dims=dim) - d


def soft_threshold(v: Tensor, tau: float) -> Tensor:
    """Proximal map of ``τ‖·‖₁``; for complex values it shrinks the magnitude and keeps the phase."""
    if v.is_complex():
        mag = v.abs()
        return v * torch.clamp(mag - tau, min=0) / torch.where(mag > 0, mag, torch.ones_like(mag))
    return torch.sign(v) * torch.clamp(v.abs() - tau, min=0)


def admm_tv(x: Tensor, y: Tensor, physics, *, dims: tuple[int, ...], lam: float, rho: float, n_admm: int,
            cg_iters: int, z: Tensor | None = None, u: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``n_admm`` ADMM iterations (each with ``cg_iters`` CG steps) from ``x`` and the carried ``(z, u)``.

    ``z`` and ``u`` hold one difference image per axis in ``dims`` (stacked on a new leading axis); pass None to
    start them at zero. Differentiable in ``x`` (adaptation backpropagates through it). Returns ``(x, z, u)``.
    """
    normal = normal_of(physics)
    aty = physics.A_adjoint(y)
    shard = shard_of(physics)
    if z is None:
        z = torch.zeros((len(dims), *x.shape), dtype=x.dtype, device=x.device)
    if u is None:
        u = torch.zeros_like(z)

    def system(v: Tensor) -> Tensor:
        return normal(v) + rho * sum(diff_adjoint(diff(v, d, shard), d, shard) for d in dims)

    for _ in range(n_admm):
        rhs = aty + rho * sum(diff_adjoint(z[k] - u[k], d, shard) for k, d in enumerate(dims))
        x = conjugate_gradient(system, rhs, x, n_iter=cg_iters, reduce="volume",
                               sum_ranks=None if shard is None else shard.sum)
        dx = torch.stack([diff(x, d, shard) for d in dims])
        z = soft_threshold(dx + u, lam / rho)
        u = u + dx - z
    return x, z, u
