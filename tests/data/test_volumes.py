import datetime

import nibabel as nib
import numpy as np
import pytest
import torch

from ddip.data.dev import DEV_VOLUMES, dev_volume_path
from ddip.data.fixtures import load_fixture
from ddip.data.volumes import prepare_volume, read_volume
from ddip.errors import DdipError


@pytest.fixture
def volume():
    rng = np.random.default_rng(0)
    return rng.uniform(-1000, 1500, size=(12, 10, 6)).astype(np.float32)


def test_nifti_round_trip_in_canonical_orientation(tmp_path, volume):
    path = tmp_path / "v.nii.gz"
    affine = np.diag([-0.5, 0.5, 2.0, 1.0])  # stored L-R flipped: the reader must return RAS
    nib.save(nib.Nifti1Image(volume, affine), path)
    raw = read_volume(path)
    assert raw.orientation == "RAS" and raw.spacing == (0.5, 0.5, 2.0)
    assert np.allclose(raw.data, volume[::-1])


def test_npy_round_trip(tmp_path, volume):
    np.save(tmp_path / "v.npy", volume)
    assert np.allclose(read_volume(tmp_path / "v.npy").data, volume)


def _write_dicom_series(folder, hu, spacing=(0.7, 0.8), dz=2.5):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    slope, intercept = 2.0, -1024.0
    for k in range(hu.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = series, "CT"
        ds.ContentDate = datetime.date.today().strftime("%Y%m%d")
        ds.Rows, ds.Columns = hu.shape[1], hu.shape[0]  # array (cols=x, rows=y, slices)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, k * dz]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (y), column spacing (x)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        stored = np.round((hu[:, :, k].T - intercept) / slope).astype(np.int16)  # (rows, cols)
        ds.PixelData = stored.tobytes()
        # written in reverse file order on purpose: the reader must sort by position, not by name
        ds.save_as(folder / f"slice_{hu.shape[2] - k:03d}.dcm", enforce_file_format=True)
    return slope


def test_dicom_series_round_trip_sorted_by_position_with_rescale(tmp_path):
    rng = np.random.default_rng(1)
    hu = (np.round(rng.uniform(-1000, 1000, size=(8, 6, 5)) / 2) * 2).astype(np.float64)
    _write_dicom_series(tmp_path, hu)
    raw = read_volume(tmp_path)
    # DICOM axes are LPS; the reader returns RAS, so x and y come back flipped
    assert np.allclose(raw.data, hu[::-1, ::-1, :])
    assert np.allclose(raw.spacing, (0.7, 0.8, 2.5))
    assert raw.meta["n_files"] == 5


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: p / "missing.nii.gz", "no such file"),
        (lambda p: (p / "v.txt").write_text("x") and p / "v.txt", "unknown volume format"),
        (lambda p: np.save(p / "flat.npy", np.zeros((4, 4))) or p / "flat.npy", "expected a 3D volume"),
        (lambda p: np.save(p / "nan.npy", np.full((2, 2, 2), np.nan)) or p / "nan.npy", "NaN or Inf"),
        (lambda p: (p / "bad.nii.gz").write_bytes(b"not a nifti") and p / "bad.nii.gz", "cannot be read"),
        (lambda p: p, "no DICOM images"),
    ],
)
def test_bad_inputs_raise_one_clear_error_naming_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(DdipError, match=message) as info:
        read_volume(path)
    assert str(path) in str(info.value)


def test_prepare_ct_uses_the_recorded_hounsfield_window(tmp_path):
    hu = np.full((16, 16, 4), -1024.0)
    hu[4:12, 4:12, :] = 2048.0
    hu[0, 0, :] = -2048.0  # padding outside the scan circle
    np.save(tmp_path / "ct.npy", hu)
    prepared = prepare_volume(read_volume(tmp_path / "ct.npy"), modality="ct", size=16)
    x = prepared.slices
    assert x.shape == (4, 1, 16, 16) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert prepared.record["scaling"]["window_hu"] == [-1024.0, 2048.0]


def test_prepare_resamples_pads_and_slabs(tmp_path):
    mri = np.random.default_rng(2).uniform(0, 200, size=(40, 20, 30))
    np.save(tmp_path / "mri.npy", mri)
    raw = read_volume(tmp_path / "mri.npy")
    prepared = prepare_volume(raw, modality="mri", size=16, slab=(5, 15))
    assert prepared.slices.shape == (10, 1, 16, 16)
    assert float(prepared.slices.max()) <= 1.0 and float(prepared.slices.min()) >= 0.0
    assert prepared.record["slab"] == [5, 15] and prepared.record["in_plane_pad"] == [0, 0, 10, 10]
    central = prepare_volume(raw, modality="mri", size=16, n_slices=4, slice_axis=0)
    assert central.record["slab"] == [18, 22] and central.slices.shape == (4, 1, 16, 16)
    with pytest.raises(DdipError, match="is empty"):
        prepare_volume(raw, modality="mri", slab=(10, 10))
    with pytest.raises(DdipError, match="unknown modality"):
        prepare_volume(raw, modality="pet")


@pytest.mark.parametrize("name", sorted(DEV_VOLUMES))
def test_development_volumes_are_installed_and_verified(name):
    path = dev_volume_path(name)
    raw = read_volume(path)
    expected = {"chest-ct": (512, 512, 133), "mni-t1": (197, 233, 189)}[name]
    assert raw.data.shape == expected


def test_bundled_fixtures_match_the_development_volumes():
    for name, modality in (("chest-ct", "ct"), ("mni-t1", "mri")):
        fixture = load_fixture(name)
        fresh = prepare_volume(read_volume(dev_volume_path(name)), modality=modality, size=64, n_slices=32)
        assert fixture.slices.shape == (32, 1, 64, 64)
        assert torch.allclose(fixture.slices, fresh.slices, atol=1e-6)
