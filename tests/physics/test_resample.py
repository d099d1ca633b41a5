"""Resampled operators: the data's grid seen from the prior's grid (``--resize``)."""

import pytest
import torch

from ddip.data.phantoms import random_ellipses
from ddip.errors import DdipError
from ddip.metrics import psnr
from ddip.physics import Resampled, conjugate_gradient, resample, sparse_view_ct
from ddip.physics.resample import resampling_matrix


def test_resampling_preserves_constants_and_area_averages():
    for n_from, n_to in [(16, 32), (32, 16), (24, 16), (16, 24)]:
        r = resampling_matrix(n_from, n_to)
        assert r.shape == (n_to, n_from)
        assert torch.allclose(r.sum(dim=1), torch.ones(n_to, dtype=torch.float64))  # constants stay constant
    assert torch.allclose(resampling_matrix(4, 2), torch.tensor([[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]],
                                                                dtype=torch.float64))


def test_least_squares_through_the_resampling_recovers_the_data_grid_image(generator):
    x64 = random_ellipses(2, 64, generator=generator).double()
    x32 = resample(x64, 32)
    op = sparse_view_ct(32, 90)
    y = op.A(x32)
    big = Resampled(op, 64)
    rhs = big.A_adjoint(y)
    x_hat = conjugate_gradient(big.normal, rhs, big.A_dagger(y), n_iter=60, reduce="slice")
    assert x_hat.shape == (2, 1, 64, 64)
    assert float(psnr(big.to_data_grid(x_hat), x32).mean()) > 40
    assert float(psnr(big.A_dagger(y), x64).mean()) > 18  # the approximate inverse is a sensible start


def test_resampling_needs_square_images():
    class Odd:
        img_shape = (1, 16, 8)
        meas_shape = (4,)

    with pytest.raises(DdipError, match="square images"):
        Resampled(Odd(), 16)
