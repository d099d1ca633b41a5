"""One contract, every operator: adjointness in float64, linearity, shapes and dtypes, A_dagger quality."""

import pytest
import torch
from deepinv_style import TwoChannelMRI, UnitNormCT

from ddip.data.phantoms import random_ellipses
from ddip.data.simulation import simulate_multicoil
from ddip.errors import DdipError
from ddip.metrics import psnr
from ddip.physics import (
    MultiCoilMRI,
    ParallelBeamCT,
    Resampled,
    SingleCoilMRI,
    adjointness_error,
    mri_single_coil,
    sparse_view_ct,
    uniform1d_mask,
)
from ddip.physics.interop import MatchedNorm, TwoChannelComplex


def _multicoil(size, acceleration=4):
    maps = simulate_multicoil(torch.ones(1, 1, size, size), n_coils=4, seed=0).coil_maps
    return MultiCoilMRI(uniform1d_mask((size, size), acceleration, seed=0), maps)


# name -> (factory, A_dagger PSNR floor on an ELLIPSES phantom in dB, for a well-sampled version of the operator)
OPERATORS = {
    "sv_ct": (lambda: sparse_view_ct(16, 8), None),
    "sv_ct_full": (lambda: sparse_view_ct(32, 64), 22.0),
    # a measured detector: irregular angles, another bin count and width (ddip import of a sinogram)
    "ct_measured_detector": (lambda: ParallelBeamCT(16, [3.0, 47.0, 95.5, 170.0], n_det=30, detector_spacing=0.8),
                             None),
    "ct_measured_detector_full": (lambda: ParallelBeamCT(32, torch.arange(96) * 1.875, n_det=31,
                                                         detector_spacing=1.5), 20.0),
    "mri_single_coil": (lambda: mri_single_coil(32, 4, seed=0), None),
    "mri_single_coil_full": (lambda: SingleCoilMRI(torch.ones(32, 32)), 100.0),
    "mri_single_coil_complex": (lambda: SingleCoilMRI(uniform1d_mask((16, 16), 2, seed=1), real_images=False), None),
    "mri_multi_coil": (lambda: _multicoil(32), None),
    "mri_multi_coil_full": (lambda: _multicoil(32, acceleration=1), 100.0),
    "resampled_ct_up": (lambda: Resampled(sparse_view_ct(24, 8), 16), None),
    "resampled_ct_down": (lambda: Resampled(sparse_view_ct(16, 8), 24), None),
    "resampled_multi_coil": (lambda: Resampled(_multicoil(32), 16), None),
    # deepinv's conventions (ddip.physics.interop): two-channel complex, another scale
    "two_channel_complex": (lambda: TwoChannelComplex(TwoChannelMRI(uniform1d_mask((16, 16), 2, seed=1)),
                                                      img_shape=(1, 16, 16), meas_shape=(1, 16, 16)), None),
    "matched_norm": (lambda: MatchedNorm(UnitNormCT(16, 8), 7.0, torch.zeros(1, 1, 16, 16)), None),
}


def _random_image(op, n, dtype, generator):
    real = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(n, *op.img_shape, dtype=real, generator=generator)
    if op.img_complex:
        x = torch.complex(x, torch.randn(x.shape, dtype=real, generator=generator))
    return x


def _random_measurement(op, n, dtype, generator):
    real = torch.float64 if dtype == torch.float64 else torch.float32
    y = torch.randn(n, *op.meas_shape, dtype=real, generator=generator)
    if op.meas_complex:
        y = torch.complex(y, torch.randn(y.shape, dtype=real, generator=generator))
    return y


@pytest.mark.parametrize("name", OPERATORS)
def test_adjoint_is_exact_in_float64(name, generator):
    op = OPERATORS[name][0]()
    x = _random_image(op, 3, torch.float64, generator)
    y = _random_measurement(op, 3, torch.float64, generator)
    assert adjointness_error(op, x, y) < 1e-10


@pytest.mark.parametrize("name", OPERATORS)
def test_operator_is_linear(name, generator):
    op = OPERATORS[name][0]()
    x1 = _random_image(op, 2, torch.float64, generator)
    x2 = _random_image(op, 2, torch.float64, generator)
    a, b = 0.7, -1.9
    assert torch.allclose(op.A(a * x1 + b * x2), a * op.A(x1) + b * op.A(x2), atol=1e-10)


@pytest.mark.parametrize("name", OPERATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name, dtype, generator, device):
    op = OPERATORS[name][0]()
    x = _random_image(op, 5, dtype, generator).to(device)
    y = op.A(x)
    assert y.shape == (5, *op.meas_shape) and y.device.type == device.type
    assert y.is_complex() == op.meas_complex
    assert y.real.dtype == dtype
    back = op.A_adjoint(y)
    assert back.shape == x.shape and back.is_complex() == op.img_complex and back.real.dtype == dtype
    assert torch.allclose(op.normal(x), back, atol=1e-4 if dtype == torch.float32 else 1e-10)
    assert op.A_dagger(y).shape == x.shape


@pytest.mark.parametrize("name", OPERATORS)
def test_wrong_shapes_are_rejected_with_a_clear_message(name, generator):
    op = OPERATORS[name][0]()
    with pytest.raises(DdipError, match="image has shape"):
        op.A(torch.zeros(2, 1, 7, 7))
    with pytest.raises(DdipError, match="measurement has shape"):
        op.A_adjoint(torch.zeros(2, 3, 5, 5))


@pytest.mark.parametrize("name", [n for n, (_, floor) in OPERATORS.items() if floor is not None])
def test_a_dagger_reconstructs_a_phantom(name, generator):
    op, floor = OPERATORS[name]
    op = op()
    x = random_ellipses(4, op.img_shape[-1], generator=generator, dtype=torch.float64)
    if op.img_complex:
        x = x.to(torch.complex128)
    rec = op.A_dagger(op.A(x))
    assert psnr(rec, x, data_range=1.0).mean() > floor
