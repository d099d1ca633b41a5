"""The linear-operator interface shared by every task, and the checks that guard it.

The interface follows deepinv's ``LinearPhysics`` names so that any object with ``A`` and ``A_adjoint`` (a deepinv
operator, or a user's own) can be handed to ddip's solvers:

========================  ==========================================================================
``A(x)``                   forward model, image ``(D, C, H, W)`` -> measurement
``A_adjoint(y)``           the exact adjoint (tested to float64 precision), measurement -> image
``normal(x)``              ``A_adjoint(A(x))``; subclasses override it where cheaper
``A_dagger(y)``            an approximate inverse (FBP, zero-filled IFFT, or least squares by CG)
========================  ==========================================================================

Noise is not part of an operator: see :func:`ddip.physics.noise.add_noise`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ddip.errors import DdipError
from ddip.physics.cg import conjugate_gradient


class LinearOperator:
    """A linear map between a volume of slices and its measurements.

    Subclasses set ``img_shape`` and ``meas_shape`` (the per-slice shapes, without the slice axis) and the dtypes,
    and implement :meth:`A` and :meth:`A_adjoint`. Everything else is derived.
    """

    img_shape: tuple[int, ...]
    meas_shape: tuple[int, ...]
    img_complex: bool = False
    meas_complex: bool = False

    def A(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def A_adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.A(x)

    def normal(self, x: Tensor) -> Tensor:
        """``A^H A x``."""
        return self.A_adjoint(self.A(x))

    def A_dagger(self, y: Tensor, *, n_iter: int = 30) -> Tensor:
        """Least-squares solution by CG on the normal equations, started at zero (no side effects)."""
        rhs = self.A_adjoint(y)
        return conjugate_gradient(self.normal, rhs, torch.zeros_like(rhs), n_iter=n_iter)

    # -- validation -------------------------------------------------------------------------------------------
    def check_image(self, x: Tensor, name: str = "image") -> None:
        _check_batch(x, self.img_shape, name, type(self).__name__)

    def check_measurement(self, y: Tensor, name: str = "measurement") -> None:
        _check_batch(y, self.meas_shape, name, type(self).__name__)


def _check_batch(t: Tensor, shape: tuple[int, ...], name: str, owner: str) -> None:
    if not isinstance(t, Tensor):
        raise DdipError(f"{owner}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
        raise DdipError(
            f"{owner}: {name} has shape {tuple(t.shape)}, expected (D, {', '.join(map(str, shape))})"
        )


def check_finite(t: Tensor, name: str) -> None:
    """Raise a :class:`DdipError` naming ``name`` if ``t`` holds NaN or Inf."""
    if not bool(torch.isfinite(t).all()):
        n_bad = int((~torch.isfinite(t)).sum())
        raise DdipError(f"{name} contains {n_bad} NaN or Inf value(s)")


def adjointness_error(op: LinearOperator, x: Tensor, y: Tensor) -> float:
    """``|<A x, y> - <x, A^H y>| / (||A x|| ||y||)`` with real inner products on the real parts of the spaces.

    Complex spaces are treated as real vector spaces (inner product ``Re <a, b>``), which is the sense in which a
    real-image MRI operator's adjoint ``Re(F^H M y)`` is exact.
    """
    ax = op.A(x)
    lhs = torch.vdot(ax.flatten(), y.flatten().to(ax.dtype)).real
    rhs = torch.vdot(x.flatten(), op.A_adjoint(y).flatten().to(x.dtype)).real
    return float((lhs - rhs).abs() / (ax.norm() * y.norm()))


def normal_of(op) -> Callable[[Tensor], Tensor]:
    """``x -> A^H A x`` for any object with ``A`` and ``A_adjoint``, using its own ``normal`` where it has one."""
    if hasattr(op, "normal"):
        return op.normal
    return lambda x: op.A_adjoint(op.A(x))


def operator_norm(op, x0: Tensor, *, n_iter: int = 30, generator: torch.Generator | None = None) -> float:
    """Largest singular value of ``op`` by power iteration on ``A^H A`` started from noise shaped like ``x0``.

    Works for any object with ``A`` and ``A_adjoint``; complex ``x0`` starts from complex noise.
    """
    normal = normal_of(op)
    x = torch.randn(x0.shape, dtype=x0.dtype, generator=generator).to(x0.device)
    x = x / x.norm()
    sigma2 = torch.zeros((), dtype=x.real.dtype)
    for _ in range(n_iter):
        z = normal(x)
        sigma2 = z.norm()
        x = z / sigma2
    return float(sigma2.sqrt())


# -- helpers for any operator (a ddip operator, a deepinv one, or a user's object with A and A_adjoint) ---------------
def pseudo_inverse(physics, y: Tensor) -> Tensor:
    """``A^† y``: the operator's ``A_dagger`` (FBP, zero-filled IFFT) or, lacking one, its adjoint."""
    return physics.A_dagger(y) if hasattr(physics, "A_dagger") else physics.A_adjoint(y)


def physics_subset(physics, index: slice | Tensor):
    """The operator for a subset of the slices: ``physics.subset(index)`` where defined (per-slice coil maps),
    otherwise the operator itself (it acts on each slice alike)."""
    return physics.subset(index) if hasattr(physics, "subset") else physics


def is_complex_image(physics, y: Tensor) -> bool:
    """Whether the operator's image space is complex: its ``img_complex`` flag, or the dtype of ``A^H y``."""
    return bool(getattr(physics, "img_complex", False)) or (
        not hasattr(physics, "img_complex") and physics.A_adjoint(y[:1]).is_complex())
