import numpy as np
import pytest
import torch

from ddip.data.simulation import simulate_multicoil
from ddip.errors import DdipError
from ddip.physics import (
    MultiCoilMRI,
    achieved_acceleration,
    estimate_coil_maps,
    fft2c,
    ifft2c,
    mri_multi_coil,
    mri_single_coil,
    n_acs_lines,
    poisson_mask,
    uniform1d_mask,
)


def test_centred_fft_matches_numpy(generator):
    x = torch.randn(2, 3, 10, 12, dtype=torch.complex128, generator=generator)
    ref = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x.numpy(), axes=(-2, -1)), norm="ortho"), axes=(-2, -1))
    assert np.allclose(fft2c(x).numpy(), ref)
    assert torch.allclose(ifft2c(fft2c(x)), x)
    assert torch.allclose(fft2c(x).norm(), x.norm())  # orthonormal


@pytest.mark.parametrize("size,acc", [(64, 8), (128, 8), (64, 4)])
def test_poisson_mask_reaches_the_target_acceleration(size, acc):
    mask = poisson_mask((size, size), acc, seed=0)
    assert mask.dtype == torch.bool and mask.shape == (size, size)
    assert abs(achieved_acceleration(mask) - acc) <= 0.1 * acc
    assert torch.equal(mask, poisson_mask((size, size), acc, seed=0))
    # variable density: the centre is sampled more densely than the periphery
    c = size // 2
    centre = mask[c - size // 8 : c + size // 8, c - size // 8 : c + size // 8].float().mean()
    assert centre > 1.5 * mask.float().mean()


def test_poisson_mask_always_samples_frequency_zero_and_keeps_sigpys_mask_otherwise():
    import sigpy.mri

    for seed in (0, 1, 2):  # sigpy's 256² masks at seeds 1 and 2 miss the centre
        mask = poisson_mask((256, 256), 8, seed=seed)
        drawn = torch.from_numpy(np.abs(sigpy.mri.poisson((256, 256), 8.0, seed=seed, tol=0.1)) > 0)
        assert mask[128, 128] and (mask != drawn).sum() == int(not drawn[128, 128])
    # the DC sample is where fft2c puts frequency zero: a constant image's k-space is there alone
    k = fft2c(torch.ones(1, 1, 256, 256, dtype=torch.complex64))
    assert k[0, 0, 128, 128].abs() > 255 and k[0, 0].abs().sum() - k[0, 0, 128, 128].abs() < 1e-2


def test_single_coil_operator_is_the_masked_fft_of_every_slice():
    op = mri_single_coil(64, 8, seed=0)
    assert torch.equal(op.mask, poisson_mask((64, 64), 8, seed=0))
    x = torch.rand(3, 1, 64, 64, dtype=torch.float64)
    assert torch.allclose(op.A(x), fft2c(x.to(torch.complex128)) * op.mask)
    assert not op.A_adjoint(op.A(x)).is_complex()


@pytest.mark.parametrize("width,acc", [(64, 4), (128, 4), (96, 8)])
def test_uniform1d_mask_samples_distinct_lines_with_acs(width, acc):
    mask = uniform1d_mask((width, width), acc, center_fraction=0.08, seed=3)
    lines = mask[0]
    assert torch.equal(mask, lines.expand_as(mask))  # whole columns
    assert int(lines.sum()) == width // acc  # distinct lines: exactly W // R
    n_acs = n_acs_lines(width, 0.08)
    start = width // 2 - n_acs // 2
    assert bool(lines[start : start + n_acs].all())
    assert torch.equal(mask, uniform1d_mask((width, width), acc, center_fraction=0.08, seed=3))
    assert not torch.equal(mask, uniform1d_mask((width, width), acc, center_fraction=0.08, seed=4))


def test_uniform1d_mask_rejects_impossible_settings():
    with pytest.raises(DdipError, match="ACS"):
        uniform1d_mask((64, 64), 32, center_fraction=0.2)


def _alignment(est, true, support):
    """|<S_est, S_true>| / (|S_est| |S_true|) per pixel: 1 when the maps agree up to a per-pixel phase."""
    true = true.unsqueeze(0).to(est.dtype)
    inner = (est.conj() * true).sum(1).abs()
    norm = est.abs().pow(2).sum(1).sqrt() * true.abs().pow(2).sum(1).sqrt()
    return (inner / norm.clamp(min=1e-12))[support]


def _disc_volume(size, depth=2):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    body = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).float() * 0.7
    spot = ((xx - 0.3) ** 2 + yy**2 < 0.04).float() * 0.3
    return (body + spot).expand(depth, 1, size, size).clone()


@pytest.mark.parametrize("size", [64, 128])
def test_espirit_maps_from_acs_align_with_the_true_maps(size):
    vol = _disc_volume(size)
    sim = simulate_multicoil(vol, n_coils=8, seed=0)
    mask = uniform1d_mask((size, size), 4, seed=0)
    maps = estimate_coil_maps(sim.kspace * mask, n_acs_lines(size, 0.08))
    assert maps.shape == sim.kspace.shape
    align = _alignment(maps, sim.coil_maps, vol[:, 0] > 0)
    assert align.mean() > 0.98 and align.min() > 0.9


def test_multicoil_reconstruction_with_estimated_maps(generator):
    size = 64
    vol = _disc_volume(size)
    sim = simulate_multicoil(vol, n_coils=8, seed=1)
    mask = uniform1d_mask((size, size), 1, seed=0)  # fully sampled: the SENSE combination is exact up to phase
    y = sim.kspace * mask
    op = MultiCoilMRI(mask, estimate_coil_maps(y, n_acs_lines(size, 0.08)))
    rec = op.A_dagger(y)
    support = vol > 0
    assert torch.allclose(rec.abs()[support], vol[support], atol=0.02)


def test_simulated_multicoil_data_are_consistent():
    vol = _disc_volume(32, depth=3)
    sim = simulate_multicoil(vol, n_coils=4, seed=2)
    assert torch.allclose(sim.image.abs(), vol, atol=1e-6)
    assert sim.image.angle()[vol > 0].std() > 0.05  # a real (non-constant) phase was applied
    assert torch.allclose(sim.coil_maps.abs().pow(2).sum(0), torch.ones(32, 32), atol=1e-5)
    op = mri_multi_coil(32, sim.coil_maps, acceleration=1)
    assert torch.allclose(op.A(sim.image), sim.kspace, atol=1e-5)


def test_coil_map_shape_must_match_the_mask():
    with pytest.raises(DdipError, match="coil maps have shape"):
        MultiCoilMRI(torch.ones(16, 16), torch.ones(4, 8, 8, dtype=torch.complex64))
    op = MultiCoilMRI(torch.ones(16, 16), torch.ones(3, 4, 16, 16, dtype=torch.complex64))
    with pytest.raises(DdipError, match="given for 3 slices"):
        op.A(torch.ones(2, 1, 16, 16, dtype=torch.complex64))
