"""LoRA injection and the adaptation hook, on a tiny untrained network (fast, CPU)."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from ddip.adapt import (
    AdaptConfig,
    LoRAConfig,
    Replay,
    VolumeAdapter,
    adaptation_backward,
    adaptation_loss,
    count_parameters,
    d3ip,
    d3ip_mbir,
    d3ip_meta,
    ddip_slicewise,
    inject_lora,
    load_merged,
    load_trajectory,
    lora_base_weights,
    merge_lora,
    network_estimate,
    restore,
    save_trajectory,
    scd,
    snapshot,
    trainable_parameters,
)
from ddip.data import load_fixture
from ddip.errors import DdipError
from ddip.physics import add_noise, sparse_view_ct
from ddip.priors import DiffusionPrior, UNetConfig, build_unet
from ddip.priors.prior import NetworkSpeed
from ddip.solvers import DDS, DiffusionMBIR, solve

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,))


def _prior(seed=0, **lora):
    prior = DiffusionPrior(build_unet(TINY, seed=seed))
    inject_lora(prior.net, LoRAConfig(**lora), generator=torch.Generator().manual_seed(seed))
    return prior


@pytest.fixture
def problem():
    x = F.interpolate(load_fixture("chest-ct").slices[8:16], size=16, mode="area")
    op = sparse_view_ct(16, 6)
    return x, op, add_noise(op.A(x), 0.01, generator=torch.Generator().manual_seed(0))


def test_lora_at_initialisation_leaves_the_output_bit_identical():
    net = build_unet(TINY)
    x, t = torch.randn(3, 1, 16, 16), torch.tensor([3, 400, 999])
    with torch.no_grad():
        before = net(x, t).sample
    names = inject_lora(net, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        after = net(x, t).sample
    assert torch.equal(before, after)
    assert any("time_emb_proj" in n for n in names) and any("to_q" in n for n in names)
    assert any("downsamplers" in n for n in names) and not any("conv_in" in n or "conv_out" in n for n in names)
    assert all("lora_" in n for n in trainable_parameters(net))
    with pytest.raises(DdipError, match="already carries LoRA"):
        inject_lora(net)


def test_bias_training_is_an_option_excluding_time_embedding_projections():
    prior = _prior(train_biases=True)
    names = list(trainable_parameters(prior.net))
    assert any(n.endswith("conv1.base_layer.bias") for n in names)
    assert not any("time_emb_proj" in n and "lora_" not in n for n in names)
    counts = count_parameters(prior.net)
    assert 0 < counts["trainable"] < 0.2 * counts["total"]


# bf16 runs 25x slower on a CPU without native bf16 (an AMD EPYC here: 27 s each); they run under -m slow
@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow),
                                       pytest.param("bfloat16-weights", marks=pytest.mark.slow)])
def test_adaptation_changes_only_the_chosen_parameters_and_lowers_the_loss(problem, precision):
    x, op, y = problem
    prior = _prior().with_speed(NetworkSpeed(precision))
    base = {k: v.clone() for k, v in prior.net.state_dict().items() if "lora_" not in k}
    lora_before = snapshot(prior.net)
    g = torch.Generator().manual_seed(0)
    t = 500
    ab = float(prior.schedule.at(t))
    x_t = ab**0.5 * x + (1 - ab) ** 0.5 * torch.randn(x.shape, generator=g)
    step = DDS()
    with torch.no_grad():
        first = float(adaptation_loss(step, network_estimate(prior, x_t, t, y, op), y, op))
    adapter = VolumeAdapter(prior, step, y, op, AdaptConfig(n_iters=30, k=8, lr=1e-3, zeta=0),
                            generator=g)
    adapter(0, t, x_t, {})
    with torch.no_grad():
        last = float(adaptation_loss(step, network_estimate(prior, x_t, t, y, op), y, op))
    assert last < 0.8 * first
    after = prior.net.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base)  # base weights bit-identical
    lora_after = snapshot(prior.net)
    assert any(not torch.equal(lora_before[k], lora_after[k]) for k in lora_before)


def test_adaptation_window_is_zeta_to_t_start_minus_zeta(problem):
    x, op, y = problem
    prior = _prior()
    cfg = AdaptConfig(n_iters=2, k=2, zeta=200)
    _, report = d3ip(DDS(n_steps=10), prior, y, op, cfg, generator=torch.Generator().manual_seed(0),
                     adapt_generator=torch.Generator().manual_seed(1))
    adapted_t = {t for t, _ in report.losses}
    assert adapted_t == {200, 300, 400, 500, 600, 700}  # T' = 900 at 10 steps: the window is [200, 700]
    assert len(report.losses) == 2 * len(adapted_t)
    assert report.passes_adapt == 2 * 2 * len(adapted_t) and report.passes_forward == 10 * 8
    # the paper's window: ζ = 40 on 50 steps is [40, 940]; on 10 steps [40, 860], so t = 900 is not adapted
    from ddip.adapt.adapter import PAPER_ZETA

    paper = AdaptConfig(zeta=PAPER_ZETA)
    grid50 = prior.schedule.timesteps(50).tolist()
    assert [t for t in grid50 if paper.adapts_at(t, grid50[0])] == list(range(940, 39, -20))
    assert not paper.adapts_at(900, 900) and paper.adapts_at(860, 900)


def test_a_window_that_holds_no_timestep_says_that_nothing_adapts(problem, caplog):
    x, op, y = problem
    _, report = d3ip(DDS(n_steps=2), _prior(), y, op, AdaptConfig(n_iters=1, k=1, zeta=400),
                     generator=torch.Generator().manual_seed(0), adapt_generator=torch.Generator().manual_seed(1))
    assert report.losses == [] and "nothing adapts" in caplog.text  # grid 500, 0; window [400, 100]


def test_replaying_a_saved_trajectory_reproduces_the_volume(problem, tmp_path):
    x, op, y = problem
    prior = _prior()
    fresh = snapshot(prior.net)
    cfg = AdaptConfig(n_iters=2, k=3)
    out, report = d3ip(DDS(n_steps=8), prior, y, op, cfg, generator=torch.Generator().manual_seed(4),
                       adapt_generator=torch.Generator().manual_seed(5), record_trajectory=True)
    save_trajectory(tmp_path / "lora.safetensors", report.trajectory)
    prior2 = _prior()
    restore(prior2.net, fresh)
    replayed = solve(DDS(n_steps=8), prior2, y, op, generator=torch.Generator().manual_seed(4),
                     before_step=Replay(prior2, load_trajectory(tmp_path / "lora.safetensors")))
    # the replay folds each state into the base weights: the same network up to float rounding (this toy network
    # is untrained and its values reach ~50)
    torch.testing.assert_close(replayed, out, rtol=1e-4, atol=1e-4)


def test_merging_folds_lora_into_the_base_weights(problem):
    x, op, y = problem
    prior = _prior()
    x_in, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    prior.net.eval()
    with torch.no_grad():
        base = prior.net(x_in, t).sample
    d3ip(DDS(n_steps=4), prior, y, op, AdaptConfig(n_iters=3, k=2, zeta=0),
         generator=torch.Generator().manual_seed(0), adapt_generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        unmerged = prior.net(x_in, t).sample
        assert merge_lora(prior.net) > 0
        merged = prior.net(x_in, t).sample
    assert (unmerged - base).abs().max() > 1e-4  # the adaptation changed the function
    assert torch.allclose(unmerged, merged, atol=1e-5)  # merging does not


def test_loading_merged_states_one_after_another_accumulates_no_rounding(problem):
    prior = _prior()
    base = lora_base_weights(prior.net)
    a = {k: v + 0.01 for k, v in snapshot(prior.net).items()}
    b = {k: v - 0.03 for k, v in snapshot(prior.net).items()}
    load_merged(prior.net, a, base)
    once = {k: v.clone() for k, v in prior.net.state_dict().items()}
    for state in (b, a, b, a):
        load_merged(prior.net, state, base)
    assert all(torch.equal(once[k], v) for k, v in prior.net.state_dict().items())
    x_in, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 700])
    unmerged = _prior()
    restore(unmerged.net, a)
    with torch.no_grad():  # the merged network is the LoRA network with state a
        assert torch.allclose(prior.net(x_in, t).sample, unmerged.net(x_in, t).sample, atol=1e-5)


@pytest.mark.parametrize("method", ["d3ip", "d3ip_mbir", "ddip", "scd", "d3ip_meta"])
def test_every_method_runs_with_its_own_settings(method, problem):
    x, op, y = problem
    prior = _prior()
    fns = {"d3ip": d3ip, "d3ip_mbir": d3ip_mbir, "ddip": ddip_slicewise, "scd": scd, "d3ip_meta": d3ip_meta}
    step = DiffusionMBIR(n_steps=5, rho=1.0, lam=0.01) if method == "d3ip_mbir" else DDS(n_steps=5)
    y_sub = y[:4]
    out, report = fns[method](step, prior, y_sub, op, AdaptConfig(n_iters=1, k=2),
                              generator=torch.Generator().manual_seed(0),
                              adapt_generator=torch.Generator().manual_seed(1))
    assert out.shape == (4, 1, 16, 16) and bool(torch.isfinite(out).all()) and report.passes_adapt > 0
    if method == "scd":
        assert {t for t, _ in report.losses} == set(range(0, 1000, 200))  # no horizon: every step adapts


def test_d3ip_costs_one_lora_state_and_ddip_one_per_slice(problem):
    x, op, y = problem
    prior = _prior()
    cfg = AdaptConfig(n_iters=2, k=3, zeta=0)
    gens = dict(generator=torch.Generator().manual_seed(0), adapt_generator=torch.Generator().manual_seed(1))
    _, r3 = d3ip(DDS(n_steps=4), prior, y, op, cfg, **gens)
    _, r1 = ddip_slicewise(DDS(n_steps=4), prior, y, op, dataclasses.replace(cfg, k=1), **gens)
    n = y.shape[0]
    assert r3.passes_adapt == 4 * 2 * 3  # T_a · L · K
    assert r1.passes_adapt == n * 4 * 2  # N · T_a · L
    assert r3.passes_forward == r1.passes_forward == 4 * n  # T · N


def test_split_backward_gives_the_gradient_of_the_adaptation_loss(problem):
    x, op, y = problem
    prior = _prior()
    x_t = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    params = list(trainable_parameters(prior.net).values())
    adaptation_loss(DDS(), network_estimate(prior, x_t, 300, y, op), y, op).backward()
    whole = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    adaptation_backward(prior, DDS(), x_t, 300, y, op, weight=1.0)
    assert all(torch.allclose(a, p.grad, rtol=1e-5, atol=1e-7) for a, p in zip(whole, params))


def test_reconstruct_reports_where_the_time_goes(ct_measurement, tiny_prior):
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct
    from ddip.tasks import load_measurement

    res = reconstruct(load_measurement(ct_measurement), ReconstructConfig(method="d3ip", n_steps=4, n_iters=1,
                                                                          k=2, zeta=0), load_prior(tiny_prior))
    parts = res.report["time_breakdown_s"]
    assert {"network_forward", "network_backward", "data_consistency", "data_consistency_backward",
            "other"} <= set(parts)
    assert sum(parts.values()) == pytest.approx(res.wall_time_s, rel=1e-6)


# -- the hook contract: every before_step hook ----------------------------------------------------------------------
def _adapter(prior, y, op, seed):
    return VolumeAdapter(prior, DDS(n_steps=10), y, op, AdaptConfig(n_iters=2, k=2),
                         generator=torch.Generator().manual_seed(seed))


def _replay(prior, y, op, seed):
    target = {k: v + 0.01 * (seed + 1) for k, v in snapshot(prior.net).items()}
    return Replay(prior, {0: target, 3: target})


HOOKS = {"volume_adapter": _adapter, "replay": _replay}


def _base_untouched_but_for_merged_lora(net, base):
    """Every base weight as it was, but where a hook folded its LoRA state in (a replay): there W = W₀ + s·BA."""
    from peft.tuners.lora import LoraLayer

    merged = {f"{name}.base_layer.weight": m for name, m in net.named_modules()
              if isinstance(m, LoraLayer) and m.merged}
    now = net.state_dict()
    for k, w0 in base.items():
        if k in merged:
            assert torch.allclose(now[k], w0 + merged[k].get_delta_weight("default"), atol=1e-7), k
        else:
            assert torch.equal(now[k], w0), k


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("operator", ["ct", "foreign"])
def test_contract_hooks_change_only_lora_reproducibly_and_leave_x_and_state_alone(hook, operator, problem,
                                                                                 foreign_operator):
    x, op, y = problem
    if operator == "foreign":
        op = foreign_operator
        y = op.A(x)
    x_t = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    state = {"z": torch.ones(2)}
    runs = []
    for _ in range(2):
        prior = _prior()
        base = {k: v.clone() for k, v in prior.net.state_dict().items() if "lora_" not in k}
        before = snapshot(prior.net)
        x_in, state_in = x_t.clone(), {k: v.clone() for k, v in state.items()}
        assert HOOKS[hook](prior, y, op, seed=0)(0, 500, x_in, state_in) is None
        assert torch.equal(x_in, x_t) and torch.equal(state_in["z"], state["z"])
        after = snapshot(prior.net)
        _base_untouched_but_for_merged_lora(prior.net, base)
        assert all(after[k].dtype == before[k].dtype for k in before)
        assert any(not torch.equal(before[k], after[k]) for k in before)  # the hook acted at step 0
        runs.append(after)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # same seed, same state
    prior = _prior()
    before = snapshot(prior.net)
    HOOKS[hook](prior, y, op, seed=0)(1, 980, x_t, state)  # outside the window / not in the trajectory
    assert all(torch.equal(before[k], v) for k, v in snapshot(prior.net).items())


# -- method-level facts ----------------------------------------------------------------------------------------------
class _Spy(VolumeAdapter):
    """VolumeAdapter recording the LoRA state it starts from, the slices it draws and Reptile's α."""

    starts, draws, alphas = [], [], []

    def __post_init__(self):
        super().__post_init__()
        _Spy.starts.append(snapshot(self.prior.net))

    def _draw(self, n_total):
        index = super()._draw(n_total)
        _Spy.draws.append(index.tolist())
        return index

    def reptile_alpha(self):
        alpha = super().reptile_alpha()
        _Spy.alphas.append(alpha)
        return alpha


