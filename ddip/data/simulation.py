"""Retrospective simulation of multi-coil MRI data from a real magnitude volume (smooth phase, birdcage coils)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddip.data.phantoms import polynomial_basis
from ddip.errors import DdipError
from ddip.physics.mri import fft2c


@dataclass(frozen=True)
class MultiCoilSimulation:
    """Retrospective multi-coil data made from a real magnitude volume."""

    image: Tensor  # (D, 1, H, W) complex: magnitude · exp(i·phase)
    coil_maps: Tensor  # (n_coils, H, W) complex, root-sum-of-squares normalised (ground truth, never used to solve)
    kspace: Tensor  # (D, n_coils, H, W) fully sampled k-space


def simulate_multicoil(
    volume: Tensor, n_coils: int = 8, *, seed: int = 0, phase_strength: float = 1.0
) -> MultiCoilSimulation:
    """Multi-coil k-space of a real magnitude volume ``(D, 1, H, W)``: smooth random phase and birdcage coils.

    The phase is a random low-order polynomial in (x, y) drawn once per volume and varying slowly along z, with
    peak amplitude ``phase_strength`` radians; coil maps are ``sigpy.mri.birdcage_maps`` normalised so that
    ``Σ_c |S_c|² = 1``. Reconstructions must use maps estimated from the data (:func:`estimate_coil_maps`).
    """
    if volume.ndim != 4 or volume.shape[1] != 1 or volume.is_complex():
        raise DdipError(f"simulate_multicoil: expected a real volume (D, 1, H, W), got {tuple(volume.shape)}")
    d, _, h, w = volume.shape
    generator = torch.Generator().manual_seed(int(seed))
    zz = torch.linspace(-1, 1, d, dtype=torch.float64).view(d, 1, 1)
    basis = polynomial_basis(h, w)
    coef = torch.randn(2, basis.shape[0], dtype=torch.float64, generator=generator)
    plane = torch.einsum("k,khw->hw", coef[0], basis) + zz * torch.einsum("k,khw->hw", coef[1], basis) * 0.3
    phase = phase_strength * plane / plane.abs().max().clamp(min=1e-12)
    image = volume.to(torch.float64) * torch.exp(1j * phase).unsqueeze(1)
    import sigpy.mri  # local, as in ddip.physics: sigpy (with scipy.signal) takes seconds to import

    maps = torch.from_numpy(sigpy.mri.birdcage_maps((int(n_coils), h, w))).to(torch.complex128)
    maps = maps / (maps.abs() ** 2).sum(0, keepdim=True).sqrt().clamp(min=1e-12)
    kspace = fft2c(maps.unsqueeze(0) * image)
    return MultiCoilSimulation(image.to(torch.complex64), maps.to(torch.complex64), kspace.to(torch.complex64))

