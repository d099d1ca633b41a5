"""What a reconstruction writes: the volume as NIfTI in the source's space and units, PNG views with the ground
truth, error and standard deviation when known, and its config.json and metrics.json (all written atomically)."""

from __future__ import annotations

from pathlib import Path

import torch

from ddip.data.volumes import output_affine, spread_to_source_units, to_source_units
from ddip.io import magnitude, write_json, write_nifti, write_png_views
from ddip.metrics import evaluate_volume

UNITS = ("source", "window")
DISPLAY_WINDOWS = ("soft-tissue", "full")
SOFT_TISSUE_HU = (-160.0, 240.0)  # W400 / L40


def display(record: dict, window: str = "soft-tissue", *, shown: torch.Tensor | None = None,
            units: str = "window") -> dict:
    """How the PNG views show a volume in ``units`` (``to_source_units``' names): the display window in those units
    (CT in HU: soft tissue W400/L40 unless ``full``; otherwise the 0.5–99.5th percentiles of ``shown``, the data's
    own range, so measured data in scanner units are never a black picture), its name, and the slice-to-pixel
    spacing ratio that keeps coronal and sagittal planes in proportion."""
    record = record or {}
    scaling = record.get("scaling") or {}
    out: dict = {"window": (0.0, 1.0), "window_name": None, "slice_aspect": 1.0}
    if scaling.get("kind") == "hu_window":
        lo, hi = scaling["window_hu"]
        if units == "HU":
            out["window"] = SOFT_TISSUE_HU if window == "soft-tissue" else (float(lo), float(hi))
        elif window == "soft-tissue":
            out["window"] = tuple((v - lo) / (hi - lo) for v in SOFT_TISSUE_HU)
        out["window_name"] = "W400 L40" if window == "soft-tissue" else None
    elif shown is not None:
        v = magnitude(shown).flatten().float()
        lo, hi = torch.quantile(v[:: max(1, v.numel() // 1_000_000)], torch.tensor([0.005, 0.995])).tolist()
        out["window"] = (lo, hi if hi > lo else lo + max(abs(lo), 1e-12))
        out["window_name"] = f"{lo:.3g} to {hi:.3g}"
    spacing, pixel = record.get("spacing_mm"), (record.get("pixel_spacing_mm") or {}).get("rows")
    if spacing and pixel:
        out["slice_aspect"] = float(spacing[record.get("slice_axis", 2)]) / float(pixel)
    return out


def scores(metrics: dict) -> str | None:
    """A result's PSNR and SSIM as a line under its picture (None when there is no ground truth)."""
    return None if metrics.get("psnr") is None else f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"


def write_result(out: Path, volume: torch.Tensor, truth: torch.Tensor | None, *, method: str, wall: float,
                 peak_mb: float, report: dict, config: dict, record: dict | None = None,
                 units: str = "source", display_window: str = "soft-tissue", std: torch.Tensor | None = None) -> dict:
    """NIfTI, PNG views (with ground truth and error when known), config.json and metrics.json.

    The NIfTI lies where the source volume lay (its affine, voxel size and slab origin, when the volume came from a
    file with an affine) and, with ``units="source"``, in its units (HU for CT, the MRI slab's scale); ``"window"``
    keeps the [0, 1] range the priors work in. Views and metrics are always in the window range. ``std`` (several
    posterior samples, ``volume`` their mean) is written as ``std.nii.gz`` in the same space and units and shown
    under the views.
    """
    record = record or {}
    spacing = record.get("pixel_spacing_mm") or {}
    to_units = (lambda v: to_source_units(v, record)) if units == "source" else (lambda v: (v, "window"))
    geometry = dict(affine=output_affine(record),
                    spacing=(spacing.get("cols", 1.0), spacing.get("rows", 1.0),
                             (record.get("spacing_mm") or [1.0] * 3)[record.get("slice_axis", 2)]))
    nifti, unit = to_units(volume)
    write_nifti(out / "reconstruction.nii.gz", nifti, units=unit, **geometry)
    report = {**report, "nifti_units": unit}
    maps = {}
    if std is not None:
        spread = spread_to_source_units(std, record)[0] if units == "source" else std
        write_nifti(out / "std.nii.gz", spread, units=unit, **geometry)
        maps[f"std of the samples ({unit})"] = spread
    # the views show what the NIfTI holds, in its units; the metrics compare in the prior's [0, 1] window
    reference = None if truth is None else to_units(truth)[0]
    shown = display(record, display_window, shown=nifti if reference is None else reference, units=unit)
    if truth is not None:
        metrics = evaluate_volume(volume, truth)
        views = {"ground truth": reference, method: nifti}
        write_png_views(out / "views.png", views, error_of=method, reference="ground truth",
                        notes={method: scores(metrics)}, maps=maps, error_units=unit, **shown)
    else:
        metrics = {"psnr": None, "ssim": None, "lpips": None, "psnr_volume": None, "per_slice": {}}
        write_png_views(out / "views.png", {method: nifti}, maps=maps, **shown)
    metrics.update(method=method, wall_time_s=wall, peak_memory_mb=peak_mb, report=report)
    write_json(out / "config.json", config)
    write_json(out / "metrics.json", metrics)
    return metrics
