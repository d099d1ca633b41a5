"""Operators that follow other conventions, in ddip: deepinv's two-channel complex layout and another scale.

ddip's solvers take any object with ``A`` and ``A_adjoint`` (deepinv's ``LinearPhysics`` names). Two differences
remain between such an operator and ddip's own, and each has a wrapper here:

* **Complex layout.** deepinv carries a complex image or k-space as two real channels ``(B, 2, H, W)`` (real,
  imaginary); ddip carries complex tensors ``(D, 1, H, W)``. :class:`TwoChannelComplex` shows a two-channel operator
  to ddip with complex tensors, so its adjoint is still exact and a one-channel real prior is applied to the real and
  imaginary parts as it is for ddip's own operators.
* **Scale.** The solvers' hyper-parameters (DDS's γ, the ADMM ρ and λ) weigh ‖y − Ax‖² against the prior, so they
  depend on the operator's scale: deepinv's normalised Tomography is ddip's projector divided by ‖A‖ ≈ 30, and γ = 5
  then weighs the data 900 times less. :class:`MatchedNorm` rescales an operator (and, through
  :meth:`MatchedNorm.measurement`, its data) to a chosen norm — that of the ddip operator the defaults were tuned on —
  estimated once by power iteration. The minimiser of ‖y − Ax‖² is unchanged; only the weights mean the same again.

deepinv itself is not imported: its top-level module loads torchvision, whose PyPI build breaks beside the CPU torch
wheel ddip installs (docs/known-limits.md). These wrappers follow its conventions, and its operators plug in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddip.errors import DdipError
from ddip.physics.base import LinearOperator, operator_norm


def to_two_channels(z: Tensor) -> Tensor:
    """Complex ``(D, 1, ...)`` -> real ``(D, 2, ...)`` (real, imaginary), deepinv's layout."""
    if not z.is_complex() or z.shape[1] != 1:
        raise DdipError(f"expected a complex tensor (D, 1, ...), got {tuple(z.shape)} {z.dtype}")
    return torch.cat([z.real, z.imag], dim=1)


def from_two_channels(x: Tensor) -> Tensor:
    """Real ``(D, 2, ...)`` -> complex ``(D, 1, ...)``."""
    if x.is_complex() or x.ndim < 2 or x.shape[1] != 2:
        raise DdipError(f"expected real data with two channels (real, imaginary), got {tuple(x.shape)} {x.dtype}")
    return torch.complex(x[:, :1], x[:, 1:2])


class TwoChannelComplex(LinearOperator):
    """An operator on deepinv's two-channel complex layout, seen by ddip with complex tensors.

    Args:
        op: any object with ``A`` / ``A_adjoint`` (and optionally ``A_dagger``) taking ``(B, 2, *img)`` real images.
        img_shape, meas_shape: the per-slice shapes of ddip's side, ``(1, H, W)`` and the measurement's with one
            channel where ``op`` uses two (deepinv operators do not state them).
        complex_measurements: whether ``op``'s measurements are two-channel complex too (MRI) or real (CT).

    The adjoint stays exact: the map between ``C`` and two real channels is an isometry of real inner-product spaces.
    """

    img_complex = True

    def __init__(self, op, *, img_shape: tuple[int, ...], meas_shape: tuple[int, ...],
                 complex_measurements: bool = True):
        self.op, self.img_shape, self.meas_shape = op, tuple(img_shape), tuple(meas_shape)
        self.meas_complex = bool(complex_measurements)

    def _out(self, y: Tensor) -> Tensor:
        return from_two_channels(y) if self.meas_complex else y

    def _in(self, y: Tensor) -> Tensor:
        return to_two_channels(y) if self.meas_complex else y

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return self._out(self.op.A(to_two_channels(x)))

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        return from_two_channels(self.op.A_adjoint(self._in(y)))

    def A_dagger(self, y: Tensor, **kw) -> Tensor:
        if hasattr(self.op, "A_dagger"):
            return from_two_channels(self.op.A_dagger(self._in(y)))
        return super().A_dagger(y, **kw)


class MatchedNorm(LinearOperator):
    """``c·A`` with ``c = norm / ‖A‖``, so that hyper-parameters tuned for an operator of norm ``norm`` apply to ``A``.

    Args:
        op: any object with ``A`` and ``A_adjoint``.
        norm: the target norm, e.g. ``operator_norm(ddip_operator, x)`` of the operator the defaults were tuned on.
        like: an image batch of ``op``'s shape and dtype (one slice is enough) to start the power iteration from.

    Measurements of ``op`` go in as ``measurement(y)`` = ``c·y``; the image, and so the reconstruction, is unchanged.
    """

    def __init__(self, op, norm: float, like: Tensor, *, n_iter: int = 50, generator: torch.Generator | None = None):
        if not norm > 0:
            raise DdipError(f"MatchedNorm: the target norm must be positive, got {norm}")
        own = operator_norm(op, like[:1], n_iter=n_iter, generator=generator)
        if not own > 0:
            raise DdipError("MatchedNorm: the operator maps every image to zero (norm 0)")
        self.op, self.scale, self.source_norm = op, float(norm) / own, own
        for name in ("img_shape", "meas_shape", "img_complex", "meas_complex"):
            if hasattr(op, name):
                setattr(self, name, getattr(op, name))

    def measurement(self, y: Tensor) -> Tensor:
        """``op``'s measurements in this operator's scale."""
        return self.scale * y

    def A(self, x: Tensor) -> Tensor:
        if hasattr(self, "img_shape"):
            self.check_image(x)
        return self.scale * self.op.A(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        if hasattr(self, "meas_shape"):
            self.check_measurement(y)
        return self.scale * self.op.A_adjoint(y)

    def A_dagger(self, y: Tensor, **kw) -> Tensor:
        if hasattr(self.op, "A_dagger"):  # an approximate inverse of c·A is op's inverse of y / c
            return self.op.A_dagger(y / self.scale)
        return super().A_dagger(y, **kw)
