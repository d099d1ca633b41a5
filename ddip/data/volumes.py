"""Reading real volumes (NIfTI, DICOM series, NumPy) and preparing them as slice stacks in [0, 1].

Two steps, kept apart so each choice is explicit and recorded:

1. :func:`read_volume` returns the voxels in a canonical orientation (closest RAS+ for NIfTI and DICOM, the array as
   stored for ``.npy``) with the voxel spacing, in the file's own units (Hounsfield for CT).
2. :func:`prepare_volume` picks the slice axis, keeps a contiguous slab, pads each slice to a square and resamples it
   to the prior's size, and scales to [0, 1]: CT through a fixed Hounsfield window (attenuation
   ``µ = µ_water·(1 + HU/1000)`` is linear in HU, so a HU window is an attenuation window), MRI by the volume maximum.
   It returns the ``(D, 1, size, size)`` tensor and a JSON-able record of every choice.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddip.errors import DdipError
from ddip.io import magnitude

log = logging.getLogger("ddip.data")

Modality = Literal["ct", "mri"]
CT_WINDOW_HU = (-1024.0, 2048.0)  # fixed window: air -> 0, soft tissue ≈ 0.33, dense bone -> 1
MU_WATER_PER_MM = 0.0192  # linear attenuation of water at about 70 keV, 1/mm


def line_integral_scaling(pixel_mm: float, mu_water_per_mm: float = MU_WATER_PER_MM,
                          window_hu: tuple[float, float] = CT_WINDOW_HU) -> tuple[float, float]:
    """``(gain, offset)`` taking line integrals ``p = ∫µ dl`` (µ in 1/mm, l in mm) to the priors' window units.

    With ``x = (HU − lo)/(hi − lo)`` and ``µ = µ_water (1 + HU/1000)``, a ray crossing pixel i over ``a_i`` pixels
    sums ``Σ a_i x_i = gain · p + offset · Σ a_i``: ``gain = 1000 / (µ_water (hi − lo) pixel_mm)`` (p counts path
    in mm, the projector in pixels) and ``offset = (−1000 − lo)/(hi − lo)``, the window value of air (µ = 0), times
    the ray's length through the grid (``A 1``)."""
    lo, hi = window_hu
    if not (math.isfinite(pixel_mm) and pixel_mm > 0):
        raise DdipError(f"the pixel size must be a positive number of mm, got {pixel_mm}")
    if not (math.isfinite(mu_water_per_mm) and mu_water_per_mm > 0):
        raise DdipError(f"the attenuation of water must be positive (1/mm), got {mu_water_per_mm}")
    return 1000.0 / (mu_water_per_mm * (hi - lo) * pixel_mm), (-1000.0 - lo) / (hi - lo)


@dataclass(frozen=True)
class RawVolume:
    """Voxels ``(X, Y, Z)`` in file units, canonical orientation, with spacing in mm (1 where unknown)."""

    data: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    orientation: str = "RAS"
    meta: dict = field(default_factory=dict)
    affine: np.ndarray | None = None  # voxel index -> world (mm, RAS) of ``data``; None: diag(spacing) assumed


@dataclass(frozen=True)
class PreparedVolume:
    """A slab of slices ``(D, 1, size, size)`` scaled to [0, 1], and how it was made."""

    slices: Tensor
    record: dict


def read_volume(path: str | os.PathLike) -> RawVolume:
    """Read a NIfTI file (``.nii``, ``.nii.gz``), a DICOM series folder or a ``.npy`` array (3D).

    Raises :class:`DdipError` naming the file for a missing or unreadable file, an unknown format, a wrong number of
    dimensions or non-finite voxels.
    """
    p = Path(path)
    if not p.exists():
        raise DdipError(f"{p}: no such file or folder")
    name = p.name.lower()
    try:
        if p.is_dir():
            raw = _read_dicom_folder(p)
        elif name.endswith((".nii", ".nii.gz")):
            raw = _read_nifti(p)
        elif name.endswith(".npy"):
            raw = _read_npy(p)
        elif name.endswith(".dcm"):
            raw = _read_dicom_folder(p.parent)
        else:
            raise DdipError(f"{p}: unknown volume format (expected .nii, .nii.gz, .npy or a DICOM folder)")
    except DdipError:
        raise
    except Exception as exc:  # a reader library failed on a corrupt file: report it as bad input
        raise DdipError(f"{p}: cannot be read ({type(exc).__name__}: {exc})") from exc
    _check_voxels(raw.data, p)
    return raw


