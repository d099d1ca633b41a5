"""Cartesian MRI: the paper's single-coil "3D MRI" and multi-coil CS-MRI with ESPIRiT coil maps.

Both act slice by slice on ``(D, 1, H, W)`` volumes with the centred, orthonormal 2D FFT. Measurements are stored on
the full k-space grid with zeros at unsampled locations (as fastMRI does), so ``A_adjoint`` is a zero-filled inverse.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ddip.errors import DdipError
from ddip.physics.base import LinearOperator
from ddip.physics.masks import poisson_mask, uniform1d_mask


def fft2c(x: Tensor) -> Tensor:
    """Centred orthonormal 2D FFT over the last two axes."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.fft2(x, norm="ortho"), dim=(-2, -1))


def ifft2c(k: Tensor) -> Tensor:
    """Centred orthonormal 2D inverse FFT over the last two axes (the adjoint and inverse of :func:`fft2c`)."""
    k = torch.fft.ifftshift(k, dim=(-2, -1))
    return torch.fft.fftshift(torch.fft.ifft2(k, norm="ortho"), dim=(-2, -1))


def _complex_dtype(t: Tensor) -> torch.dtype:
    return torch.complex128 if t.dtype in (torch.float64, torch.complex128) else torch.complex64


class _MaskedFourier(LinearOperator):
    """Shared mask handling: a boolean ``(H, W)`` sampling pattern kept on the device of the data."""

    meas_complex = True

    def __init__(self, mask: Tensor):
        mask = torch.as_tensor(mask)
        if mask.ndim != 2:
            raise DdipError(f"{type(self).__name__}: mask must be 2D (H, W), got shape {tuple(mask.shape)}")
        self.mask = mask != 0
        if not bool(self.mask.any()):
            raise DdipError(f"{type(self).__name__}: mask samples no k-space location")
        self._masks: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    @property
    def acceleration(self) -> float:
        return self.mask.numel() / int(self.mask.count_nonzero())

    def _mask_like(self, t: Tensor) -> Tensor:
        key = (t.device, t.real.dtype)
        if key not in self._masks:
            self._masks[key] = self.mask.to(device=t.device, dtype=t.real.dtype)
        return self._masks[key]


