"""The solver contract, closed-form Gaussian posteriors, and properties of each data-consistency step."""

import math

import pytest
import torch
from gaussian import gaussian_prior, posterior_mean

from ddip.data import load_fixture
from ddip.data.phantoms import random_ellipses
from ddip.data.simulation import simulate_multicoil
from ddip.metrics import band_errors, psnr
from ddip.physics import (
    MultiCoilMRI,
    SingleCoilMRI,
    add_noise,
    conjugate_gradient,
    mri_single_coil,
    sparse_view_ct,
    uniform1d_mask,
)
from ddip.physics.base import normal_of
from ddip.priors import load_prior
from ddip.priors.schedule import VPSchedule
from ddip.solvers import DDNM, DDS, DPS, DiffusionMBIR, admm_tv_reconstruct, solve
from ddip.solvers.base import ddim_update, initial_noise
from ddip.solvers.dds import PAPER_CG_ITERS
from ddip.tasks import TaskConfig, simulate

STEPS = {
    "dds": lambda: DDS(),
    "dds_normal": lambda: DDS(variant="normal"),
    "ddnm": lambda: DDNM(),
    "ddnm_proximal": lambda: DDNM(variant="proximal"),
    "mbir": lambda: DiffusionMBIR(rho=0.1, lam=1e-3),
    "dps": lambda: DPS(n_steps=20),
}


@pytest.fixture
def ct_problem():
    op = sparse_view_ct(16, 8)
    g = torch.Generator().manual_seed(0)
    x = 0.5 + 0.2 * torch.randn(4, 1, 16, 16, generator=g)
    return op, add_noise(op.A(x), 0.01, generator=g)


@pytest.mark.parametrize("name", STEPS)
def test_contract_shapes_dtype_and_reproducibility(name, ct_problem):
    op, y = ct_problem
    prior = gaussian_prior(0.5, 0.2)
    run = lambda seed: solve(STEPS[name](), prior, y, op, generator=torch.Generator().manual_seed(seed),  # noqa
                             n_steps=10 if name != "dps" else None, max_batch=3)
    a, b, c = run(1), run(1), run(2)
    assert a.shape == (4, 1, 16, 16) and a.dtype == torch.float32 and bool(torch.isfinite(a).all())
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", STEPS)
def test_contract_network_batching_does_not_change_the_result(name, ct_problem):
    op, y = ct_problem
    prior = gaussian_prior(0.5, 0.2)
    run = lambda batch: solve(STEPS[name](), prior, y, op, generator=torch.Generator().manual_seed(3),  # noqa
                              n_steps=8 if name != "dps" else None, max_batch=batch)
    assert torch.allclose(run(1), run(64), atol=1e-6)


# Error of the sample mean of 256 runs against the closed-form posterior mean, relative to the prior-to-posterior
# distance. Measured (seeds 1 and 2, code noise mixing): CT 0.17-0.18 DDS, 0.11-0.12 DDNM, 0.13-0.15 DDNM proximal,
# 0.11-0.13 MBIR, 0.27 DPS (200 steps); MRI 0.018-0.03 for every step. A sampler that ignored the data would score 1.
GAUSSIAN_TOLERANCE = {"ct": {"dds": 0.25, "ddnm": 0.2, "ddnm_proximal": 0.22, "mbir": 0.2, "dps": 0.35},
                      "mri": {"dds": 0.06, "ddnm": 0.06, "ddnm_proximal": 0.06, "mbir": 0.06, "dps": 0.06}}