def _check_voxels(data: np.ndarray, path: Path) -> None:
    if data.ndim != 3:
        raise DdipError(f"{path}: expected a 3D volume, got {data.ndim} dimension(s) with shape {data.shape}")
    if min(data.shape) < 1:
        raise DdipError(f"{path}: volume is empty, shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise DdipError(f"{path}: voxels must be real numbers, got dtype {data.dtype}")
    bad = ~np.isfinite(data)
    if bad.any():
        raise DdipError(f"{path}: volume contains {int(bad.sum())} NaN or Inf voxel(s)")


def _read_nifti(path: Path) -> RawVolume:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(path)))
    data = np.asarray(img.dataobj, dtype=np.float64)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    spacing = zooms + (1.0,) * (3 - len(zooms))
    return RawVolume(data, spacing, str(path), "RAS", affine=np.asarray(img.affine, dtype=np.float64))


def _read_npy(path: Path) -> RawVolume:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.ndarray):
        raise DdipError(f"{path}: not a NumPy array file")
    return RawVolume(np.asarray(data, dtype=np.float64) if np.issubdtype(data.dtype, np.number) and not
                     np.iscomplexobj(data) else data, (1.0, 1.0, 1.0), str(path), "array")


def _read_dicom_folder(folder: Path) -> RawVolume:
    """A single DICOM series: slices sorted by position along the slice normal, rescale slope/intercept applied.

    The voxel-to-patient affine is built from ImageOrientationPatient / ImagePositionPatient / PixelSpacing, turned
    from DICOM's LPS to RAS, and nibabel reorients the array to the closest canonical (RAS+) orientation.
    """
    import nibabel as nib
    import pydicom

    files = sorted(f for f in folder.iterdir() if f.is_file())
    datasets = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=False)
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise DdipError(f"{folder}: no DICOM images found")
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise DdipError(f"{folder}: holds {len(series)} DICOM series; put one series per folder")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    positions = [float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=np.float64))) for ds in datasets]
    order = np.argsort(positions)
    datasets = [datasets[i] for i in order]
    positions = [positions[i] for i in order]
    shapes = {ds.pixel_array.shape for ds in datasets}
    if len(shapes) != 1:
        raise DdipError(f"{folder}: DICOM slices have different sizes {sorted(shapes)}")
    stack = np.stack(
        [ds.pixel_array.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0))
         + float(getattr(ds, "RescaleIntercept", 0.0)) for ds in datasets], axis=-1
    )  # (rows, cols, slices)
    data = stack.transpose(1, 0, 2)  # (cols, rows, slices): i runs along row_dir, j along col_dir
    row_spacing, col_spacing = (float(v) for v in getattr(datasets[0], "PixelSpacing", (1.0, 1.0)))
    dz = float(np.median(np.diff(positions))) if len(positions) > 1 else float(
        getattr(datasets[0], "SliceThickness", 1.0))
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing
    affine_lps[:3, 1] = col_dir * row_spacing
    affine_lps[:3, 2] = normal * dz
    affine_lps[:3, 3] = np.asarray(datasets[0].ImagePositionPatient, dtype=np.float64)
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps  # DICOM patient axes are LPS
    img = nib.as_closest_canonical(nib.Nifti1Image(data, affine_ras))
    data = np.asarray(img.dataobj, dtype=np.float64)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    meta = {"modality": str(getattr(datasets[0], "Modality", "")), "n_files": len(datasets)}
    return RawVolume(data, spacing, str(folder), "RAS", meta,
                     affine=np.asarray(img.affine, dtype=np.float64))


