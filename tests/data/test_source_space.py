"""Results land in the source's space and units: NIfTI in -> simulate -> reconstruct -> NIfTI out."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ddip.cli import main
from ddip.outputs import write_result
from ddip.data import prepare_volume, random_ellipses, read_volume
from ddip.data.volumes import output_affine
from ddip.tasks import load_measurement


def _ct_nifti(path, shape=(64, 48, 12)):
    """A CT volume in HU (−1000 air to +400) stored left-to-right flipped (LAS) with anisotropic voxels and an
    origin away from zero, so that every part of the affine matters."""
    x, y, z = shape
    phantom = random_ellipses(z, max(x, y), generator=torch.Generator().manual_seed(3))[:, 0, :x, :y]
    hu = (-1000.0 + 1400.0 * phantom).permute(1, 2, 0).numpy().astype(np.float32)  # (x, y, z)
    affine = np.array([[-0.7, 0.0, 0.0, 40.0], [0.0, 0.9, 0.0, -60.0], [0.0, 0.0, 2.5, 15.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return hu, affine


def _sample(hu, affine, world):
    """Input values at world points that fall on input voxel centres (nearest index, checked exact)."""
    index = (np.linalg.inv(affine) @ np.c_[world, np.ones(len(world))].T)[:3].T
    rounded = np.rint(index)
    assert np.abs(index - rounded).max() < 1e-4  # the output grid is the input grid here (no resampling)
    ok = np.all((rounded >= 0) & (rounded < np.array(hu.shape)), axis=1)
    i, j, k = rounded[ok].astype(int).T
    return hu[i, j, k], ok


def test_nifti_round_trip_keeps_the_affine_and_hounsfield_units(tmp_path):
    hu, affine = _ct_nifti(tmp_path / "ct.nii.gz")
    m = tmp_path / "m.safetensors"
    assert main(["simulate", "--task", "sv-ct", "--volume", str(tmp_path / "ct.nii.gz"), "--slices", "3:9",
                 "--size", "64", "--out", str(m)]) == 0
    assert main(["reconstruct", str(m), "--method", "admm-tv", "--out", str(tmp_path / "rec")]) == 0
    img = nib.load(str(tmp_path / "rec" / "reconstruction.nii.gz"))
    out = np.asarray(img.dataobj)
    assert out.shape == (64, 64, 6)
    assert np.allclose(np.abs(np.diag(img.affine))[:3], [0.7, 0.9, 2.5])
    # every output voxel inside the source's extent sits on the source voxel of the same anatomy ...
    u, v, k = np.meshgrid(*map(np.arange, out.shape), indexing="ij")
    grid = np.c_[u.ravel(), v.ravel(), k.ravel()]
    world = (img.affine @ np.c_[grid, np.ones(len(grid))].T)[:3].T
    truth, inside = _sample(hu, affine, world)
    recon = out.reshape(-1)[inside]
    assert inside.sum() == 64 * 48 * 6  # the padded rows fall outside the source, the rest covers it all
    # ... and holds its value in HU, within the reconstruction's error (60 views at 64 px: ADMM-TV ≈ 1 % of the
    # window), while the same comparison one voxel off is far worse: the alignment, not just the range, is right
    err = np.sqrt(np.mean((recon - truth) ** 2))
    shifted, ok2 = _sample(hu, affine, world + img.affine[:3, 0])
    err_shifted = np.sqrt(np.mean((out.reshape(-1)[ok2] - shifted) ** 2))
    assert err < 60 and err_shifted > 2 * err, (err, err_shifted)
    metrics = json.loads((tmp_path / "rec" / "metrics.json").read_text())
    assert metrics["report"]["nifti_units"] == "HU"
    # --units window keeps the prior's [0, 1] range, on the same grid (written here from the ground truth)
    meas = load_measurement(m)
    write_result(tmp_path / "win", meas.ground_truth, None, method="truth", wall=0.0, peak_mb=0.0, report={},
                 config={}, record=meas.record, units="window")
    win = nib.load(str(tmp_path / "win" / "reconstruction.nii.gz"))
    values = np.asarray(win.dataobj)
    assert np.allclose(win.affine, img.affine) and values.min() >= 0 and values.max() <= 1
    assert np.allclose(values * 3072 - 1024, out, atol=200) and out.max() > 300  # HU = −1024 + 3072·window


@pytest.mark.parametrize("size", [32, 80])
def test_output_affine_follows_resampling(tmp_path, size):
    """With resampling (64 × 48 -> size²) the output voxel centres are the resampled grid's centres in the source."""
    _, affine = _ct_nifti(tmp_path / "ct.nii.gz")
    record = prepare_volume(read_volume(tmp_path / "ct.nii.gz"), modality="ct", size=size, slab=(2, 5)).record
    out = output_affine(record)
    canonical = np.asarray(record["affine"])
    s = 64 / size  # side 64 (the longer in-plane axis) onto size pixels
    # voxel (0, 0, 0): half a source voxel minus half an output voxel inside the padded square's corner
    pad_left, bottom = record["in_plane_pad"][0], record["in_plane_pad"][3]
    corner = canonical @ np.array([s / 2 - 0.5 - pad_left, s / 2 - 0.5 - bottom, 2, 1])
    assert np.allclose(out @ np.array([0, 0, 0, 1]), corner)
    assert np.allclose(np.linalg.norm(out[:3, :3], axis=0), [0.7 * s, 0.9 * s, 2.5])
