"""Operators written the way deepinv writes them (two real channels for complex values, another scale), without
deepinv: its import loads torchvision, which this project cannot install (ddip/physics/interop.py)."""

import torch

from ddip.physics import fft2c, ifft2c, sparse_view_ct
from ddip.physics.base import operator_norm


class TwoChannelMRI:
    """Single-coil masked FFT on ``(B, 2, H, W)`` real images and k-space, deepinv's ``MRI`` layout."""

    def __init__(self, mask: torch.Tensor):
        self.mask = mask

    def A(self, x):
        k = fft2c(torch.complex(x[:, :1], x[:, 1:2])) * self.mask
        return torch.cat([k.real, k.imag], dim=1)

    def A_adjoint(self, y):
        z = ifft2c(torch.complex(y[:, :1], y[:, 1:2]) * self.mask)
        return torch.cat([z.real, z.imag], dim=1)


class UnitNormCT:
    """ddip's projector divided by its norm, as deepinv's ``Tomography(normalize=True)`` is: same rays, norm 1."""

    def __init__(self, size: int, views: int):
        self.ours = sparse_view_ct(size, views)
        self.img_shape, self.meas_shape = self.ours.img_shape, self.ours.meas_shape
        self.norm = operator_norm(self.ours, torch.zeros(1, *self.img_shape), n_iter=100,
                                  generator=torch.Generator().manual_seed(0))

    def A(self, x):
        return self.ours.A(x) / self.norm

    def A_adjoint(self, y):
        return self.ours.A_adjoint(y) / self.norm
