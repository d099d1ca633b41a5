import torch

from ddip.physics import add_noise


def test_real_noise_has_the_requested_standard_deviation(generator):
    y = torch.zeros(200, 1, 32, 32)
    noisy = add_noise(y, 0.05, generator=generator)
    assert abs(float(noisy.std()) - 0.05) < 0.002
    assert torch.equal(y, torch.zeros_like(y))  # input untouched


def test_complex_noise_only_on_sampled_locations(generator):
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[:, ::3] = True
    y = torch.zeros(100, 1, 32, 32, dtype=torch.complex64)
    noisy = add_noise(y, 0.1, generator=generator, mask=mask)
    assert torch.equal(noisy[..., ~mask], torch.zeros_like(noisy[..., ~mask]))
    power = noisy[..., mask].abs().pow(2).mean()
    assert abs(float(power) - 0.01) < 0.0005  # E|n|^2 = sigma^2
    assert abs(float(noisy[..., mask].real.var() - noisy[..., mask].imag.var())) < 0.0005


def test_noise_is_reproducible_per_generator():
    y = torch.zeros(4, 1, 8, 8)
    a = add_noise(y, 0.01, generator=torch.Generator().manual_seed(5))
    b = add_noise(y, 0.01, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
