"""The paper's three tasks as data: simulate measurements of a volume, save them, and rebuild the operator.

============  =========================================================================================
``sv-ct``      2D parallel-beam CT on every slice, 60 views (or 60·size/256 to keep the paper's undersampling)
``mri3d``      single-coil Cartesian MRI, one VD Poisson-disc mask (×8) on every slice, real images
``csmri``      multi-coil MRI, uniform 1D lines (×4, 8 % ACS), simulated coils, ESPIRiT maps from the ACS
============  =========================================================================================

A measurement file is a safetensors file (readable with ``safetensors`` alone, no ddip) holding ``y`` (complex for
MRI), the operator's data (``mask``, the **estimated** ``coil_maps``), ``ground_truth`` when known, and in its
metadata the JSON of every setting needed to rebuild the operator (task, size, views, acceleration, noise, seed) and
how the volume was prepared.
"""

from __future__ import annotations

import json
import math
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ddip.data.fastmri import RawKspace, acs_width, read_fastmri
from ddip.data.simulation import simulate_multicoil
from ddip.data.volumes import CT_WINDOW_HU, MU_WATER_PER_MM, line_integral_scaling
from ddip.errors import DdipError, check_seed
from ddip.io import atomic_path, read_safetensors
from ddip.physics import (
    MultiCoilMRI,
    ParallelBeamCT,
    SingleCoilMRI,
    add_noise,
    estimate_coil_maps,
    n_acs_lines,
    poisson_mask,
    sparse_view_ct,
    uniform1d_mask,
)
from ddip.physics.base import check_finite
from ddip.physics.ct import detector_bins, uniform_angles

log = logging.getLogger("ddip.tasks")