@pytest.mark.parametrize("op_name", ["ct", "mri"])
@pytest.mark.parametrize("step", ["dds", "ddnm", "ddnm_proximal", "mbir", "dps"])
def test_contract_gaussian_prior_lands_near_the_closed_form_posterior_mean(op_name, step):
    op = sparse_view_ct(8, 4) if op_name == "ct" else SingleCoilMRI(uniform1d_mask((8, 8), 2, seed=0))
    mean, std, sigma = 0.5, 0.2, 0.01
    g = torch.Generator().manual_seed(0)
    x = mean + std * torch.randn(1, *op.img_shape, dtype=torch.float64, generator=g)
    y = add_noise(op.A(x), sigma, generator=g)
    mu = posterior_mean(op, y, mean, std, sigma)
    ys = y.expand(256, *y.shape[1:]).clone()  # 256 independent samples of the same problem
    sampler = DPS(n_steps=200) if step == "dps" else STEPS[step]()
    out = solve(sampler, gaussian_prior(mean, std), ys, op, generator=torch.Generator().manual_seed(1),
                init="independent", max_batch=256)
    sample_mean = out.mean(0, keepdim=True)
    assert (sample_mean - mu).norm() < GAUSSIAN_TOLERANCE[op_name][step] * (mu - mean).norm()


def test_noiseless_ddnm_is_measurement_consistent(generator):
    op = mri_single_coil(32, 4)
    x = random_ellipses(3, 32, generator=generator)
    y = op.A(x)
    out = solve(DDNM(), gaussian_prior(0.2, 0.3), y, op, generator=generator, n_steps=10)
    assert (op.A(out) - y).norm() < 1e-3 * y.norm()


def test_ddnm_normal_equations_amplify_noise_where_the_proximal_form_does_not():
    """Noisy 8-coil SENSE at R = 4: A^H A has small non-zero eigenvalues, so 30 CG steps on the normal equations
    (Eq. 24) fit the noise. Started from the truth itself, measured: relative error 0.39–0.49 after the normal
    form (0.03 after 1 step, 1.2–1.4 after 100) against 0.034–0.040 after the proximal form (seeds 0–2)."""
    g = torch.Generator().manual_seed(0)
    sim = simulate_multicoil(random_ellipses(2, 32, generator=g), n_coils=8, seed=0)
    mask = uniform1d_mask((32, 32), 4, center_fraction=0.08, seed=0)
    op = MultiCoilMRI(mask, sim.coil_maps)
    y = add_noise(op.A(sim.image), 0.01, generator=g, mask=mask)
    err = lambda step: float((step.data_consistency(sim.image, y, op, {})[0] - sim.image).norm()  # noqa: E731
                             / sim.image.norm())
    normal, proximal = err(DDNM()), err(DDNM(variant="proximal"))
    assert proximal < 0.1 and normal > 5 * proximal


def test_mbir_tv_along_z_lowers_inter_slice_differences():
    op = sparse_view_ct(16, 6)
    g = torch.Generator().manual_seed(0)
    x = (0.5 + 0.2 * torch.randn(1, 1, 16, 16, generator=g)).expand(8, 1, 16, 16)  # constant along z
    y = add_noise(op.A(x), 0.05, generator=g)
    prior = gaussian_prior(0.5, 0.2)
    kwargs = dict(generator=torch.Generator().manual_seed(5), init="independent", n_steps=20)
    dds = solve(DDS(), prior, y, op, **kwargs)
    mbir = solve(DiffusionMBIR(rho=10.0, lam=1.0), prior, y, op, **kwargs)
    dz = lambda v: (v[1:] - v[:-1]).abs().mean()  # noqa: E731
    assert dz(mbir) < 0.5 * dz(dds)


def test_mbir_starts_its_admm_state_afresh_each_step_unless_told_to_carry_it():
    from ddip.solvers.tv import admm_tv

    op = sparse_view_ct(16, 6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 16, 16, generator=g)
    y = add_noise(op.A(torch.rand(4, 1, 16, 16, generator=g)), 0.05, generator=g)
    kw = dict(rho=1.0, lam=0.1)
    fresh, carry = DiffusionMBIR(**kw), DiffusionMBIR(**kw, carry_state=True)
    _, kept = carry.data_consistency(x0, y, op, carry.init_state(x0))
    assert kept["z"] is not None and kept["u"] is not None
    x_fresh, state = fresh.data_consistency(x0, y, op, kept)  # a carried state offered is not used
    x_alone, _, _ = admm_tv(x0, y, op, dims=(0,), n_admm=fresh.n_admm, cg_iters=fresh.cg_iters, **kw)
    assert torch.equal(x_fresh, x_alone) and state is kept
    x_carried, _ = carry.data_consistency(x0, y, op, kept)
    assert not torch.allclose(x_carried, x_alone)  # the carried z, u change the solve


