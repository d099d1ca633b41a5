"""Batched, differentiable conjugate gradient for Hermitian positive (semi-)definite systems.

Used for every data-consistency step (DDS, DDNM, the MBIR x-update) and inside the adaptation loss, whose
gradient flows through the CG iterations themselves: the loop is written out-of-place so autograd can trace it.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from torch import Tensor

from ddip.errors import DdipError

Reduce = Literal["volume", "slice"]


def _dot(a: Tensor, b: Tensor, reduce: Reduce, sum_ranks: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Real part of the Hermitian inner product ``<a, b> = sum(conj(a) * b)``, over the batch or per slice.

    ``sum_ranks`` (a volume split across processes) adds up the partial sums of every rank.
    """
    prod = (a.conj() * b).real if a.is_complex() else a * b
    if reduce == "volume":
        return prod.sum() if sum_ranks is None else sum_ranks(prod.sum())
    return prod.flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(
    normal: Callable[[Tensor], Tensor],
    rhs: Tensor,
    x0: Tensor,
    *,
    n_iter: int,
    tol: float = 0.0,
    reduce: Reduce = "volume",
    sum_ranks: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Solve ``normal(x) = rhs`` by ``n_iter`` steps of conjugate gradient started at ``x0``.

    Args:
        normal: the Hermitian positive semi-definite operator, e.g. ``x -> A^H A x`` or ``x -> x + γ A^H A x``.
        rhs: right-hand side, a batch of slices ``(D, ...)``; real or complex.
        x0: starting point (DDS starts at the Tweedie estimate ``x̂₀``).
        n_iter: number of CG steps (the paper's M).
        tol: stop early once every residual norm is below ``tol · ||rhs||`` (relative; 0 runs all steps, which
            keeps the number of iterations, and so the autograd graph, independent of the data).
        reduce: ``"volume"`` takes the inner products over the whole batch (one step size for all slices, as the
            authors' code does, and required when ``normal`` couples slices, e.g. TV along z); ``"slice"`` takes them
            per slice (independent solves; only valid when ``normal`` acts on each slice separately).
        sum_ranks: for a volume whose slices are split across processes (:class:`ddip.physics.sharding.Shard.sum`), the
            sum over the ranks of the ``"volume"`` inner products, so every rank takes the step sizes of the whole
            volume. Not differentiable: used in sampling, not inside the adaptation loss.

    Inner products are Hermitian (``Re <a, b>`` with a conjugate), so complex systems converge as CG should.
    Out-of-place updates keep it differentiable with respect to ``rhs``, ``x0`` and whatever ``normal`` depends on.
    """
    if reduce not in ("volume", "slice"):
        raise DdipError(f"conjugate_gradient: reduce must be 'volume' or 'slice', got {reduce!r}")
    if n_iter < 0:
        raise DdipError(f"conjugate_gradient: n_iter must be >= 0, got {n_iter}")
    x = x0
    if n_iter == 0:
        return x
    r = rhs - normal(x)
    p = r
    rs = _dot(r, r, reduce, sum_ranks)
    # A slice whose residual has fallen to rounding level stops moving: on a singular system (a masked FFT, a
    # projector with a null space) further steps would divide rounding noise by rounding noise and blow up. So does
    # one whose search direction has fallen into the null space: once CG has converged, rounding turns p into a
    # direction whose curvature <p, Ap> is at rounding level (~eps·λmax·|p|², λmax at least the largest Rayleigh
    # quotient seen) while the residual is not yet — the MBIR x-update (A^H A + ρ D_zᵀD_z, a dozen distinct
    # eigenvalues) met it after ~14 steps and grew its iterate a hundredfold in five more.
    eps = torch.finfo(rs.dtype).eps
    floor = (100 * eps) ** 2 * rs.detach()
    curvature = torch.zeros_like(rs.detach())  # the largest Rayleigh quotient <p, Ap> / |p|² so far
    stop = (tol * _dot(rhs, rhs, reduce, sum_ranks).sqrt()) if tol > 0 else None
    for _ in range(n_iter):
        if stop is not None and bool((rs.sqrt() <= stop).all()):
            break
        ap = normal(p)
        pap = _dot(p, ap, reduce, sum_ranks)
        pp = _dot(p, p, reduce, sum_ranks).detach()
        curvature = torch.maximum(curvature, pap.detach() / torch.where(pp > 0, pp, torch.ones_like(pp)))
        active = (rs > floor) & (pap > 100 * eps * curvature * pp)
        alpha = torch.where(active, rs / torch.where(active, pap, torch.ones_like(pap)), torch.zeros_like(pap))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r, reduce, sum_ranks)
        beta = torch.where(active, rs_new / torch.where(active, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    return x