class SingleCoilMRI(_MaskedFourier):
    """``A x = M · F x`` per slice; images ``(D, 1, H, W)``, k-space ``(D, 1, H, W)`` complex.

    With ``real_images=True`` (the paper's 3D MRI, a real-valued prior) the image space is real and the exact
    adjoint is ``Re(F^H M y)``. Because ``F`` is unitary and ``M`` binary, the zero-filled ``F^H M y`` is also the
    minimum-norm least-squares solution, so ``A_dagger`` equals ``A_adjoint`` here.
    """

    def __init__(self, mask: Tensor, *, real_images: bool = True):
        super().__init__(mask)
        self.real_images = real_images
        self.img_complex = not real_images
        h, w = self.mask.shape
        self.img_shape = (1, h, w)
        self.meas_shape = (1, h, w)

    def __repr__(self) -> str:
        return f"SingleCoilMRI(shape={tuple(self.mask.shape)}, acceleration={self.acceleration:.2f})"

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        return fft2c(x.to(_complex_dtype(x))) * self._mask_like(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        x = ifft2c(y.to(_complex_dtype(y)) * self._mask_like(y))
        return x.real if self.real_images else x

    def normal(self, x: Tensor) -> Tensor:
        x = ifft2c(fft2c(x.to(_complex_dtype(x))) * self._mask_like(x))
        return x.real if self.real_images else x

    def A_dagger(self, y: Tensor, **_: object) -> Tensor:
        """Zero-filled inverse FFT (the minimum-norm least-squares solution for a masked unitary transform)."""
        return self.A_adjoint(y)


class MultiCoilMRI(_MaskedFourier):
    """``A x = M · F · S x`` (SENSE): complex images ``(D, 1, H, W)`` -> k-space ``(D, n_coils, H, W)``.

    ``coil_maps`` is ``(n_coils, H, W)`` shared by all slices or ``(D, n_coils, H, W)`` per slice. ``A_dagger`` is
    the coil-combined zero-filled image ``S^H F^H M y`` (the authors' ``A^†``), exact for maps with
    ``Σ_c |S_c|² = 1`` and full sampling.
    """

    img_complex = True

    def __init__(self, mask: Tensor, coil_maps: Tensor):
        super().__init__(mask)
        maps = torch.as_tensor(coil_maps)
        if not maps.is_complex():
            maps = maps.to(torch.complex64)
        h, w = self.mask.shape
        if maps.ndim not in (3, 4) or tuple(maps.shape[-2:]) != (h, w):
            raise DdipError(
                f"MultiCoilMRI: coil maps have shape {tuple(maps.shape)}, expected (n_coils, {h}, {w}) "
                f"or (D, n_coils, {h}, {w}) to match the mask"
            )
        if not bool(torch.isfinite(torch.view_as_real(maps)).all()):
            raise DdipError("MultiCoilMRI: coil maps contain NaN or Inf")
        self.coil_maps = maps
        self.n_coils = int(maps.shape[-3])
        self.img_shape = (1, h, w)
        self.meas_shape = (self.n_coils, h, w)
        self._maps: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __repr__(self) -> str:
        return (f"MultiCoilMRI(shape={tuple(self.mask.shape)}, n_coils={self.n_coils}, "
                f"acceleration={self.acceleration:.2f})")

    def subset(self, index: slice | Tensor) -> "MultiCoilMRI":
        """The operator for a subset of the slices (only per-slice coil maps need selecting)."""
        return self if self.coil_maps.ndim == 3 else MultiCoilMRI(self.mask, self.coil_maps[index])

    def _maps_like(self, t: Tensor, n_slices: int) -> Tensor:
        dtype = _complex_dtype(t)
        key = (t.device, dtype)
        if key not in self._maps:
            self._maps[key] = self.coil_maps.to(device=t.device, dtype=dtype)
        maps = self._maps[key]
        if maps.ndim == 4 and maps.shape[0] != n_slices:
            raise DdipError(f"MultiCoilMRI: coil maps are given for {maps.shape[0]} slices, data has {n_slices}")
        return maps if maps.ndim == 4 else maps.unsqueeze(0)

    def A(self, x: Tensor) -> Tensor:
        self.check_image(x)
        x = x.to(_complex_dtype(x))
        return fft2c(self._maps_like(x, x.shape[0]) * x) * self._mask_like(x)

    def A_adjoint(self, y: Tensor) -> Tensor:
        self.check_measurement(y)
        y = y.to(_complex_dtype(y))
        coil_images = ifft2c(y * self._mask_like(y))
        return (self._maps_like(y, y.shape[0]).conj() * coil_images).sum(dim=1, keepdim=True)

    def A_dagger(self, y: Tensor, **_: object) -> Tensor:
        """Coil-combined zero-filled image ``S^H F^H M y``."""
        return self.A_adjoint(y)


def mri_single_coil(img_size: int, acceleration: float = 8, seed: int = 0) -> SingleCoilMRI:
    """The paper's 3D MRI: a VD Poisson-disc mask (×8) on the 2D FFT of every slice, real-valued images.

    The same 2D mask on every slice is a 3D Cartesian scan whose fully sampled readout runs along the slice axis.
    """
    return SingleCoilMRI(poisson_mask((img_size, img_size), acceleration, seed=seed), real_images=True)


def mri_multi_coil(
    img_size: int, coil_maps: Tensor, acceleration: float = 4, center_fraction: float = 0.08, seed: int = 0
) -> MultiCoilMRI:
    """Multi-coil CS-MRI: uniform random 1D phase-encode lines (×4) with 8 % ACS, ``A = M·F·S``."""
    mask = uniform1d_mask((img_size, img_size), acceleration, center_fraction=center_fraction, seed=seed)
    return MultiCoilMRI(mask, coil_maps)


def estimate_coil_maps(
    kspace: Tensor, acs: int, *, kernel_width: int = 4, threshold: float = 0.02, crop: float = 0.0
) -> Tensor:
    """ESPIRiT coil maps from the fully sampled centre of k-space (``sigpy.mri.app.EspiritCalib``).

    Args:
        kspace: ``(n_coils, H, W)`` or ``(D, n_coils, H, W)`` complex k-space (undersampled is fine as long as the
            central ``acs`` lines are fully sampled); maps are estimated per slice.
        acs: width of the calibration region in lines (e.g. :func:`n_acs_lines` of the mask).
        kernel_width: ESPIRiT kernel width. sigpy's default of 6 gives wrong maps with 5–10 ACS lines (8 % of 64–128
            lines); 4 was measured to work.
        crop: eigenvalue threshold below which a map is zeroed. sigpy's 0.95 zeroes every pixel when the
            calibration region is as small as 5 lines (the eigenvalues stay below it), so the default keeps all.

    Returns maps of the same shape as ``kspace`` (complex64).
    """
    from sigpy.mri.app import EspiritCalib

    k = torch.as_tensor(kspace)
    if not k.is_complex() or k.ndim not in (3, 4):
        raise DdipError(f"estimate_coil_maps: expected complex k-space (n_coils, H, W) or (D, n_coils, H, W), "
                        f"got {'complex' if k.is_complex() else 'real'} shape {tuple(k.shape)}")
    if acs < kernel_width:
        raise DdipError(f"estimate_coil_maps: {acs} ACS lines are fewer than the kernel width {kernel_width}")
    batch = k.unsqueeze(0) if k.ndim == 3 else k
    maps = []
    for ksp in batch.detach().cpu().numpy():
        calib = EspiritCalib(ksp, calib_width=int(acs), thresh=threshold, kernel_width=kernel_width, crop=crop,
                             show_pbar=False)
        maps.append(torch.from_numpy(np.asarray(calib.run())).to(torch.complex64))
    out = torch.stack(maps)
    return out[0] if k.ndim == 3 else out