@pytest.mark.parametrize("name", STEPS)
def test_contract_steps_accept_an_operator_the_library_does_not_define(name, foreign_operator):
    op = foreign_operator
    x = random_ellipses(2, 16, generator=torch.Generator().manual_seed(0))
    y = op.A(x)
    misfit = lambda step, n: float((op.A(solve(step, gaussian_prior(0.2, 0.3), y, op, n_steps=n,  # noqa: E731
                                                   generator=torch.Generator().manual_seed(1))) - y).norm() / y.norm())
    if name == "dps":  # guidance, not a projection: measured 0.15 with rho 0.5 against 1.57 unguided (200 steps)
        assert misfit(DPS(n_steps=200), None) < 0.25 * misfit(DPS(n_steps=200, rho=0.0), None)
    else:  # CG data consistency: measured 0.03 (DDS, DDNM proximal), 0.005 (MBIR), 2e-10 (DDNM)
        assert misfit(STEPS[name](), 5) < 0.05


@pytest.mark.parametrize("channels", [1, 2])
def test_complex_images_with_real_and_complex_priors(channels):
    size = 16
    vol = torch.zeros(2, 1, size, size)
    vol[:, :, 4:12, 4:12] = 0.8
    sim = simulate_multicoil(vol, n_coils=4, seed=0)
    op = MultiCoilMRI(uniform1d_mask((size, size), 2, seed=0), sim.coil_maps)
    y = op.A(sim.image)
    out = solve(DDS(), gaussian_prior(0.0, 0.5, channels=channels), y, op,
                generator=torch.Generator().manual_seed(0), n_steps=10)
    assert out.is_complex() and out.shape == (2, 1, size, size)
    assert (op.A(out) - y).norm() < 0.2 * y.norm()


def test_slerp_initial_noise_interpolates_between_the_end_slices():
    g = torch.Generator().manual_seed(0)
    noise = initial_noise((9, 1, 32, 32), mode="slerp", generator=g)
    g = torch.Generator().manual_seed(0)
    first = torch.randn(1, 32, 32, generator=g)
    last = torch.randn(1, 32, 32, generator=g)
    assert torch.allclose(noise[0], first, atol=1e-6) and torch.allclose(noise[-1], last, atol=1e-6)
    corr = lambda a, b: float((a * b).sum() / (a.norm() * b.norm()))  # noqa: E731
    assert corr(noise[3], noise[4]) > 0.9 and abs(corr(noise[0], noise[-1])) < 0.2
    assert all(abs(float(n.std()) - 1) < 0.1 for n in noise)  # slerp keeps unit variance


def test_ddim_noise_mixing_options():
    schedule = VPSchedule.linear()
    prior = gaussian_prior(0.0, 1.0)
    x0, eps = torch.zeros(1, 1, 256, 256), torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    t, s, eta = 500, 480, 0.85
    ab_s = float(schedule.at(s))
    std = {mix: float(ddim_update(prior, x0, eps, t, s, eta=eta, noise_mix=mix,
                                  generator=torch.Generator().manual_seed(1)).std())
           for mix in ("paper", "code", "ddim")}
    assert std["code"] == pytest.approx(math.sqrt(1 - ab_s), rel=0.02)  # variance preserving
    assert std["ddim"] == pytest.approx(math.sqrt(1 - ab_s), rel=0.02)
    assert std["paper"] == pytest.approx(math.sqrt((1 - ab_s) * (eta**2 + (1 - eta) ** 2)), rel=0.02)
    final = ddim_update(prior, x0 + 0.3, eps, 0, -1, eta=eta, noise_mix="paper", generator=None)
    assert torch.equal(final, x0 + 0.3)  # the last step lands on the data-consistent estimate


