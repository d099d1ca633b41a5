"""A measured parallel-beam sinogram with its own angles and detector: imported, reconstructed in its units."""

import numpy as np
import pytest
import torch

from ddip.cli import main
from ddip.data import load_fixture
from ddip.errors import DdipError
from ddip.metrics import psnr_volume
from ddip.physics import ParallelBeamCT
from ddip.reconstruct import ReconstructConfig, reconstruct
from ddip.tasks import TaskConfig, load_measurement, parse_angles

UNITS = 0.05  # line integrals in the scanner's units, not ours


def _sinogram(tmp_path):
    """Slices of the chest CT seen over 150 degrees in 50 irregular views by 70 bins of 1.3 pixels."""
    x = load_fixture("chest-ct").slices[10:13].double()
    angles = torch.sort(torch.rand(50, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 150).values
    op = ParallelBeamCT(64, angles, n_det=70, detector_spacing=1.3)
    y = op.A(x)[:, 0] * UNITS
    np.save(tmp_path / "sino.npy", y.numpy().astype(np.float32))
    np.savetxt(tmp_path / "angles.txt", angles.numpy())
    return x, y, op


def test_sinogram_of_another_geometry_reconstructs_in_its_own_units(tmp_path, picture_gray_share):
    x, y, op = _sinogram(tmp_path)
    out = tmp_path / "m.safetensors"
    assert main(["import", str(tmp_path / "sino.npy"), "--size", "64", "--angles", str(tmp_path / "angles.txt"),
                 "--detector-spacing", "1.3", "--out", str(out)]) == 0
    m = load_measurement(out)
    assert m.y.shape == (3, 1, 50, 70) and m.physics.n_det == 70 and m.physics.detector_spacing == 1.3
    assert torch.allclose(m.physics.A(x.float()) * UNITS, m.y, atol=1e-4 * float(y.abs().max()))
    res = reconstruct(m, ReconstructConfig("admm-tv"))
    assert res.report["normalised_by"] != 1.0  # far from the prior's scale: rescaled and back
    assert psnr_volume(res.volume / UNITS, x.float()) > 28
    # its pictures show the slices in their own units (a [0, 1] window made them nearly black)
    assert main(["reconstruct", str(out), "--method", "admm-tv", "--out", str(tmp_path / "rec")]) == 0
    assert picture_gray_share(tmp_path / "rec" / "views.png") > 0.1
    # the same sinogram read with the default geometry (unit bins, 180 degrees) is refused, not misread
    assert main(["import", str(tmp_path / "sino.npy"), "--size", "64", "--out", str(tmp_path / "bad.safetensors"),
                 "--acceleration", "4"]) == 2


def test_angles_and_bad_sinograms(tmp_path):
    assert torch.allclose(parse_angles(None, 4), torch.tensor([0.0, 45.0, 90.0, 135.0], dtype=torch.float64))
    assert torch.allclose(parse_angles("10:70", 3), torch.tensor([10.0, 30.0, 50.0], dtype=torch.float64))
    np.savetxt(tmp_path / "a.txt", [1.0, 2.0])
    with pytest.raises(DdipError, match="2 angles for a sinogram of 3 views"):
        parse_angles(tmp_path / "a.txt", 3)
    with pytest.raises(DdipError, match="START:STOP"):
        parse_angles("a:b", 3)
    np.save(tmp_path / "s.npy", np.zeros((2, 5, 7), dtype=np.complex64))
    assert main(["import", str(tmp_path / "s.npy"), "--size", "16", "--out", str(tmp_path / "o.safetensors")]) == 2
    np.save(tmp_path / "s.npy", np.zeros((2, 5, 7), dtype=np.float32))
    assert main(["import", str(tmp_path / "s.npy"), "--out", str(tmp_path / "o.safetensors")]) == 2  # no --size
    assert main(["import", str(tmp_path / "s.npy"), "--size", "16", "--detector-spacing", "0",
                 "--out", str(tmp_path / "o.safetensors")]) == 2


def test_a_sinogram_from_scikit_image_reconstructs_as_ddips_own_and_center_names_its_rotation_axis(tmp_path):
    """scikit-image's ``radon`` (an independent projector) puts the rotation axis on bin ``bins // 2``, as ddip does;
    the same sinogram without its first bin has the axis on bin 44 of 90, which ``--center`` says."""
    from skimage.transform import radon

    from ddip.physics.ct import uniform_angles
    from ddip.tasks import simulate

    x = load_fixture("chest-ct").slices[14:17].double()
    angles = uniform_angles(30)
    sino = np.stack([radon(s[0].numpy(), theta=angles.numpy(), circle=False).T for s in x]).astype(np.float32)
    np.save(tmp_path / "full.npy", sino)
    np.save(tmp_path / "cut.npy", sino[:, :, 1:])
    own = reconstruct(simulate(x.float(), TaskConfig(task="sv-ct", size=64, views=30, noise=0.0)),
                      ReconstructConfig("admm-tv")).volume
    scores = {}
    for name, src, extra in (("full", "full.npy", []), ("cut", "cut.npy", []), ("centred", "cut.npy",
                                                                                 ["--center", "44"])):
        out = tmp_path / f"{name}.safetensors"
        assert main(["import", str(tmp_path / src), "--size", "64", *extra, "--out", str(out)]) == 0
        res = reconstruct(load_measurement(out), ReconstructConfig("admm-tv"))
        scores[name] = psnr_volume(res.volume, x.float())
    assert abs(scores["full"] - psnr_volume(own, x.float())) < 0.1
    assert scores["centred"] > scores["cut"] + 10 and abs(scores["centred"] - scores["full"]) < 0.1
    assert main(["import", str(tmp_path / "cut.npy"), "--size", "64", "--center", "95",
                 "--out", str(tmp_path / "bad.safetensors")]) == 2  # off the detector


def test_physical_line_integrals_with_pixel_mm_come_back_in_hu_on_millimetre_voxels(tmp_path):
    """A sinogram of ∫µ dl (1/mm × mm) over 0.7 mm pixels, 0.91 mm bins: ``--pixel-mm`` takes it to the priors'
    window exactly (the same numbers as ddip's own simulation, so nothing is rescaled) and the NIfTI is in HU on
    0.7 × 0.7 × 2.5 mm voxels."""
    import nibabel as nib

    from ddip.data.volumes import CT_WINDOW_HU, MU_WATER_PER_MM

    lo, hi = CT_WINDOW_HU
    x = load_fixture("chest-ct").slices[10:13].double()
    hu = lo + (hi - lo) * x
    mu = MU_WATER_PER_MM * (1 + hu / 1000)  # 1/mm
    op = ParallelBeamCT(64, torch.arange(40, dtype=torch.float64) * 4.5, n_det=70, detector_spacing=1.3)
    p = op.A(mu)[:, 0] * 0.7  # the projector sums over pixels; a pixel is 0.7 mm
    np.save(tmp_path / "p.npy", p.numpy().astype(np.float32))
    out = tmp_path / "m.safetensors"
    common = ["import", str(tmp_path / "p.npy"), "--size", "64", "--angles", "0:180"]
    assert main([*common, "--pixel-mm", "0.7", "--detector-pitch-mm", "0.91", "--slice-mm", "2.5",
                 "--out", str(out)]) == 0
    m = load_measurement(out)
    assert m.physics.detector_spacing == pytest.approx(1.3)
    assert torch.allclose(m.y.double(), op.A(x), atol=1e-4 * float(op.A(x).abs().max()))
    res = reconstruct(m, ReconstructConfig("admm-tv"))
    assert res.report["normalised_by"] == 1.0 and psnr_volume(res.volume, x.float()) > 28
    assert main(["reconstruct", str(out), "--method", "admm-tv", "--out", str(tmp_path / "rec")]) == 0
    img = nib.load(tmp_path / "rec" / "reconstruction.nii.gz")
    assert img.header.get_zooms() == pytest.approx((0.7, 0.7, 2.5))
    assert b"HU" in img.header["descrip"].tobytes()
    rec = torch.from_numpy(np.asarray(img.dataobj, dtype=np.float64))
    assert abs(float(rec.mean()) - float(hu.mean())) < 20  # the same volume, in HU
    assert main(["import", str(tmp_path / "p.npy"), "--size", "64", "--detector-pitch-mm", "0.91",
                 "--out", str(tmp_path / "bad.safetensors")]) == 2  # a pitch in mm needs the pixel size
