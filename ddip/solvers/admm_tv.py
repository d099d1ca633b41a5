"""ADMM-TV: the classical prior-free baseline, anisotropic 3D total variation."""

from __future__ import annotations

import torch
from torch import Tensor

from ddip.physics.base import pseudo_inverse
from ddip.solvers.tv import admm_tv


def admm_tv_reconstruct(y: Tensor, physics, *, lam: float, rho: float, n_admm: int = 100, cg_iters: int = 10,
                        dims: tuple[int, ...] = (0, 2, 3)) -> Tensor:
    """min_x ½‖y − Ax‖² + λ Σ_d ‖D_d x‖₁ over the slice axis and both in-plane axes, started at A^†y."""
    with torch.no_grad():
        x, _, _ = admm_tv(pseudo_inverse(physics, y), y, physics, dims=dims, lam=lam, rho=rho, n_admm=n_admm,
                          cg_iters=cg_iters)
    return x
