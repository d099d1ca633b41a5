"""The ELLIPSES distribution of the paper's prior, generated on the fly in torch.

Disk-distributed ellipses (the SCD / educated-DIP ``DiskDistributedEllipsesDataset``), in the
coordinates of ODL's ``ellipsoid_phantom``: the image covers [-1, 1]² with pixel centres at ``(i + ½)·2/N − 1``.
Per image:

* ``n = min(Poisson(140), 140)`` ellipses;
* value ``v ~ U(−0.4, 1.0)``; semi-axes ``a₁, a₂ = 0.2·d·Exp(1)`` with ``d = 0.4745``;
* centre at radius ``r ~ Triangular(0, d, d)`` (density ∝ r) and angle ``U(0, 2π)``; rotation ``U(0, 2π)``;
* values of overlapping ellipses add; then the non-zero pixels have their minimum subtracted and the image is divided
  by its maximum, so the background is 0 and the image lies in [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddip.errors import DdipError

MAX_ELLIPSES = 140
DIAMETER = 0.4745


def random_ellipse_parameters(
    n_images: int,
    *,
    max_ellipses: int = MAX_ELLIPSES,
    diameter: float = DIAMETER,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``(n_images, max_ellipses, 6)`` rows ``(value, a1, a2, cx, cy, rotation)``; unused rows have value 0."""
    shape = (n_images, max_ellipses)
    where = None if generator is None else generator.device  # drawn on the generator's device
    uniform = lambda: torch.rand(shape, dtype=torch.float64, generator=generator, device=where)  # noqa: E731
    value = uniform() * 1.4 - 0.4
    a1 = 0.2 * diameter * -torch.log1p(-uniform())
    a2 = 0.2 * diameter * -torch.log1p(-uniform())
    radius = diameter * uniform().sqrt()  # Triangular(0, d, d): CDF (r/d)²
    angle = uniform() * 2 * math.pi
    rotation = uniform() * 2 * math.pi
    rate = torch.full((n_images,), float(max_ellipses), dtype=torch.float64, device=where)
    count = torch.poisson(rate, generator=generator).clamp(max=max_ellipses)
    rows = torch.arange(max_ellipses, device=where).view(1, -1)
    value = torch.where(rows < count.view(-1, 1), value, torch.zeros_like(value))
    return torch.stack([value, a1, a2, radius * angle.cos(), radius * angle.sin(), rotation], dim=-1)


def ellipse_phantom(params: Tensor, img_size: int, *, chunk: int = 35) -> Tensor:
    """Rasterise ellipse rows ``(B, E, 6)`` onto ``(B, 1, img_size, img_size)`` (point-sampled, values added).

    Array axis 0 is x and axis 1 is y, as in ODL. The result is not normalised (see :func:`normalise_phantom`).
    The quadratic form ``(u/a₁)² + (v/a₂)²`` of the rotated offsets is expanded as
    ``α·dx² + β·dx·dy + γ·dy²`` so that only the cross term needs a full-size product (float32 throughout).
    """
    if params.ndim != 3 or params.shape[-1] != 6:
        raise DdipError(f"ellipse_phantom: parameters must be (B, E, 6), got {tuple(params.shape)}")
    coords = (torch.arange(img_size, dtype=torch.float32, device=params.device) + 0.5) * (2.0 / img_size) - 1.0
    value, a1, a2, cx, cy, rot = params.to(torch.float32).unbind(-1)  # each (B, E)
    cos_r, sin_r = rot.cos(), rot.sin()
    inv1, inv2 = 1.0 / (a1 * a1), 1.0 / (a2 * a2)
    alpha = cos_r * cos_r * inv1 + sin_r * sin_r * inv2
    beta = 2.0 * cos_r * sin_r * (inv1 - inv2)
    gamma = sin_r * sin_r * inv1 + cos_r * cos_r * inv2
    image = torch.zeros(params.shape[0], img_size, img_size, dtype=torch.float32, device=params.device)
    for s in range(0, params.shape[1], chunk):
        e = slice(s, s + chunk)
        dx = coords.view(1, 1, -1) - cx[:, e, None]  # (B, e, N)
        dy = coords.view(1, 1, -1) - cy[:, e, None]
        quad = (beta[:, e, None] * dx).unsqueeze(-1) * dy.unsqueeze(-2)  # cross term, (B, e, N, N)
        quad += (alpha[:, e, None] * dx * dx).unsqueeze(-1)
        quad += (gamma[:, e, None] * dy * dy).unsqueeze(-2)
        image += torch.einsum("bexy,be->bxy", (quad <= 1.0).to(torch.float32), value[:, e])
    return image.unsqueeze(1)


