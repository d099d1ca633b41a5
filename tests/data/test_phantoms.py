import math

import torch

from ddip.data.phantoms import DIAMETER, ellipse_phantom, normalise_phantom, random_ellipse_parameters, random_ellipses


def test_phantoms_are_reproducible_per_seed():
    a = random_ellipses(3, 32, generator=torch.Generator().manual_seed(7))
    b = random_ellipses(3, 32, generator=torch.Generator().manual_seed(7))
    c = random_ellipses(3, 32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_phantoms_lie_in_unit_range_with_zero_background(generator):
    x = random_ellipses(16, 64, generator=generator)
    assert x.shape == (16, 1, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) == 0.0 and torch.allclose(x.amax(dim=(1, 2, 3)), torch.ones(16))
    # ellipses are disk-distributed: the corners (outside radius ~0.9) are background
    assert float(x[..., :6, :6].abs().max()) == 0.0
    assert 0.2 < float((x > 0).float().mean()) < 0.8


def test_parameter_distribution_follows_the_paper(generator):
    p = random_ellipse_parameters(400, generator=generator)
    active = p[..., 0] != 0
    n = active.sum(1).double()
    assert abs(float(n.mean()) - 140 * 0.98) < 3  # min(Poisson(140), 140) has mean ≈ 137
    assert float(n.max()) <= 140
    values = p[..., 0][active]
    assert float(values.min()) >= -0.4 and float(values.max()) <= 1.0
    axes = p[..., 1:3]
    assert abs(float(axes.mean()) - 0.2 * DIAMETER) < 0.003  # Exp(1) scaled by 0.2 d
    radius = p[..., 3:5].norm(dim=-1)
    assert float(radius.max()) <= DIAMETER + 1e-12
    assert abs(float(radius.mean()) - 2 * DIAMETER / 3) < 0.005  # Triangular(0, d, d) has mean 2d/3


def test_rasterised_ellipse_has_the_right_area_and_orientation():
    n = 256
    params = torch.tensor([[[1.0, 0.5, 0.25, 0.1, -0.2, math.pi / 2]]], dtype=torch.float64)
    img = ellipse_phantom(params, n)[0, 0]
    pixel_area = (2.0 / n) ** 2
    assert abs(float(img.sum()) * pixel_area - math.pi * 0.5 * 0.25) < 0.01
    # rotated by 90°: the long axis (0.5) now runs along y (array axis 1)
    extent_x = (img.sum(1) > 0).sum() * 2.0 / n
    extent_y = (img.sum(0) > 0).sum() * 2.0 / n
    assert abs(float(extent_x) - 0.5) < 0.03 and abs(float(extent_y) - 1.0) < 0.03


def test_normalisation_maps_foreground_to_unit_range():
    img = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    img[0, 0, 0, 0], img[0, 0, 1, 1], img[0, 0, 2, 2] = -0.3, 0.2, 0.7
    out = normalise_phantom(img)
    assert out[0, 0, 0, 0] == 0 and out[0, 0, 2, 2] == 1 and abs(float(out[0, 0, 1, 1]) - 0.5) < 1e-12
    assert torch.equal(normalise_phantom(torch.zeros(1, 1, 3, 3)), torch.zeros(1, 1, 3, 3))


def test_complex_phantoms_have_ellipse_magnitudes_and_smooth_phase():
    from ddip.data.phantoms import random_complex_ellipses

    x = random_complex_ellipses(4, 32, generator=torch.Generator().manual_seed(3))
    assert x.shape == (4, 2, 32, 32)
    assert torch.equal(x, random_complex_ellipses(4, 32, generator=torch.Generator().manual_seed(3)))
    mag = x.norm(dim=1)
    assert float(mag.max()) <= 1.0 + 1e-6 and float((mag > 0).float().mean()) > 0.2
    z = torch.complex(x[:, 0], x[:, 1])
    both = (mag[:, :-1] > 0.05) & (mag[:, 1:] > 0.05)
    jump = (z[:, 1:] * z[:, :-1].conj()).angle().abs()[both]  # phase change between vertical neighbours
    assert float(jump.median()) < 0.3 and float(z.angle()[mag > 0.05].std()) > 0.05
