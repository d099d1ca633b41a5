"""Reading raw k-space in the fastMRI layout (HDF5), the data scanners' users most often hold.

A fastMRI file has a dataset ``kspace``: ``(slices, coils, readout, phase)`` complex for multi-coil data or
``(slices, readout, phase)`` for single-coil data, centred (DC in the middle), with the readout direction sampled at
twice the field of view; test files add ``mask`` ``(phase,)`` and leave the unsampled lines zero. This module reads
it, removes the readout oversampling exactly (inverse FFT along the fully sampled readout axis, centre crop, FFT back:
every measured phase-encode line stays a measurement of the cropped field of view) and finds which phase-encode
lines were sampled. Turning it into a measurement of the CS-MRI task happens in :mod:`ddip.tasks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import torch
from torch import Tensor

from ddip.data.volumes import parse_slab
from ddip.errors import DdipError


@dataclass(frozen=True)
class RawKspace:
    """k-space ``(slices, coils, readout, phase)`` (complex64), sampled phase-encode lines ``(phase,)`` (bool)."""

    kspace: Tensor
    lines: Tensor
    attrs: dict = field(default_factory=dict)


def _centred_ifft(k: Tensor, dim: int) -> Tensor:
    return torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=dim), dim=dim, norm="ortho"), dim=dim)


def _centred_fft(x: Tensor, dim: int) -> Tensor:
    return torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(x, dim=dim), dim=dim, norm="ortho"), dim=dim)


def readout_crop(kspace: Tensor, width: int) -> Tensor:
    """Crop the readout axis (-2) of centred k-space to ``width`` pixels of field of view (exact: the axis is fully
    sampled, so each phase-encode line becomes the same line of the cropped image's k-space)."""
    n = kspace.shape[-2]
    if width > n:
        raise DdipError(f"readout_crop: cannot crop {n} readout samples to {width}")
    if width == n:
        return kspace
    start = (n - width) // 2
    image = _centred_ifft(kspace, dim=-2)[..., start : start + width, :]
    return _centred_fft(image, dim=-2)


def sampled_lines(kspace: Tensor) -> Tensor:
    """The phase-encode lines (last axis) holding any non-zero sample, ``(phase,)`` bool."""
    return (kspace != 0).flatten(0, -2).any(dim=0)


def acs_width(lines: Tensor) -> int:
    """Width of the contiguous run of sampled lines around the centre of k-space (the calibration region)."""
    n = lines.numel()
    centre = n // 2
    if not bool(lines[centre]):
        return 0
    lo = hi = centre
    while lo > 0 and bool(lines[lo - 1]):
        lo -= 1
    while hi < n - 1 and bool(lines[hi + 1]):
        hi += 1
    return hi - lo + 1


def parse_slices(spec: str | None, n: int) -> slice:
    """``"a:b"`` (Python slice bounds) or None for all ``n`` slices; an empty or out-of-range choice is an error."""
    if spec is None:
        return slice(0, n)
    sel = slice(*slice(*parse_slab(spec)).indices(n)[:2])
    if sel.stop <= sel.start:
        raise DdipError(f"slices {spec!r} selects none of the file's {n} slices")
    return sel


def read_fastmri(path: str | os.PathLike, *, slices: str | None = None) -> RawKspace:
    """k-space, sampled lines and attributes of a fastMRI ``.h5`` file (multi- or single-coil), readout-cropped to a
    square field of view (readout = phase-encode count)."""
    p = Path(path)
    if not p.is_file():
        raise DdipError(f"{p}: no such file")
    try:
        fh = h5py.File(p, "r")
    except OSError as exc:
        raise DdipError(f"{p}: not a readable HDF5 file ({exc})") from exc
    with fh:
        if "kspace" not in fh:
            raise DdipError(f"{p}: no 'kspace' dataset (fastMRI layout: kspace (slices, [coils,] readout, phase))")
        ds = fh["kspace"]
        if ds.ndim not in (3, 4) or not (ds.dtype.kind == "c"):
            raise DdipError(f"{p}: 'kspace' must be complex (slices, [coils,] readout, phase), got {ds.dtype} "
                            f"{ds.shape}")
        sel = parse_slices(slices, ds.shape[0])
        kspace = torch.from_numpy(ds[sel.start : sel.stop]).to(torch.complex64)
        mask = torch.from_numpy(fh["mask"][()]).bool().flatten() if "mask" in fh else None
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in fh.attrs.items()}
    if kspace.ndim == 3:
        kspace = kspace.unsqueeze(1)  # single-coil: one coil whose map is 1
    if not bool(torch.isfinite(torch.view_as_real(kspace)).all()):
        raise DdipError(f"{p}: 'kspace' holds NaN or Inf values")
    phase, readout = kspace.shape[-1], kspace.shape[-2]
    if readout < phase:
        raise DdipError(f"{p}: {readout} readout samples are fewer than the {phase} phase-encode lines; ddip "
                        "reconstructs square images of the phase-encode width")
    kspace = readout_crop(kspace, phase)
    lines = sampled_lines(kspace) if mask is None else mask
    if lines.numel() != phase:
        raise DdipError(f"{p}: 'mask' has {lines.numel()} entries for {phase} phase-encode lines")
    if not bool(lines.any()):
        raise DdipError(f"{p}: no sampled phase-encode line (k-space is all zeros)")
    kspace = kspace * lines.view(1, 1, 1, -1)  # what the mask says was not sampled is not data
    attrs = {str(k): v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in attrs.items()}
    return RawKspace(kspace, lines, {**attrs, "slices": [sel.start, sel.stop], "readout_samples": readout})