Task = Literal["sv-ct", "mri3d", "csmri"]
TASKS = ("sv-ct", "mri3d", "csmri")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskConfig:
    """Everything that defines a task's forward model and noise (defaults: the paper's settings)."""

    task: Task
    size: int = 64
    views: int = 60
    acceleration: float | None = None  # None: ×8 for mri3d, ×4 for csmri
    center_fraction: float = 0.08
    n_coils: int = 8
    noise: float = 0.01
    seed: int = 0
    detector_bins: int | None = None  # sv-ct: None = ⌈√2·size⌉ unit bins (simulation); a measured detector's count
    detector_spacing: float = 1.0  # sv-ct: bin width in image pixels
    detector_center: float | None = None  # sv-ct: the bin (fractional) the rotation axis projects onto; None: bins // 2

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DdipError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        for name in ("size", "views", "n_coils", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise DdipError(f"task setting {name!r} must be an integer, got {value!r}")
        for name in ("noise", "center_fraction", "acceleration"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise DdipError(f"task setting {name!r} must be a number, got {value!r}")
        if self.detector_bins is not None and (isinstance(self.detector_bins, bool)
                                               or not isinstance(self.detector_bins, int) or self.detector_bins < 1):
            raise DdipError(f"task setting 'detector_bins' must be a positive integer, got {self.detector_bins!r}")
        if isinstance(self.detector_spacing, bool) or not isinstance(self.detector_spacing, (int, float)) \
                or not 0 < self.detector_spacing < float("inf"):
            raise DdipError(f"task setting 'detector_spacing' must be a positive number, got {self.detector_spacing!r}")
        if self.detector_center is not None and (isinstance(self.detector_center, bool)
                                                 or not isinstance(self.detector_center, (int, float))
                                                 or not math.isfinite(self.detector_center)):
            raise DdipError(f"task setting 'detector_center' must be a finite number, got {self.detector_center!r}")
        if self.size < 8 or self.views < 1 or not self.noise >= 0 or self.n_coils < 1:
            raise DdipError("task needs size >= 8, views >= 1, noise >= 0 and n_coils >= 1")
        if self.acceleration is not None and not self.acceleration >= 1:
            raise DdipError(f"acceleration must be >= 1 (1 samples all of k-space), got {self.acceleration}")
        if not 0 < self.center_fraction <= 1:
            raise DdipError(f"center_fraction must be in (0, 1], got {self.center_fraction}")
        check_seed(self.seed, "task")

    @property
    def accel(self) -> float:
        return self.acceleration if self.acceleration is not None else {"mri3d": 8.0, "csmri": 4.0}.get(self.task, 1.0)


def paper_views(size: int) -> int:
    """The number of views that keeps the paper's angular undersampling (60 views at 256 px)."""
    return max(1, int(round(60 * size / 256)))


@dataclass(frozen=True)
class Measurement:
    """Simulated (or loaded) measurements with the operator that produced them."""

    config: TaskConfig
    y: Tensor
    physics: object
    ground_truth: Tensor | None
    extras: dict  # mask, coil_maps: tensors the operator needs
    record: dict  # how the volume was prepared


def build_operator(cfg: TaskConfig, extras: dict):
    """The operator of a task from its config and stored tensors (mask, estimated coil maps)."""
    if cfg.task == "sv-ct":
        detector = {"n_det": cfg.detector_bins, "detector_spacing": cfg.detector_spacing,
                    "center": cfg.detector_center}
        if "angles" in extras:  # a measured sinogram's own angles
            return ParallelBeamCT(cfg.size, extras["angles"], **detector)
        return sparse_view_ct(cfg.size, cfg.views, **detector)
    if cfg.task == "mri3d":
        return SingleCoilMRI(extras["mask"], real_images=True)
    return MultiCoilMRI(extras["mask"], extras["coil_maps"])


def simulate(volume: Tensor, cfg: TaskConfig, *, record: dict | None = None) -> Measurement:
    """Measurements of a ``(D, 1, size, size)`` volume in [0, 1] for ``cfg`` (noise added once, seeded).

    For CS-MRI the magnitude volume is given a smooth phase and birdcage coils, and the operator is rebuilt with
    coil maps **estimated** from the noisy ACS lines; the ground truth is the complex image.
    """
    if volume.ndim != 4 or volume.shape[1] != 1 or tuple(volume.shape[-2:]) != (cfg.size, cfg.size):
        raise DdipError(f"volume has shape {tuple(volume.shape)}, expected (D, 1, {cfg.size}, {cfg.size})")
    if volume.shape[0] < 1:
        raise DdipError("volume has no slices")
    check_finite(volume, "volume")
    g = torch.Generator().manual_seed(cfg.seed)
    extras: dict = {}
    if cfg.task == "sv-ct":
        op = build_operator(cfg, extras)
        y = add_noise(op.A(volume), cfg.noise, generator=g)
        truth = volume
    elif cfg.task == "mri3d":
        extras["mask"] = poisson_mask((cfg.size, cfg.size), cfg.accel, seed=cfg.seed)
        op = build_operator(cfg, extras)
        y = add_noise(op.A(volume), cfg.noise, generator=g, mask=extras["mask"])
        truth = volume
    else:
        sim = simulate_multicoil(volume, cfg.n_coils, seed=cfg.seed)
        mask = uniform1d_mask((cfg.size, cfg.size), cfg.accel, center_fraction=cfg.center_fraction, seed=cfg.seed)
        y = add_noise(sim.kspace * mask, cfg.noise, generator=g, mask=mask)
        extras = {"mask": mask, "coil_maps": estimate_coil_maps(y, n_acs_lines(cfg.size, cfg.center_fraction))}
        op = build_operator(cfg, extras)
        truth = sim.image
    return Measurement(cfg, y, op, truth, extras, record or {})


def save_measurement(path: str | os.PathLike, m: Measurement) -> None:
    """One safetensors file with y, the operator's tensors, the ground truth and the settings (atomic write)."""
    tensors = {"y": m.y.contiguous(), **{k: v.contiguous() for k, v in m.extras.items()}}
    if m.extras.get("mask") is not None:
        tensors["mask"] = m.extras["mask"].to(torch.uint8).contiguous()
    if m.ground_truth is not None:
        tensors["ground_truth"] = m.ground_truth.contiguous()
    meta = {"format": "ddip-measurement", "version": str(FORMAT_VERSION), "config": json.dumps(asdict(m.config)),
            "record": json.dumps(m.record)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_measurement(path: str | os.PathLike) -> Measurement:
    """Read a file written by :func:`save_measurement`, checking it is complete and consistent."""
    p = Path(path)
    tensors, meta = read_safetensors(p, "measurement")
    if meta.get("format") != "ddip-measurement":
        raise DdipError(f"{p}: not a ddip measurement file (no 'format: ddip-measurement' metadata)")
    try:
        cfg = TaskConfig(**json.loads(meta["config"]))
        record = json.loads(meta.get("record", "{}"))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DdipError(f"{p}: measurement settings are missing or corrupt ({exc})") from exc
    if "y" not in tensors:
        raise DdipError(f"{p}: holds no measurement tensor 'y'")
    extras = {}
    if cfg.task in ("mri3d", "csmri"):
        if "mask" not in tensors:
            raise DdipError(f"{p}: {cfg.task} measurement lacks its sampling 'mask'")
        extras["mask"] = tensors["mask"].bool()
    if cfg.task == "sv-ct" and "angles" in tensors:
        extras["angles"] = tensors["angles"].to(torch.float64).flatten()
        if extras["angles"].numel() != cfg.views:
            raise DdipError(f"{p}: {extras['angles'].numel()} projection angles for {cfg.views} views")
    if cfg.task == "csmri":
        if "coil_maps" not in tensors:
            raise DdipError(f"{p}: csmri measurement lacks its 'coil_maps'")
        extras["coil_maps"] = tensors["coil_maps"]
    y = tensors["y"]
    expected = (torch.complex64, torch.complex128) if cfg.task != "sv-ct" else (torch.float32, torch.float64)
    if y.dtype not in expected:
        raise DdipError(f"{p}: measurement 'y' has dtype {y.dtype}; {cfg.task} measurements are "
                        f"{' or '.join(map(str, expected))}")
    if y.ndim < 1 or y.shape[0] < 1:
        raise DdipError(f"{p}: measurement 'y' holds no slices (shape {tuple(y.shape)})")
    # The settings must describe the stored arrays before any operator is built from them (an edited size or view
    # count would otherwise allocate whatever it says).
    shape = {"sv-ct": (1, cfg.views, cfg.detector_bins or detector_bins(cfg.size)), "mri3d": (1, cfg.size, cfg.size),
             "csmri": (cfg.n_coils, cfg.size, cfg.size)}[cfg.task]
    if tuple(y.shape[1:]) != shape:
        raise DdipError(f"{p}: measurement 'y' has shape {tuple(y.shape)}, but the settings ({cfg.task}, "
                        f"size {cfg.size}, views {cfg.views}, coils {cfg.n_coils}) describe (D, *{shape})")
    for name in ("mask", "coil_maps"):
        if name in extras and tuple(extras[name].shape[-2:]) != (cfg.size, cfg.size):
            raise DdipError(f"{p}: '{name}' has shape {tuple(extras[name].shape)}, not {cfg.size} x {cfg.size}")
    physics = build_operator(cfg, extras)
    check_finite(torch.view_as_real(y) if y.is_complex() else y, f"{p}: measurement 'y'")
    truth = tensors.get("ground_truth")
    if truth is not None and truth.shape[0] != y.shape[0]:
        raise DdipError(f"{p}: ground truth has {truth.shape[0]} slices, the measurement {y.shape[0]}")
    return Measurement(cfg, y, physics, truth, extras, record)


def kspace_measurement(raw: RawKspace, *, acceleration: float | None = None, center_fraction: float = 0.08,
                       seed: int = 0, record: dict | None = None) -> Measurement:
    """A CS-MRI measurement of measured k-space (:func:`ddip.data.fastmri.read_fastmri`): the sampled lines as the
    mask (or, with ``acceleration``, uniform 1D lines drawn from fully sampled data), coil maps by ESPIRiT from the
    calibration lines (one coil: a map of ones). No ground truth; the intensity is left as measured (``reconstruct``
    normalises data far from the prior's range and undoes it on output)."""
    kspace, lines = raw.kspace, raw.lines
    n_slices, n_coils, _, width = kspace.shape
    if acceleration is not None:
        if not bool(lines.all()):
            raise DdipError(f"acceleration {acceleration}: retrospective undersampling needs fully sampled k-space, "
                            f"but only {int(lines.sum())} of {width} lines were sampled")
        lines = uniform1d_mask((width, width), acceleration, center_fraction=center_fraction, seed=seed)[0]
    elif bool(lines.all()):
        log.warning("the k-space is fully sampled (acceleration 1): there is nothing to reconstruct; to test a "
                    "method, undersample it retrospectively with --acceleration (e.g. 4)")
    mask = lines.view(1, -1).expand(width, width).clone()
    y = kspace * mask
    acs = acs_width(lines)
    if n_coils == 1:
        maps = torch.ones(1, width, width, dtype=torch.complex64)
    elif acs < 4:
        raise DdipError(f"{n_coils}-coil k-space needs at least 4 fully sampled central lines to estimate coil maps "
                        f"(ESPIRiT); the central run of sampled lines is {acs} wide")
    else:
        maps = estimate_coil_maps(y, acs)
    cfg = TaskConfig(task="csmri", size=width, n_coils=n_coils, acceleration=width / int(lines.sum()),
                     center_fraction=max(acs, 1) / width, noise=0.0, seed=seed)
    info = {**raw.attrs, "acs_lines": acs, **({"retrospective_acceleration": acceleration} if acceleration else {})}
    return Measurement(cfg, y, build_operator(cfg, {"mask": mask, "coil_maps": maps}), None,
                       {"mask": mask, "coil_maps": maps}, {**(record or {}), "kspace": info})


def open_measurement(path: str | os.PathLike, **import_options) -> Measurement:
    """A measurement file (:func:`load_measurement`) or, for ``.h5``/``.hdf5``, raw fastMRI-layout k-space imported
    with :func:`kspace_measurement` (``import_options``: ``slices`` and its keyword arguments)."""
    p = Path(path)
    if p.suffix.lower() in (".h5", ".hdf5"):
        slices = import_options.pop("slices", None)
        return kspace_measurement(read_fastmri(p, slices=slices), record={"source": str(p), "format": "fastmri"},
                                  **import_options)
    if import_options and any(v is not None for v in import_options.values()):
        raise DdipError(f"{p}: import options apply to raw k-space (.h5), not to a measurement file")
    if p.name.lower().endswith((".nii", ".nii.gz", ".npy", ".dcm")) or p.is_dir():
        raise DdipError(f"{p}: a volume, not measurements: simulate its measurements first (ddip simulate --task "
                        f"sv-ct|mri3d|csmri --volume {p} --out m.safetensors), or import a measured sinogram (.npy) "
                        f"with ddip import")
    return load_measurement(p)


def parse_angles(spec: str | os.PathLike | None, n_views: int) -> Tensor:
    """Projection angles in degrees: ``None`` (``n_views`` uniform over [0°, 180°)), ``"START:STOP"`` (``n_views``
    uniform from START, STOP excluded), or a ``.npy``/text file of one angle per view."""
    if spec is None:
        return uniform_angles(n_views)
    text = str(spec)
    if ":" in text and not Path(text).exists():
        try:
            start, stop = (float(v) for v in text.split(":"))
        except ValueError as exc:
            raise DdipError(f"angles {text!r}: expected START:STOP in degrees or a file") from exc
        return uniform_angles(n_views, start, stop)
    path = Path(text)
    if not path.is_file():
        raise DdipError(f"angles {text!r}: no such file (or give START:STOP in degrees)")
    try:
        values = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, dtype=np.float64)
    except (OSError, ValueError) as exc:
        raise DdipError(f"{path}: cannot read the angles ({exc})") from exc
    angles = torch.as_tensor(np.asarray(values, dtype=np.float64)).flatten()
    if angles.numel() != n_views:
        raise DdipError(f"{path}: {angles.numel()} angles for a sinogram of {n_views} views")
    return angles


def sinogram_measurement(sinogram: Tensor, angles_deg: Tensor, *, size: int, detector_spacing: float = 1.0,
                         center: float | None = None, pixel_mm: float | None = None, slice_mm: float | None = None,
                         mu_water_per_mm: float = MU_WATER_PER_MM, record: dict | None = None) -> Measurement:
    """An SV-CT measurement of a measured parallel-beam sinogram ``(slices, views, bins)`` (or ``(views, bins)``):
    the rotation axis at bin ``center`` (fractional; default ``bins // 2``), ``detector_spacing`` pixels of the
    ``size`` × ``size`` reconstruction grid wide.

    Without ``pixel_mm`` the line integrals may be in any units: ``reconstruct`` rescales data far from the prior's
    range and back. With ``pixel_mm`` (the grid's pixel size) they are physical, ``∫µ dl`` with µ in 1/mm and l in
    mm: they are taken to the priors' window units (:func:`~ddip.data.volumes.line_integral_scaling`, recorded), so
    the reconstruction comes back in HU on voxels of ``pixel_mm`` × ``pixel_mm`` × ``slice_mm`` (default
    ``pixel_mm``)."""
    y = torch.as_tensor(sinogram)
    if y.ndim == 2:
        y = y.unsqueeze(0)
    if y.ndim != 3 or y.is_complex() or not y.is_floating_point():
        raise DdipError(f"a sinogram must be real (slices, views, bins) or (views, bins), got {y.dtype} "
                        f"{tuple(y.shape)}")
    if 0 in y.shape:
        raise DdipError(f"an empty sinogram: {tuple(y.shape)} (slices, views, bins)")
    check_finite(y, "sinogram")
    n_views, n_bins = y.shape[1:]
    if angles_deg.numel() != n_views:
        raise DdipError(f"{angles_deg.numel()} angles for a sinogram of {n_views} views")
    check_finite(angles_deg, "angles")
    if n_views > 1 and bool((angles_deg == angles_deg[0]).all()):
        raise DdipError(f"every one of the {n_views} views has the angle {float(angles_deg[0]):g} degrees")
    span = n_bins * float(detector_spacing)
    if span < size:
        log.warning("the detector spans %.4g px of the %d px grid: outside the centred disk of diameter %.4g px the "
                    "views miss the object (an interior problem); check --size and --detector-spacing", span, size,
                    span)
    cfg = TaskConfig(task="sv-ct", size=size, views=n_views, noise=0.0, detector_bins=n_bins,
                     detector_spacing=float(detector_spacing), detector_center=None if center is None else float(center))
    extras = {"angles": angles_deg.to(torch.float64)}
    physics = build_operator(cfg, extras)
    y = y.unsqueeze(1).to(torch.float32)
    record = dict(record or {})
    if pixel_mm is not None:
        slice_mm = pixel_mm if slice_mm is None else slice_mm
        if not (math.isfinite(slice_mm) and slice_mm > 0):
            raise DdipError(f"the slice spacing must be a positive number of mm, got {slice_mm}")
        gain, offset = line_integral_scaling(pixel_mm, mu_water_per_mm)
        y = gain * y + offset * physics.A(torch.ones(1, 1, size, size))
        record.update(pixel_spacing_mm={"rows": float(pixel_mm), "cols": float(pixel_mm)},
                      spacing_mm=[float(pixel_mm), float(pixel_mm), float(slice_mm)], slice_axis=2,
                      scaling={"kind": "hu_window", "window_hu": list(CT_WINDOW_HU),
                               "line_integrals": {"gain": gain, "air_offset": offset,
                                                  "mu_water_per_mm": float(mu_water_per_mm)},
                               "note": "sinogram in 1/mm x mm taken to the window: gain * p + air_offset * A 1"})
    elif slice_mm is not None:
        raise DdipError("a slice spacing needs the pixel size (--pixel-mm) too")
    return Measurement(cfg, y, physics, None, extras, record)