@pytest.fixture
def spy(monkeypatch):
    import ddip.adapt.methods as methods

    _Spy.starts, _Spy.draws, _Spy.alphas = [], [], []
    monkeypatch.setattr(methods, "VolumeAdapter", _Spy)
    return _Spy


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("carry_over", [False, True])
def test_ddip_starts_every_slice_from_the_fresh_lora_state_unless_carried_over(problem, spy, carry_over):
    x, op, y = problem
    prior = _prior()
    fresh = snapshot(prior.net)
    ddip_slicewise(DDS(n_steps=4), prior, y[:3], op, AdaptConfig(n_iters=1, zeta=0), carry_over=carry_over,
                   generator=torch.Generator().manual_seed(0), adapt_generator=torch.Generator().manual_seed(1))
    assert len(spy.starts) == 3 and _same(spy.starts[0], fresh)
    assert all(_same(s, fresh) != carry_over for s in spy.starts[1:])


def test_d3ip_mbir_draws_contiguous_slices_and_d3ip_random_ones(problem, spy):
    x, op, y = problem
    kwargs = dict(generator=torch.Generator().manual_seed(0), adapt_generator=torch.Generator().manual_seed(1))
    cfg = AdaptConfig(n_iters=3, k=3, zeta=0)
    d3ip_mbir(DiffusionMBIR(n_steps=4, rho=1.0, lam=0.01), _prior(), y, op, cfg, **kwargs)
    assert len(spy.draws) == 4 * 3 and all(d == list(range(d[0], d[0] + 3)) for d in spy.draws)
    spy.draws.clear()
    d3ip(DDS(n_steps=4), _prior(), y, op, cfg, **kwargs)
    assert any(d != list(range(d[0], d[0] + 3)) for d in spy.draws)  # 8 slices, K = 3: random subsets


