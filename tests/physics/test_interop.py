"""deepinv-convention operators in ddip (ddip.physics.interop): the complex layout and the operator's scale."""

import pytest
import torch
from deepinv_style import TwoChannelMRI, UnitNormCT

from ddip.data import load_fixture
from ddip.errors import DdipError
from ddip.metrics import psnr
from ddip.physics import SingleCoilMRI, operator_norm, uniform1d_mask
from ddip.physics.interop import MatchedNorm, TwoChannelComplex, from_two_channels, to_two_channels
from ddip.priors import load_prior
from ddip.methods import ADMM_TV
from ddip.solvers import DDS, admm_tv_reconstruct, solve
from ddip.tasks import TaskConfig, simulate


def test_a_two_channel_operator_is_ddips_complex_operator(generator):
    mask = uniform1d_mask((16, 16), 2, seed=1)
    wrapped = TwoChannelComplex(TwoChannelMRI(mask), img_shape=(1, 16, 16), meas_shape=(1, 16, 16))
    ours = SingleCoilMRI(mask, real_images=False)
    x = torch.complex(torch.randn(3, 1, 16, 16, generator=generator), torch.randn(3, 1, 16, 16, generator=generator))
    y = ours.A(x)
    assert torch.allclose(wrapped.A(x), y, atol=1e-6) and torch.allclose(wrapped.A_adjoint(y), ours.A_adjoint(y),
                                                                          atol=1e-6)
    assert torch.equal(from_two_channels(to_two_channels(x)), x)
    with pytest.raises(DdipError, match="two channels"):
        from_two_channels(torch.randn(2, 3, 4, 4))


def test_matched_norm_makes_the_default_weights_mean_the_same_on_a_unit_norm_projector():
    """deepinv's normalised Tomography weighs the data ‖A‖² ≈ 900 times less under DDS's γ and the ADMM's ρ, λ; its
    data matched to our projector's norm give our reconstructions (two chest-CT slices, 15 views, shipped prior)."""
    m = simulate(load_fixture("chest-ct").slices[14:16], TaskConfig(task="sv-ct", size=64, views=15))
    truth, ours = m.ground_truth, m.physics
    foreign = UnitNormCT(64, 15)
    y_foreign = m.y / foreign.norm  # what the foreign operator's user holds: the same rays at its scale
    matched = MatchedNorm(foreign, operator_norm(ours, truth[:1], n_iter=100), truth)
    assert matched.scale == pytest.approx(foreign.norm, rel=1e-3)
    prior = load_prior("ellipses-64")

    def scores(op, y):
        dds = solve(DDS(), prior, y, op, generator=torch.Generator().manual_seed(0))
        tv = admm_tv_reconstruct(y, op, **ADMM_TV["sv-ct"])
        return [float(psnr(x, truth).mean()) for x in (dds, tv)]

    reference, unmatched, rescaled = scores(ours, m.y), scores(foreign, y_foreign), scores(matched,
                                                                                           matched.measurement(y_foreign))
    assert all(abs(a - b) < 0.3 for a, b in zip(reference, rescaled)), (reference, rescaled)
    assert all(u < r - 1.0 for u, r in zip(unmatched, reference)), (reference, unmatched)


def test_matched_norm_refuses_a_zero_operator():
    class Zero:
        def A(self, x):
            return 0 * x

        def A_adjoint(self, y):
            return 0 * y

    with pytest.raises(DdipError, match="norm 0"):
        MatchedNorm(Zero(), 1.0, torch.ones(1, 1, 4, 4))
    with pytest.raises(DdipError, match="must be positive"):
        MatchedNorm(Zero(), 0.0, torch.ones(1, 1, 4, 4))
