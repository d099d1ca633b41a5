import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ddip.data.phantoms import random_ellipses
from ddip.errors import DdipError
from ddip.metrics import evaluate_volume, lpips, psnr, psnr_volume, ssim
from ddip.metrics import perceptual as lpips_module


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    ref = rng.random((4, 1, 33, 40))
    ref[1] *= 0.5  # slices with different ranges
    x = ref + 0.05 * rng.standard_normal(ref.shape)
    return torch.tensor(x), torch.tensor(ref)


def test_psnr_per_slice_matches_skimage_with_the_reference_slice_range(pair):
    x, ref = pair
    ours = psnr(x, ref)
    for i in range(4):
        r, a = ref[i, 0].numpy(), x[i, 0].numpy()
        assert ours[i] == pytest.approx(peak_signal_noise_ratio(r, a, data_range=r.max() - r.min()), abs=1e-10)
    assert psnr(x, ref, data_range=1.0)[1] == pytest.approx(
        peak_signal_noise_ratio(ref[1, 0].numpy(), x[1, 0].numpy(), data_range=1.0), abs=1e-10)


def test_ssim_per_slice_matches_skimage(pair):
    x, ref = pair
    ours = ssim(x, ref, data_range=1.0)
    for i in range(4):
        expected = structural_similarity(x[i, 0].numpy(), ref[i, 0].numpy(), data_range=1.0)
        assert ours[i] == pytest.approx(expected, abs=1e-10)


def test_volume_psnr_uses_the_whole_volume(pair):
    x, ref = pair
    r, a = ref.numpy(), x.numpy()
    assert psnr_volume(x, ref) == pytest.approx(peak_signal_noise_ratio(r, a, data_range=r.max() - r.min()))


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(DdipError, match="differs from reference"):
        psnr(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))


def test_lpips_heads_equal_the_copy_torchmetrics_ships():
    import torchmetrics
    from safetensors.torch import load_file

    shipped = torch.load(os.path.join(os.path.dirname(torchmetrics.__file__), "functional", "image",
                                      "lpips_models", "alex.pth"), map_location="cpu", weights_only=True)
    ours = load_file(str(lpips_module.weights_path()))
    for i in range(5):
        assert torch.equal(ours[f"lin.{i}"], shipped[f"lin{i}.model.1.weight"])


def test_lpips_is_zero_for_identical_images_symmetric_and_grows_with_degradation(generator):
    x = random_ellipses(4, 64, generator=generator, dtype=torch.float64)
    assert torch.equal(lpips(x, x), torch.zeros(4, dtype=torch.float64))
    noise = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    mild, strong = x + 0.03 * noise, x + 0.15 * noise
    assert torch.allclose(lpips(mild, x), lpips(x, mild), atol=1e-6)
    assert bool((lpips(strong, x) > lpips(mild, x) + 0.05).all())
    blur1 = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    blur2 = F.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False)
    assert bool((lpips(blur2, x) > lpips(blur1, x)).all()) and bool((lpips(blur1, x) > 0.01).all())


def test_lpips_is_reported_unavailable_never_zero(monkeypatch, tmp_path):
    monkeypatch.setenv("DDIP_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(lpips_module, "source_checkpoint", lambda: None)
    lpips_module._load_model.cache_clear()
    try:
        x = torch.rand(2, 1, 32, 32)
        assert lpips(x, x) is None
        report = evaluate_volume(x, x)
        assert report["lpips"] is None and report["per_slice"]["lpips"] is None
    finally:
        lpips_module._load_model.cache_clear()


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_restricted_unpickler_refuses_anything_but_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    payload = pickle.dumps({"AlexNet_0": _Exploit()})
    with pytest.raises(DdipError, match="refusing to unpickle"):
        lpips_module.read_numpy_pickle(payload)
    assert not (tmp_path / "pwned").exists()
    ok = lpips_module.read_numpy_pickle(pickle.dumps({"a": {"b": np.arange(3.0)}}))
    assert np.array_equal(ok["a"]["b"], np.arange(3.0))


def test_evaluate_volume_reports_means_and_per_slice_lists(generator):
    ref = random_ellipses(3, 64, generator=generator)
    x = ref + 0.02 * torch.randn(ref.shape, generator=generator)
    report = evaluate_volume(x, ref)
    assert set(report) == {"psnr", "ssim", "lpips", "psnr_volume", "per_slice"}
    assert len(report["per_slice"]["psnr"]) == 3 and report["psnr"] == pytest.approx(
        sum(report["per_slice"]["psnr"]) / 3)
    assert 0 < report["lpips"] < 1
