"""Writing results atomically: JSON, NIfTI volumes and PNG views (temporary name, then rename)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from ddip.errors import DdipError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the result ordinary file permissions
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_safetensors(path: str | os.PathLike, what: str) -> tuple[dict[str, Tensor], dict[str, str]]:
    """All tensors and the metadata of a safetensors file; a missing or unreadable file is a DdipError."""
    p = Path(path)
    if not p.is_file():
        raise DdipError(f"{p}: no such {what} file")
    try:
        with safe_open(str(p), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}, dict(fh.metadata() or {})
    except Exception as exc:
        raise DdipError(f"{p}: not a readable safetensors {what} file ({type(exc).__name__}: {exc})") from exc


def check_same_settings(saved: dict, current: dict, where: str) -> None:
    """Refuse to resume a run with other settings than it started with; a setting absent from ``saved`` (added to
    ddip since) counts as its value in ``current`` only when that is unset (``None``)."""
    diff = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if diff:
        raise DdipError(f"{where}: the run was started with other settings (differs in {diff}); resume with the "
                        f"same command")


def write_json(path: str | os.PathLike, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: object) -> object:
    if isinstance(obj, (np.generic,)):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def volume_array(volume: Tensor) -> np.ndarray:
    """``(D, 1, H, W)`` slices (magnitude if complex) -> ``(W, H, D)`` array, undoing the display flip of
    :func:`ddip.data.volumes.prepare_volume` so the NIfTI axes read as the source's (x, y, z)."""
    v = magnitude(volume.detach().cpu())
    v = v[:, 0].flip(1).transpose(1, 2)  # (D, x, y)
    return np.ascontiguousarray(v.permute(1, 2, 0).numpy().astype(np.float32))


def write_nifti(path: str | os.PathLike, volume: Tensor, *, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
                affine: np.ndarray | None = None, units: str | None = None) -> None:
    """Write slices ``(D, 1, H, W)`` as a float32 NIfTI with ``affine`` (voxel -> world, mm), or else a diagonal
    affine of the given voxel spacing; spatial units millimetres, and the intensity ``units`` (e.g. ``"HU"``) in the
    header's description."""
    import nibabel as nib

    img = nib.Nifti1Image(volume_array(volume), np.diag([*spacing, 1.0]) if affine is None else affine)
    img.set_qform(img.affine, code=1)  # scanner coordinates
    img.set_sform(img.affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    if units is not None:
        img.header["descrip"] = f"ddip; intensity units: {units}"[:79].encode()
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def write_png_views(path: str | os.PathLike, volumes: dict[str, Tensor], *, error_of: str | None = None,
                    reference: str | None = None, window: tuple[float, float] = (0.0, 1.0),
                    slice_aspect: float = 1.0, notes: dict[str, str] | None = None,
                    window_name: str | None = None, maps: dict[str, Tensor] | None = None,
                    error_units: str | None = None) -> None:
    """One figure: a row per volume (axial, coronal, sagittal central planes), plus an error row if asked.

    ``volumes`` maps a title to ``(D, 1, H, W)`` slices, shown in the display ``window`` (in their units, e.g. a CT
    soft-tissue window in HU; named ``window_name`` in the title); ``slice_aspect`` is the slice spacing
    over the pixel spacing, so coronal and sagittal planes keep their true proportions; ``notes`` adds a line (e.g.
    PSNR/SSIM) under a volume's title. ``error_of`` / ``reference`` name two volumes whose absolute difference is the
    last row, with a colorbar scaled to its 99.5th percentile; ``maps`` (e.g. the samples' standard deviation) are
    further rows shown the same way.
    """
    plt = pyplot()

    notes = notes or {}
    rows = [(title + (f"\n{notes[title]}" if title in notes else ""), _planes(v), "gray", window)
            for title, v in volumes.items()]
    maps = dict(maps or {})
    if error_of is not None and reference is not None:
        title = f"|{error_of} − {reference}|" + (f" ({error_units})" if error_units else "")
        maps = {title: (_mag(volumes[error_of]) - _mag(volumes[reference])).abs(), **maps}
    for title, heat in maps.items():
        heat = _mag(heat)
        top = max(float(torch.quantile(heat.flatten().float()[:: max(1, heat.numel() // 1_000_000)], 0.995)), 1e-6)
        rows.append((title, _planes(heat), "inferno", (0.0, top)))
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.2, 2.7 * len(rows)), squeeze=False)
    for r, (title, planes, cmap, (lo, hi)) in enumerate(rows):
        for c, (name, img) in enumerate(zip(("axial", "coronal", "sagittal"), planes)):
            ax = axes[r][c]
            shown = ax.imshow(img, cmap=cmap, vmin=lo, vmax=hi, aspect=1.0 if c == 0 else slice_aspect,
                              interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0:
                ax.set_title(name + (f" ({window_name})" if window_name and c == 0 else ""), fontsize=9)
        if cmap == "inferno":
            fig.colorbar(shown, ax=list(axes[r]), fraction=0.025, pad=0.01).ax.tick_params(labelsize=7)
    save_figure(fig, path, bbox_inches="tight")


def magnitude(x: Tensor) -> Tensor:
    """``|x|`` of a complex tensor; a real one as it is (signs kept)."""
    return x.abs() if x.is_complex() else x


def pyplot():
    """matplotlib.pyplot drawing off screen (imported here: it costs about 0.5 s and only pictures need it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 100, **kwargs) -> None:
    """Write a matplotlib figure as a PNG atomically, then close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", **kwargs)
    pyplot().close(fig)


def _mag(v: Tensor) -> Tensor:
    return magnitude(v.detach().cpu())


def _planes(volume: Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = _mag(volume)[:, 0].to(torch.float32)  # (D, H, W)
    d, h, w = v.shape
    axial = v[d // 2]
    coronal = v[:, h // 2, :].flip(0)  # slices up
    sagittal = v[:, :, w // 2].flip(0)
    return axial.numpy(), coronal.numpy(), sagittal.numpy()