def parse_slab(spec: str | None) -> tuple[int | None, int | None] | None:
    """``"START:STOP"`` (Python slice bounds; either may be left out) as ``(start, stop)``; None stays None."""
    if spec is None:
        return None
    try:
        a, b = (int(v) if v.strip() else None for v in spec.split(":"))
    except ValueError as exc:
        raise DdipError(f"slices {spec!r}: expected START:STOP, e.g. 10:18") from exc
    return a, b


def prepare_volume(
    raw: RawVolume,
    *,
    modality: Modality,
    size: int = 64,
    slice_axis: int = 2,
    slab: tuple[int, int] | None = None,
    n_slices: int | None = None,
    ct_window_hu: tuple[float, float] = CT_WINDOW_HU,
) -> PreparedVolume:
    """Slices along ``slice_axis`` as ``(D, 1, size, size)`` in [0, 1].

    Args:
        modality: ``"ct"`` (Hounsfield window ``ct_window_hu`` mapped to [0, 1], clipped) or ``"mri"`` (divided by the
            volume maximum).
        slab: ``(start, stop)`` slice indices (Python slice semantics) of a contiguous block; or
        n_slices: the central ``n_slices`` slices. Neither: all slices.
        size: the in-plane size; each slice is zero-padded to a square (keeping its aspect ratio) and resampled with
            antialiased bilinear interpolation.

    Slices are shown with the second in-plane axis pointing up (anterior up for axial slices of a RAS volume).
    """
    if modality not in ("ct", "mri"):
        raise DdipError(f"unknown modality {modality!r}; choose 'ct' or 'mri'")
    if slice_axis not in (0, 1, 2):
        raise DdipError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    if size < 2:
        raise DdipError(f"size must be >= 2, got {size}")
    data = np.moveaxis(raw.data, slice_axis, 0)  # (D, a, b)
    depth = data.shape[0]
    if slab is not None and n_slices is not None:
        raise DdipError("give either slab or n_slices, not both")
    if n_slices is not None:
        if n_slices < 1:
            raise DdipError(f"{raw.source}: n_slices must be >= 1, got {n_slices}")
        if n_slices > depth:
            raise DdipError(f"{raw.source}: {n_slices} slices asked for, but the volume has {depth} along axis "
                            f"{slice_axis} (shape {tuple(raw.data.shape)}); give at most {depth}, or another "
                            f"slice axis")
        start = max(0, depth // 2 - n_slices // 2)
        slab = (start, min(depth, start + n_slices))
    start, stop = slab if slab is not None else (0, depth)
    start, stop, _ = slice(start, stop).indices(depth)
    if stop <= start:
        raise DdipError(f"{raw.source}: slab {slab} is empty (the volume has {depth} slices along axis {slice_axis})")
    block = torch.from_numpy(np.ascontiguousarray(data[start:stop])).to(torch.float64)
    block = block.transpose(1, 2).flip(1)  # rows = second in-plane axis (pointing up), columns = first

    if modality == "ct":
        lo, hi = ct_window_hu
        if not hi > lo:
            raise DdipError(f"ct_window_hu must be increasing, got {ct_window_hu}")
        scaled = ((block - lo) / (hi - lo)).clamp(0.0, 1.0)
        scaling = {"kind": "hu_window", "window_hu": [lo, hi],
                   "note": "attenuation mu = mu_water (1 + HU/1000) is linear in HU; HU below -1024 is padding"}
    else:
        peak = float(block.max())
        if peak <= 0:
            raise DdipError(f"{raw.source}: MRI slab has no positive voxel")
        if float(block.min()) <= -500 and float((block <= -500).double().mean()) > 0.05:
            log.warning("%s: %.0f %% of the slab lies at or below -500, like air in Hounsfield units: a CT volume? "
                        "Simulate it with --task sv-ct (MRI divides by the maximum and sets negative values to 0)",
                        raw.source, 100 * float((block <= -500).double().mean()))
        scaled = (block / peak).clamp(min=0.0)
        scaling = {"kind": "divide_by_max", "max": peak}

    col_axis, row_axis = (axis for axis in range(3) if axis != slice_axis)
    d, h, w = scaled.shape
    side = max(h, w)
    pad = (side - w) // 2, side - w - (side - w) // 2, (side - h) // 2, side - h - (side - h) // 2
    square = F.pad(scaled.unsqueeze(1), pad)
    slices = F.interpolate(square, size=(size, size), mode="bilinear", antialias=side > size,
                           align_corners=False).clamp(0.0, 1.0).to(torch.float32)
    record = {
        "source": raw.source,
        "orientation": raw.orientation,
        "raw_shape": list(raw.data.shape),
        "spacing_mm": list(raw.spacing),
        "slice_axis": slice_axis,
        "slab": [start, stop],
        "in_plane_pad": list(pad),
        "size": size,
        "pixel_spacing_mm": {"rows": raw.spacing[row_axis] * side / size, "cols": raw.spacing[col_axis] * side / size},
        "modality": modality,
        "scaling": scaling,
    }
    if raw.affine is not None:
        record["affine"] = np.asarray(raw.affine, dtype=np.float64).round(6).tolist()
    return PreparedVolume(slices, record)


def output_affine(record: dict) -> np.ndarray | None:
    """The voxel-to-world affine of a prepared slab as :func:`ddip.io.volume_array` lays it out — axes (the first
    in-plane axis, the second, the slices), each in the source's canonical direction — or None when the source's
    affine is unknown.

    Output voxel (u, v, k) sits at the source's voxel index ``s·u + s/2 − ½ − pad`` along each in-plane axis (the
    square padding, then resampling ``side`` source voxels to ``size``, s = side/size, pixel centres aligned as
    ``F.interpolate(align_corners=False)`` aligns them) and at ``slab_start + k`` along the slice axis.
    """
    if "affine" not in record:
        return None
    affine = np.asarray(record["affine"], dtype=np.float64)
    slice_axis = int(record["slice_axis"])
    col_axis, row_axis = (axis for axis in range(3) if axis != slice_axis)
    left, _, _, bottom = record["in_plane_pad"]
    raw = record["raw_shape"]
    side = max(raw[col_axis], raw[row_axis])
    s = side / int(record["size"])
    index = np.zeros((4, 4))
    index[3, 3] = 1.0
    index[col_axis, 0] = index[row_axis, 1] = s
    index[slice_axis, 2] = 1.0
    index[col_axis, 3] = s / 2 - 0.5 - left
    index[row_axis, 3] = s / 2 - 0.5 - bottom
    index[slice_axis, 3] = record["slab"][0]
    return affine @ index


def to_source_units(volume: Tensor, record: dict) -> tuple[Tensor, str]:
    """Slices in [0, 1] back in the source's units (HU for a CT window, the MRI slab's scale), and the units' name;
    unchanged when the record holds no scaling (``"source"`` for imported measurements, which ``reconstruct``
    returns in their own scale; ``"window"`` otherwise)."""
    scaling = record.get("scaling") or {}
    v = magnitude(volume)
    if scaling.get("kind") == "hu_window":
        lo, hi = scaling["window_hu"]
        return lo + v * (hi - lo), "HU"
    if scaling.get("kind") == "divide_by_max":
        return v * float(scaling["max"]), "source"
    if record.get("format") in ("fastmri", "sinogram"):  # imported data: reconstructed in the data's own scale
        return volume, "source"
    return volume, "window"


def spread_to_source_units(spread: Tensor, record: dict) -> tuple[Tensor, str]:
    """A spread (a standard deviation, an error) of slices in [0, 1] in the source's units: the units are an affine
    map ``a·v + b`` of the window's, so a spread maps by ``a`` alone."""
    values, unit = to_source_units(spread, record)
    return values - to_source_units(torch.zeros_like(spread), record)[0], unit


__all__ = ["CT_WINDOW_HU", "PreparedVolume", "RawVolume", "output_affine", "prepare_volume", "read_volume",
           "spread_to_source_units", "to_source_units"]