def normalise_phantom(image: Tensor) -> Tensor:
    """Subtract the minimum of the non-zero pixels from them, then divide by the maximum (per image)."""
    nonzero = image != 0
    big = torch.finfo(image.dtype).max
    low = torch.where(nonzero, image, torch.full_like(image, big)).amin(dim=(1, 2, 3), keepdim=True)
    low = torch.where(low == big, torch.zeros_like(low), low)
    shifted = torch.where(nonzero, image - low, torch.zeros_like(image))
    high = shifted.amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(high > 0, shifted / torch.where(high > 0, high, torch.ones_like(high)), shifted)


def random_ellipses(
    n_images: int,
    img_size: int,
    *,
    generator: torch.Generator | None = None,
    max_ellipses: int = MAX_ELLIPSES,
    diameter: float = DIAMETER,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """A batch ``(n_images, 1, img_size, img_size)`` of ELLIPSES phantoms in [0, 1], reproducible per generator.

    Parameters are drawn from ``generator`` on its device (a CPU generator gives the same phantoms whatever
    ``device``; a GPU generator saves the CPU's draws in fast training) and rasterised on ``device`` (on a GPU the
    rasterisation is what would otherwise starve training).
    """
    if n_images < 1 or img_size < 2:
        raise DdipError(f"random_ellipses: need n_images >= 1 and img_size >= 2, got {n_images}, {img_size}")
    params = random_ellipse_parameters(n_images, max_ellipses=max_ellipses, diameter=diameter, generator=generator)
    return normalise_phantom(ellipse_phantom(params.to(device), img_size)).to(dtype)


def polynomial_basis(height: int, width: int, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """The 6 quadratic monomials ``1, x, y, xy, x², y²`` on [-1, 1]², shape ``(6, H, W)`` (smooth phase maps)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, height, dtype=dtype), torch.linspace(-1, 1, width, dtype=dtype),
                            indexing="ij")
    return torch.stack([torch.ones_like(xx), xx, yy, xx * yy, xx**2, yy**2])


def smooth_phase(n_images: int, img_size: int, *, generator: torch.Generator | None = None,
                 max_phase: float = math.pi, device: torch.device | str | None = None) -> Tensor:
    """Random smooth phase maps ``(n, 1, H, W)``: a random quadratic polynomial scaled to a peak of U(0, max_phase)."""
    basis = polynomial_basis(img_size, img_size).to(device)
    where = None if generator is None else generator.device
    coef = torch.randn(n_images, basis.shape[0], dtype=torch.float64, generator=generator, device=where).to(device)
    poly = torch.einsum("nk,khw->nhw", coef, basis)
    peak = torch.rand(n_images, 1, 1, dtype=torch.float64, generator=generator, device=where).to(device) * max_phase
    return (peak * poly / poly.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-12)).unsqueeze(1)


def random_complex_ellipses(n_images: int, img_size: int, *, generator: torch.Generator | None = None,
                            max_phase: float = math.pi, dtype: torch.dtype = torch.float32,
                            device: torch.device | str | None = None) -> Tensor:
    """ELLIPSES magnitudes with a smooth random phase, as two channels (real, imaginary): ``(n, 2, H, W)``.

    The training data of the complex prior (the analogue of the paper's complex fastMRI prior for CS-MRI).
    """
    mag = random_ellipses(n_images, img_size, generator=generator, dtype=torch.float64, device=device)
    phase = smooth_phase(n_images, img_size, generator=generator, max_phase=max_phase, device=device)
    return torch.cat([mag * phase.cos(), mag * phase.sin()], dim=1).to(dtype)