def test_d3ip_meta_decays_alpha_from_one_to_a_half_and_fine_tunes_every_slice_from_theta_vol(problem, spy):
    x, op, y = problem
    _, report = d3ip_meta(DDS(n_steps=6), _prior(), y[:3], op, AdaptConfig(n_iters=1, k=2, zeta=0),
                          generator=torch.Generator().manual_seed(0),
                          adapt_generator=torch.Generator().manual_seed(1))
    assert spy.alphas[0] == 1.0 and spy.alphas[-1] == pytest.approx(0.5) and len(spy.alphas) == 6
    assert all(a > b for a, b in zip(spy.alphas, spy.alphas[1:]))
    stage2 = spy.starts[1:]  # the first adapter is stage 1 (Reptile D3IP); then one per slice
    assert len(stage2) == 3 and all(_same(s, report.theta_vol) for s in stage2)


def test_the_loss_runs_the_samplers_data_consistency_with_its_own_cg_steps(problem):
    """``loss_cg_iters`` (``--loss-cg-iters``) changes only the CG steps of the loss's data consistency: the authors'
    D3IP for CT runs 1, so the loss sees more of the network's own misfit than after the sampler's 20."""
    from ddip.adapt.adapter import loss_step

    x, op, y = problem
    dds = DDS()
    assert loss_step(dds, AdaptConfig()) is dds  # None: as in sampling
    one = loss_step(dds, AdaptConfig(loss_cg_iters=1))
    assert one.cg_iters == 1 and dataclasses.replace(one, cg_iters=dds.cg_iters) == dds
    x0 = x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert adaptation_loss(one, x0, y, op) > 10 * adaptation_loss(dds, x0, y, op)  # measured: 500x
    mbir = loss_step(DiffusionMBIR(), AdaptConfig(loss_cg_iters=2))
    assert mbir.cg_iters == 2 and mbir.n_admm == AdaptConfig.loss_admm_iters
