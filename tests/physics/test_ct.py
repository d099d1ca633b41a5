import math

import numpy as np
import pytest
import torch
from skimage.transform import iradon, radon

from ddip.data.phantoms import random_ellipses
from ddip.physics import conjugate_gradient, sparse_view_ct


@pytest.fixture
def phantom(generator):
    return random_ellipses(1, 48, generator=generator, dtype=torch.float64)


def test_geometry_follows_the_issue():
    op = sparse_view_ct(64, 60)
    assert op.n_det == math.ceil(math.sqrt(2) * 64) == 91
    assert op.angles_deg[0] == 0.0 and op.angles_deg[1] == pytest.approx(3.0) and op.angles_deg[-1] < 180.0
    assert op.meas_shape == (1, 60, 91)


def test_projection_matches_skimage_radon(phantom):
    op = sparse_view_ct(48, 30)
    ours = op.A(phantom)[0, 0].numpy().T
    ref = radon(phantom[0, 0].numpy(), np.asarray(op.angles_deg), circle=False)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() < 1e-9 * np.abs(ref).max()


def test_fbp_is_close_to_skimage_iradon(phantom):
    op = sparse_view_ct(48, 90)
    sino = op.A(phantom)
    ours = op.fbp(sino)[0, 0].numpy()
    ref = iradon(sino[0, 0].numpy().T, np.asarray(op.angles_deg), circle=False, filter_name="ramp")
    assert np.linalg.norm(ours - ref) / np.linalg.norm(ref) < 0.05
    assert np.linalg.norm(ours - phantom[0, 0].numpy()) / np.linalg.norm(phantom[0, 0].numpy()) < 0.3


def test_adjoint_is_the_transpose_of_the_dense_matrix():
    op = sparse_view_ct(8, 5)
    basis = torch.eye(64, dtype=torch.float64).view(64, 1, 8, 8)
    dense = op.A(basis).reshape(64, -1).T  # columns: images of basis vectors
    y_basis = torch.eye(dense.shape[0], dtype=torch.float64).view(-1, *op.meas_shape)
    dense_t = op.A_adjoint(y_basis).reshape(dense.shape[0], -1).T
    assert torch.equal(dense_t, dense.T)


def test_autograd_through_projector_is_the_adjoint(generator):
    op = sparse_view_ct(12, 7)
    x = torch.rand(2, 1, 12, 12, dtype=torch.float64, generator=generator, requires_grad=True)
    y = torch.rand(2, *op.meas_shape, dtype=torch.float64, generator=generator)
    (0.5 * (op.A(x) - y).pow(2).sum()).backward()
    assert torch.allclose(x.grad, op.A_adjoint(op.A(x.detach()) - y), atol=1e-12)
    assert torch.autograd.gradcheck(op.A, (x.detach().requires_grad_(),))
    assert torch.autograd.gradcheck(op.A_adjoint, (y.requires_grad_(),))


def test_the_projector_follows_the_input_dtype_and_agrees_across_dtypes():
    op = sparse_view_ct(16, 4)
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    y64, y32 = op.A(x), op.A(x.float())
    assert y64.dtype == torch.float64 and y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y64, rtol=1e-5, atol=1e-5)
    assert op.A_adjoint(y32).dtype == torch.float32 and op.A_adjoint(y64).dtype == torch.float64


def test_least_squares_fits_the_sinogram_far_better_than_fbp(generator):
    op = sparse_view_ct(32, 16)
    x = random_ellipses(2, 32, generator=generator, dtype=torch.float64)
    y = op.A(x)
    rhs = op.A_adjoint(y)
    ls = conjugate_gradient(op.normal, rhs, torch.zeros_like(rhs), n_iter=50, reduce="slice")
    assert (op.A(ls) - y).norm() < 0.05 * (op.A(op.fbp(y)) - y).norm()
