"""Raw k-space in the fastMRI layout: read, readout-cropped exactly, imported and reconstructed from one command."""

import json

import h5py
import numpy as np
import pytest
import torch

from ddip.cli import main
from ddip.data import load_fixture
from ddip.data.fastmri import acs_width, read_fastmri, readout_crop
from ddip.data.simulation import simulate_multicoil
from ddip.errors import DdipError
from ddip.metrics import psnr_volume
from ddip.physics.mri import fft2c, ifft2c
from ddip.reconstruct import ReconstructConfig, reconstruct
from ddip.tasks import load_measurement, open_measurement

SCANNER = 3e-5  # fastMRI magnitudes are ~1e-5 of ours: the import must keep them, reconstruct must cope


def _scanner_kspace(n_slices=3, coils=4, size=64):
    """Multi-coil k-space of the chest-CT fixture's slices as a scanner writes it: the readout (axis -2) sampled at
    twice the field of view, scanner magnitudes. Returns (k-space (D, C, 2·size, size), the image, the cropped
    k-space)."""
    volume = load_fixture("chest-ct").slices[8 : 8 + n_slices]
    sim = simulate_multicoil(volume, coils, seed=1)
    coil_images = ifft2c(sim.kspace) * SCANNER
    padded = torch.nn.functional.pad(coil_images, (0, 0, size // 2, size // 2))  # readout FOV doubled
    return fft2c(padded), sim.image * SCANNER, fft2c(coil_images)


def _write(path, kspace, mask=None, **attrs):
    with h5py.File(path, "w") as fh:
        fh.create_dataset("kspace", data=kspace.numpy().astype(np.complex64))
        if mask is not None:
            fh.create_dataset("mask", data=mask.numpy().astype(np.float32))
        for k, v in attrs.items():
            fh.attrs[k] = v
    return path


def test_readout_crop_is_exact_and_lines_are_found(tmp_path):
    raw_k, _, cropped = _scanner_kspace(n_slices=1)
    assert torch.allclose(readout_crop(raw_k, 64), cropped, atol=1e-6 * float(cropped.abs().max()))
    lines = torch.zeros(64, dtype=torch.bool)
    lines[::4] = True
    lines[28:37] = True
    raw = read_fastmri(_write(tmp_path / "u.h5", raw_k * lines, acquisition="CORPD_FBK"))
    assert torch.equal(raw.lines, lines) and acs_width(lines) == 9
    assert raw.kspace.shape == (1, 4, 64, 64) and raw.attrs["acquisition"] == "CORPD_FBK"
    assert torch.allclose(raw.kspace, cropped * lines, atol=1e-6 * float(cropped.abs().max()))


def test_import_undersamples_fully_sampled_data_and_keeps_the_scanner_scale(tmp_path):
    raw_k, _, cropped = _scanner_kspace()
    src = _write(tmp_path / "full.h5", raw_k)
    out = tmp_path / "m.safetensors"
    assert main(["import", str(src), "--out", str(out), "--acceleration", "4", "--slices", "1:3"]) == 0
    m = load_measurement(out)
    assert m.y.shape == (2, 4, 64, 64) and m.config.task == "csmri" and m.ground_truth is None
    assert int(m.extras["mask"][0].sum()) == 16 and m.config.accel == 4.0  # 64 / 4 lines
    assert torch.allclose(m.y, cropped[1:3] * m.extras["mask"], atol=1e-6 * float(cropped.abs().max()))
    assert m.extras["coil_maps"].shape == (2, 4, 64, 64)
    assert json.loads(json.dumps(m.record))["kspace"]["acs_lines"] == 5  # round(0.08 * 64)
    with pytest.raises(DdipError, match="retrospective undersampling needs fully sampled"):
        open_measurement(_write(tmp_path / "u.h5", raw_k * (torch.arange(64) % 2 == 0)), acceleration=4)


def test_undersampled_h5_reconstructs_from_one_command_in_the_source_scale(tmp_path, picture_gray_share):
    raw_k, image, _ = _scanner_kspace()
    mask = torch.zeros(64)
    mask[::3] = 1
    mask[26:38] = 1
    src = _write(tmp_path / "test.h5", raw_k * mask.bool(), mask=mask)
    out = tmp_path / "rec"
    assert main(["reconstruct", str(src), "--method", "admm-tv", "--out", str(out)]) == 0
    assert (out / "reconstruction.nii.gz").is_file() and (out / "metrics.json").is_file()
    assert json.loads((out / "metrics.json").read_text())["report"]["nifti_units"] == "source"
    assert picture_gray_share(out / "views.png") > 0.1  # scanner magnitudes (~1e-4) shown, not a black figure
    # the same through the API: scanner magnitudes in, scanner magnitudes out, better than the zero-filled image
    m = open_measurement(src)
    res = reconstruct(m, ReconstructConfig("admm-tv"))
    assert res.report["normalised_by"] != 1.0
    zero_filled = m.physics.A_dagger(m.y)
    peak = float(image.abs().max())
    assert 0.5 < float(res.volume.abs().max()) / peak < 2.0
    truth = image.abs() / peak
    assert psnr_volume(res.volume.abs() / peak, truth) > psnr_volume(zero_filled.abs() / peak, truth) + 1


def test_single_coil_and_bad_files(tmp_path):
    raw_k, _, cropped = _scanner_kspace(n_slices=1, coils=1)
    m = open_measurement(_write(tmp_path / "sc.h5", raw_k[:, 0]))  # single-coil layout: (slices, readout, phase)
    assert m.config.n_coils == 1 and torch.equal(m.extras["coil_maps"], torch.ones(1, 64, 64, dtype=torch.complex64))
    with h5py.File(tmp_path / "none.h5", "w") as fh:
        fh.create_dataset("image", data=np.zeros((2, 4, 4)))
    with pytest.raises(DdipError, match="no 'kspace' dataset"):
        read_fastmri(tmp_path / "none.h5")
    with h5py.File(tmp_path / "real.h5", "w") as fh:
        fh.create_dataset("kspace", data=np.zeros((2, 8, 4), dtype=np.float32))
    with pytest.raises(DdipError, match="must be complex"):
        read_fastmri(tmp_path / "real.h5")
    with pytest.raises(DdipError, match="'mask' has 5 entries"):
        read_fastmri(_write(tmp_path / "badmask.h5", raw_k, mask=torch.ones(5)))
    with pytest.raises(DdipError, match="selects none"):
        read_fastmri(tmp_path / "sc.h5", slices="3:5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DdipError, match="not a readable HDF5"):
        read_fastmri(tmp_path / "junk.h5")
    few = torch.zeros(64)
    few[::2] = 1  # no contiguous calibration region: no coil maps for 4 coils
    with pytest.raises(DdipError, match="at least 4 fully sampled central lines"):
        open_measurement(_write(tmp_path / "noacs.h5", _scanner_kspace(n_slices=1)[0] * few.bool()))


def test_fully_sampled_kspace_without_an_acceleration_is_warned_about(tmp_path, caplog):
    raw_k, _, _ = _scanner_kspace(n_slices=1)
    m = open_measurement(_write(tmp_path / "full.h5", raw_k))
    assert m.config.accel == 1.0 and "fully sampled" in caplog.text and "--acceleration" in caplog.text
    caplog.clear()
    open_measurement(tmp_path / "full.h5", acceleration=4)
    assert "fully sampled" not in caplog.text