def test_admm_tv_beats_least_squares_on_piecewise_constant_phantoms(generator):
    op = sparse_view_ct(32, 12)
    x = random_ellipses(4, 32, generator=generator, max_ellipses=8)
    y = add_noise(op.A(x), 0.05, generator=generator)
    tv = admm_tv_reconstruct(y, op, lam=0.05, rho=1.0, n_admm=60, cg_iters=10)
    ls = admm_tv_reconstruct(y, op, lam=0.0, rho=1e-8, n_admm=6, cg_iters=10)
    assert (tv - x).norm() < 0.8 * (ls - x).norm()


def test_dds_fits_what_60_views_measure_where_the_papers_five_cg_steps_do_not():
    """At 60 views and 64 px (5,460 rays for 4,096 pixels) the data fix the image's low and middle frequencies. The
    paper's M = 5 CG steps per DDIM step leave them far from the least-squares fit; the default M fits them
    (docs/diagnosis.md §7). Two chest-CT slices with the shipped prior, 50 steps."""
    truth = load_fixture("chest-ct").slices[14:16]
    m = simulate(truth, TaskConfig(task="sv-ct", size=64, views=60))
    prior, truth = load_prior("ellipses-64"), m.ground_truth
    aty = m.physics.A_adjoint(m.y)
    least_squares = conjugate_gradient(normal_of(m.physics), aty, torch.zeros_like(aty), n_iter=50)
    runs = {m_: solve(DDS(cg_iters=m_), prior, m.y, m.physics, generator=torch.Generator().manual_seed(0))
            for m_ in (PAPER_CG_ITERS, DDS.cg_iters)}
    # below ~19 cycles per image 60 views sample the frequency plane densely enough (arc spacing π·f/60 ≤ 1)
    ls, paper, default = (band_errors(x, truth, 19)["low"] for x in (least_squares, *runs.values()))
    assert default < 3 * ls < paper / 3, (ls, paper, default)
    gain = float(psnr(runs[DDS.cg_iters], truth).mean() - psnr(runs[PAPER_CG_ITERS], truth).mean())
    assert gain > 2.0, gain


def test_the_mbir_x_update_run_past_convergence_stays_at_its_solution():
    """ADMM-TV along z on single-coil MRI ×8 (the MBIR x-update: masked FFT plus ρ·D_zᵀD_z, singular) in float32.
    After CG converges, rounding turns its search direction into a null-space one whose curvature is rounding noise;
    dividing by it blew the iterate up in the later ADMM iterations (max ~5e3 after 5 × 20 steps, ~6e8 after 5 × 50,
    for data in [0, 1]) until conjugate_gradient stopped such directions. Now more steps only converge further."""
    from ddip.physics import SingleCoilMRI, add_noise, poisson_mask
    from ddip.solvers.tv import admm_tv

    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(8, 1, 32, 32, generator=g), 5, 1, 2)  # smooth slices in [0, 1]
    mask = poisson_mask((32, 32), 8.0, seed=0)
    op = SingleCoilMRI(mask, real_images=True)
    y = add_noise(op.A(x), 0.01, generator=g, mask=mask)
    out = {n: admm_tv(x + 0.05, y, op, dims=(0,), lam=1e-3, rho=0.1, n_admm=5, cg_iters=n)[0] for n in (20, 50)}
    assert float(out[20].abs().max()) < 1.5 and torch.allclose(out[50], out[20], atol=1e-3), \
        (float(out[20].abs().max()), float((out[50] - out[20]).abs().max()))
