import pytest
import torch

from ddip.errors import DdipError
from ddip.physics import conjugate_gradient


def _spd(n, generator, dtype=torch.float64):
    m = torch.randn(n, n, dtype=dtype, generator=generator)
    return m.mH @ m + n * torch.eye(n, dtype=dtype)


@pytest.mark.parametrize("reduce", ["volume", "slice"])
def test_cg_solves_a_batched_spd_system(reduce, generator):
    mats = torch.stack([_spd(12, generator) for _ in range(3)])  # one SPD matrix per slice
    normal = lambda x: (mats @ x.view(3, 12, 1)).view(x.shape)  # noqa: E731
    x_true = torch.randn(3, 1, 3, 4, dtype=torch.float64, generator=generator)
    x = conjugate_gradient(normal, normal(x_true), torch.zeros_like(x_true), n_iter=40, reduce=reduce)
    assert torch.allclose(x, x_true, atol=1e-8)


def test_cg_handles_complex_hermitian_systems(generator):
    mat = _spd(10, generator, torch.complex128)
    normal = lambda x: (mat @ x.reshape(-1, 10).T).T.reshape(x.shape)  # noqa: E731
    x_true = torch.randn(2, 1, 2, 5, dtype=torch.complex128, generator=generator)
    x = conjugate_gradient(normal, normal(x_true), torch.zeros_like(x_true), n_iter=30)
    assert torch.allclose(x, x_true, atol=1e-8)


def test_per_slice_cg_equals_independent_solves(generator):
    scales = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64).view(3, 1, 1, 1)
    base = torch.diag(torch.linspace(1, 5, 8, dtype=torch.float64))
    normal = lambda x: scales * (base @ x.view(x.shape[0], 8, 1)).view(x.shape)  # noqa: E731
    rhs = torch.randn(3, 1, 2, 4, dtype=torch.float64, generator=generator)
    joint = conjugate_gradient(normal, rhs, torch.zeros_like(rhs), n_iter=3, reduce="slice")
    for i in range(3):
        normal_i = lambda x, s=scales[i]: s * (base @ x.view(1, 8, 1)).view(x.shape)  # noqa: E731
        single = conjugate_gradient(normal_i, rhs[i : i + 1], torch.zeros_like(rhs[i : i + 1]), n_iter=3)
        assert torch.allclose(joint[i : i + 1], single, atol=1e-12)
    # with one step size for the whole batch the badly scaled slices are not solved independently
    shared = conjugate_gradient(normal, rhs, torch.zeros_like(rhs), n_iter=3, reduce="volume")
    assert not torch.allclose(shared, joint, atol=1e-6)


def test_cg_gradient_matches_finite_differences(generator):
    mat = _spd(6, generator)

    def solve(rhs, theta):
        normal = lambda x: (mat @ x.view(-1, 6, 1)).view(x.shape) + theta * x  # noqa: E731
        return conjugate_gradient(normal, rhs, torch.zeros_like(rhs), n_iter=4)

    rhs = torch.randn(2, 1, 2, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (rhs, theta))


def test_cg_stops_early_at_tolerance_and_validates_arguments(generator):
    calls = []

    def normal(x):
        calls.append(1)
        return 2.0 * x

    rhs = torch.randn(2, 1, 4, 4, generator=generator)
    x = conjugate_gradient(normal, rhs, torch.zeros_like(rhs), n_iter=50, tol=1e-6)
    assert torch.allclose(x, rhs / 2) and len(calls) <= 3
    with pytest.raises(DdipError, match="reduce"):
        conjugate_gradient(normal, rhs, rhs, n_iter=1, reduce="pixel")
