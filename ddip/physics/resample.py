"""See an operator from an image grid of another size: ``A' = A ∘ R`` with R a linear resampling.

A prior works at the image size it was trained at. When the data were acquired on another grid, ``--resize``
reconstructs on the prior's grid through this composition: the unknown is the image ``x_P`` on the prior's P × P grid,
the data see ``R x_P`` on their S × S grid, and the result is reported as ``R x_P``. Nothing is guessed about the data:
the measurements and their operator are used as they are.

R is separable: one matrix per axis, made by :func:`torch.nn.functional.interpolate` applied to the identity
(linear interpolation when P < S, area averaging when P > S, the usual anti-aliased choices). As a matrix it has an
exact adjoint (its transpose), so ``A_adjoint`` stays a true adjoint and the operator passes the shared contract.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ddip.errors import DdipError
from ddip.physics.base import LinearOperator


def resampling_matrix(n_from: int, n_to: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """``(n_to, n_from)`` matrix resampling a 1-D signal of ``n_from`` samples to ``n_to`` (same field of view)."""
    if n_from < 1 or n_to < 1:
        raise DdipError(f"cannot resample {n_from} samples to {n_to}")
    eye = torch.eye(n_from, dtype=torch.float64).unsqueeze(1)  # n_from impulses, as (batch, channel, length)
    if n_to >= n_from:
        out = F.interpolate(eye, size=n_to, mode="linear", align_corners=False)
    else:
        out = F.interpolate(eye, size=n_to, mode="area")
    return out.squeeze(1).T.contiguous().to(dtype)


def resample(x: Tensor, size: int) -> Tensor:
    """Resample images ``(..., H, W)`` (real or complex) to ``size × size`` with the same matrices as the operator."""
    rh = resampling_matrix(x.shape[-2], size, dtype=x.real.dtype).to(x.device)
    rw = resampling_matrix(x.shape[-1], size, dtype=x.real.dtype).to(x.device)
    return _apply(x, rh, rw)


def _apply(x: Tensor, rh: Tensor, rw: Tensor) -> Tensor:
    rh, rw = rh.to(x.dtype), rw.to(x.dtype)
    return torch.einsum("ih,...hw,jw->...ij", rh, x, rw)


class Resampled(LinearOperator):
    """``physics ∘ R``: ``physics`` (images of S × S) seen from images of ``size × size``."""

    def __init__(self, physics, size: int):
        inner_shape = tuple(physics.img_shape) if hasattr(physics, "img_shape") else None
        if inner_shape is None or len(inner_shape) != 3 or inner_shape[-1] != inner_shape[-2]:
            raise DdipError(f"--resize needs an operator on square images (img_shape (C, S, S)), got {inner_shape}")
        self.physics, self.size, self.data_size = physics, int(size), int(inner_shape[-1])
        self.img_shape = (inner_shape[0], self.size, self.size)
        self.meas_shape = tuple(physics.meas_shape)
        self.img_complex = bool(getattr(physics, "img_complex", False))
        self.meas_complex = bool(getattr(physics, "meas_complex", False))
        self._up = resampling_matrix(self.size, self.data_size)  # R: prior grid -> data grid
        self._down = resampling_matrix(self.data_size, self.size)  # approximate inverse of R, for A_dagger only

    def _r(self, x: Tensor) -> Tensor:
        m = self._up.to(x.device, x.real.dtype)
        return _apply(x, m, m)

    def _r_adjoint(self, x: Tensor) -> Tensor:
        m = self._up.to(x.device, x.real.dtype)
        return _apply(x, m.T, m.T)

    def to_data_grid(self, x: Tensor) -> Tensor:
        """``R x``: an image on the prior's grid as the data's grid sees it (how results are reported)."""
        return self._r(x)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return self.physics.A(self._r(x))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return self._r_adjoint(self.physics.A_adjoint(y))

    def A_dagger(self, y: Tensor, **kwargs) -> Tensor:
        """The inner operator's approximate inverse, resampled to the prior's grid (not an adjoint)."""
        inner = self.physics.A_dagger(y) if hasattr(self.physics, "A_dagger") else self.physics.A_adjoint(y)
        m = self._down.to(inner.device, inner.real.dtype)
        return _apply(inner, m, m)

    def subset(self, index) -> "Resampled":
        return Resampled(self.physics.subset(index), self.size) if hasattr(self.physics, "subset") else self
