"""Training images from a user's own volumes: the slices of every volume in a folder, in the prior's [0, 1] range.

``ddip train-prior --data FOLDER --modality ct|mri`` trains on these instead of ELLIPSES. Each volume is read and
prepared once, exactly as a reconstruction prepares its input (:func:`~ddip.data.volumes.prepare_volume`: the CT
Hounsfield window or the MRI volume maximum, square padding, resampling to the prior's size), so the prior learns the
intensities it will later be given. Slices with no content (constant, e.g. the air above a head) are left out. A
training step draws its batch uniformly over all slices with the run's data generator, so a run resumes exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ddip.data.volumes import Modality, prepare_volume, read_volume
from ddip.errors import DdipError

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".npy")
MIN_SLICE_STD = 1e-3  # a slice whose values vary less than this (in [0, 1] units) is blank and not trained on


def volume_sources(folder: str | os.PathLike) -> list[Path]:
    """The volumes directly inside ``folder``: NIfTI and ``.npy`` files, and sub-folders holding a DICOM series.

    Sorted by name, so a run sees the same slices in the same order on any machine.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DdipError(f"{root}: not a folder of volumes (NIfTI, .npy or DICOM series folders)")
    found = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES):
            found.append(p)
        elif p.is_dir() and any(f.suffix.lower() == ".dcm" for f in p.iterdir()):
            found.append(p)
    if not found:
        raise DdipError(f"{root}: holds no volume (expected .nii, .nii.gz, .npy files or folders of .dcm files)")
    return found


class VolumeSlices:
    """Every non-blank slice of the volumes in ``folder``, prepared for a prior of ``size`` pixels.

    Args:
        modality: ``"ct"`` (Hounsfield window) or ``"mri"`` (each volume divided by its maximum).
        slice_axis: the axis the slices are taken along (2: axial for a RAS volume).
    """

    def __init__(self, folder: str | os.PathLike, *, modality: Modality, size: int, slice_axis: int = 2):
        stacks, self.counts = [], {}
        for path in volume_sources(folder):
            slices = prepare_volume(read_volume(path), modality=modality, size=size, slice_axis=slice_axis).slices
            keep = slices.flatten(1).std(dim=1) > MIN_SLICE_STD
            stacks.append(slices[keep])
            self.counts[path.name] = int(keep.sum())
        self.slices = torch.cat(stacks).contiguous()
        if len(self.slices) == 0:
            raise DdipError(f"{folder}: every slice is blank (constant); nothing to train on")
        self._on_device: dict[torch.device, Tensor] = {}

    def __len__(self) -> int:
        return len(self.slices)

    def sample(self, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """``n`` slices ``(n, 1, size, size)`` drawn uniformly with replacement, on ``device``."""
        device = torch.device(device)
        if device not in self._on_device:  # the stack is small (64 px: 16 KB a slice): keep one copy per device
            self._on_device[device] = self.slices.to(device)
        index = torch.randint(len(self.slices), (n,), generator=generator, device=generator.device)
        return self._on_device[device][index.to(device)]

    def describe(self) -> dict:
        """What a run trained on: slices per volume (a resumed run must find the same)."""
        return {"slices": len(self.slices), "per_volume": self.counts}
