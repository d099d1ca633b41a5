import dataclasses

import pytest
import torch

from ddip.errors import DdipError
from ddip.priors.prior import PURE_NOISE_ALPHA_BAR, DiffusionPrior, NetworkSpeed
from ddip.priors.schedule import VPSchedule
from ddip.priors.train import TrainConfig, train_prior
from ddip.priors.unet import UNetConfig, build_unet

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=(8,))


def test_schedule_is_strictly_decreasing_with_the_reference_values():
    s = VPSchedule.linear()
    assert s.T == 1000 and s.alpha_bar.dtype == torch.float64
    assert bool((s.alpha_bar[1:] < s.alpha_bar[:-1]).all())
    for t, expected, rel in ((980, 5.90e-5, 0.01), (960, 8.74e-5, 0.01), (40, 0.9798, 1e-4), (20, 0.9937, 1e-4)):
        assert float(s.at(t)) == pytest.approx(expected, rel=rel)
    assert float(s.at(-1)) == 1.0
    assert s.timesteps(50).tolist() == list(range(980, -1, -20))
    # a shorter grid from T' = t_start: the same number of steps, spaced as widely as starts at or below T'
    assert s.timesteps(50, t_start=400).tolist() == list(range(392, -1, -8))
    assert s.timesteps(5, t_start=400).tolist() == [400, 300, 200, 100, 0]
    with pytest.raises(DdipError, match="t_start"):
        s.timesteps(50, t_start=20)  # fewer timesteps below T' than steps


def test_tweedie_estimate_inverts_the_forward_process():
    class Oracle(torch.nn.Module):  # returns the true noise, so x0 must be recovered exactly
        def forward(self, x, t):
            return self.eps

    oracle = Oracle()
    prior = DiffusionPrior(oracle)
    x0 = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    oracle.eps = torch.randn_like(x0)
    t = torch.tensor([10, 500, 980])
    ab = prior.schedule.at(t).view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * oracle.eps
    assert torch.allclose(prior.tweedie(x_t, t), x0, atol=1e-8)
    # one timestep for the batch (the sampling path), and the inverse map back to ε
    ab = float(prior.schedule.at(500))
    x_t = ab**0.5 * x0 + (1 - ab) ** 0.5 * oracle.eps
    assert torch.allclose(prior.tweedie(x_t, 500), x0, atol=1e-8)
    assert torch.allclose(prior.eps_from_x0(x_t, 500, x0), oracle.eps, atol=1e-8)


def test_bfloat16_autocast_is_close_to_float32_and_leaves_the_prior_alone():
    prior = DiffusionPrior(build_unet(TINY, seed=0))
    fast = prior.with_speed(NetworkSpeed("bfloat16"))
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ref, low = prior.eps(x, 500), fast.eps(x, 500)
    assert fast.net is prior.net and prior.autocast is None
    assert low.dtype == torch.float32 and not torch.equal(low, ref)
    assert (low - ref).norm() < 0.02 * ref.norm()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training's enclosing autocast stays in force
        assert torch.equal(prior.eps(x, 500), low)


def test_loss_falls_over_a_few_dozen_seeded_steps(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), unet=TINY, batch_size=8, lr=1e-3, max_images=8 * 60, log_every=10,
                      snapshot_every=0)
    train_prior(cfg, progress=False)
    rows = [line.split(",") for line in (tmp_path / "loss_log.csv").read_text().splitlines()[1:]]
    losses = [float(r[2]) for r in rows]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    common = dict(unet=TINY, batch_size=4, max_images=4 * 12, snapshot_every=0, log_every=4)
    train_prior(TrainConfig(out=str(tmp_path / "straight"), **common), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "max_images": 4 * 5}), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **common), progress=False)
    a = load_file(str(tmp_path / "straight" / "ema.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "ema.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DdipError, match="other settings"):
        train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "lr": 5e-4}), progress=False)


def test_power_emas_are_kept_snapshotted_and_resumed_exactly(tmp_path):
    """Each power-function EMA is its own average of the same weights, snapshotted beside the main EMA, and an
    interrupted run resumes it to the same tensors as an uninterrupted one."""
    from safetensors.torch import load_file

    common = dict(unet=TINY, batch_size=4, max_images=4 * 12, snapshot_every=16, log_every=4, ema_lengths=(0.25,))
    train_prior(TrainConfig(out=str(tmp_path / "straight"), **common), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "max_images": 4 * 5}), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **common), progress=False)
    a, b = (load_file(str(tmp_path / run / "ema-len0.25.safetensors")) for run in ("straight", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    main = load_file(str(tmp_path / "straight" / "ema.safetensors"))
    assert any(not torch.equal(a[k], main[k]) for k in a if a[k].is_floating_point())
    snaps = sorted(p.name for p in (tmp_path / "straight" / "snapshots").iterdir())
    assert snaps == ["ema-len0.25_000000016.safetensors", "ema-len0.25_000000032.safetensors",
                     "ema-len0.25_000000048.safetensors",
                     "ema_000000016.safetensors", "ema_000000032.safetensors", "ema_000000048.safetensors"]
    with pytest.raises(DdipError, match="ema_lengths"):
        TrainConfig(out="x", ema_lengths=(0.3,))  # longer than the run's plain average


def test_a_run_saved_with_the_retired_extra_ema_setting_resumes(tmp_path):
    """A run folder from before ema_lengths (its config.json has ``extra_ema_decays: []``) resumes."""
    import json

    cfg = TrainConfig(out=str(tmp_path), unet=TINY, batch_size=2, max_images=2, log_every=1)
    train_prior(cfg, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["ema_lengths"]
    (tmp_path / "config.json").write_text(json.dumps({**saved, "extra_ema_decays": []}))
    assert train_prior(TrainConfig(**{**cfg.__dict__, "max_images": 4}), progress=False)["images"] == 4
    (tmp_path / "config.json").write_text(json.dumps({**saved, "extra_ema_decays": [0.99]}))
    with pytest.raises(DdipError, match="other settings"):
        train_prior(TrainConfig(**{**cfg.__dict__, "max_images": 6}), progress=False)


def test_power_ema_averages_the_run_with_the_profile_of_its_relative_length():
    """EDM2's power-function EMA: after t steps the weights of step k count (k^(γ+1) − (k−1)^(γ+1)) / t^(γ+1)
    (the product of the rates telescopes), and that profile's standard deviation over the run, in units of the
    run's length, is the σ_rel asked for; the main EMA under its warm-up cap is such an average with σ_rel ≈ 0.09."""
    import numpy as np

    from ddip.priors.train import MAX_EMA_LENGTH, ema_rate, power_ema_gamma, power_ema_rate

    def profile(rates):  # the weight of each step's parameters in the final average
        w = np.zeros(len(rates))
        for i, beta in enumerate(rates):
            w *= beta
            w[i] = 1 - beta
        return w

    def sigma_rel(w):
        x = np.arange(1, len(w) + 1) / len(w)
        mean = (w * x).sum() / w.sum()
        return float(np.sqrt((w * (x - mean) ** 2).sum() / w.sum()))

    t = 4000
    for s in (0.05, 0.1, 0.2):
        gamma = power_ema_gamma(s)
        assert (gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)) == pytest.approx(s ** 2, rel=1e-9)
        w = profile([power_ema_rate(gamma, step) for step in range(1, t + 1)])
        k = np.arange(1, t + 1, dtype=float)
        np.testing.assert_allclose(w, (k ** (gamma + 1) - (k - 1) ** (gamma + 1)) / t ** (gamma + 1), rtol=1e-9)
        assert w.sum() == pytest.approx(1.0) and sigma_rel(w) == pytest.approx(s, rel=0.01)
    assert power_ema_gamma(MAX_EMA_LENGTH) == pytest.approx(0.0, abs=1e-9)  # the plain average
    warm_up = profile([ema_rate(0.999, step) for step in range(1, t + 1)])
    assert sigma_rel(warm_up) == pytest.approx(0.09, abs=0.005)  # the "0.999" EMA of a 4,000-step run
    with pytest.raises(DdipError, match="relative length"):
        power_ema_gamma(0.3)


def test_unet_is_configured_adm_style():
    net = build_unet(UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 2, 2), attention_resolutions=(16,)))
    cfg = net.config
    assert cfg.resnet_time_scale_shift == "scale_shift" and cfg.downsample_type == "resnet"
    assert cfg.flip_sin_to_cos and cfg.freq_shift == 0
    assert list(cfg.down_block_types) == ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "ResnetDownsampleBlock2D"]
    assert cfg.attn_norm_num_groups == 32
    assert net(torch.zeros(2, 1, 32, 32), torch.tensor([0, 999])).sample.shape == (2, 1, 32, 32)
    with pytest.raises(DdipError, match="multiple of 32"):
        UNetConfig(model_channels=48)


@pytest.mark.parametrize("settings,message", [
    ({"num_res_blocks": 0}, "num_res_blocks must be a positive integer"),
    ({"num_head_channels": 0}, "num_head_channels must be a positive integer"),
    ({"image_size": "64"}, "image_size must be a positive integer"),
    ({"channel_mult": ()}, "one positive multiplier per level"),
    ({"channel_mult": (1, 0)}, "one positive multiplier per level"),
    ({"attention_resolutions": (7,)}, "feature-map sizes of this network: 64, 32, 16, 8"),
    ({"num_head_channels": 48}, "does not divide the 64 channels"),
])
def test_a_network_that_cannot_be_built_is_refused_naming_the_setting(settings, message):
    with pytest.raises(DdipError, match=message):
        UNetConfig(**settings)
    assert UNetConfig(attention_resolutions=(64, 8)).feature_sizes == (64, 32, 16, 8)


def test_warm_start_from_weights(tmp_path):
    from safetensors.torch import load_file

    common = dict(unet=TINY, batch_size=2, snapshot_every=0)
    train_prior(TrainConfig(out=str(tmp_path / "a"), max_images=4, **common), progress=False)
    weights = str(tmp_path / "a" / "ema.safetensors")
    train_prior(TrainConfig(out=str(tmp_path / "b"), max_images=2, lr=1e-12, init_weights=weights, **common),
                progress=False)
    a, b = load_file(weights), load_file(str(tmp_path / "b" / "ema.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(DdipError, match="cannot warm-start"):
        train_prior(TrainConfig(out=str(tmp_path / "c"), max_images=2, init_weights=str(tmp_path / "a" / "config.json"),
                                **common), progress=False)


def test_complex_prior_trains_on_two_channels(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), unet=UNetConfig(image_size=16, in_channels=2, out_channels=2,
                                                          channel_mult=(1, 1), attention_resolutions=()),
                      data="ellipses-complex", batch_size=2, max_images=4, snapshot_every=0)
    train_prior(cfg, progress=False)
    from ddip.priors import load_prior

    prior = load_prior(tmp_path / "ema.safetensors")
    assert prior.eps(torch.zeros(1, 2, 16, 16), 10).shape == (1, 2, 16, 16)
    summary = train_prior(dataclasses.replace(cfg, max_images=6), progress=False)  # a complex run resumes too
    assert summary["images"] == 6
    with pytest.raises(DdipError, match="2 input and output channels"):
        TrainConfig(out=str(tmp_path), unet=TINY, data="ellipses-complex")


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_with_a_checkpoint_a_message_and_the_signals_exit_status(tmp_path, sig):
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ddip", "train-prior", "--out", str(tmp_path), "--size", "16",
                             "--mult", "1,1", "--attn", "", "--batch", "2", "--max-images", "100000",
                             "--snapshot-every", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = tmp_path / "loss_log.csv"
    deadline = time.time() + 120
    while not (log.exists() and len(log.read_text().splitlines()) > 1):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(getattr(signal, sig))
    assert proc.wait(timeout=60) == 128 + getattr(signal, sig)  # as reconstruct: 143 / 130
    err = proc.stderr.read().decode()
    assert f"{sig} received: stopped after" in err and "run the same command to continue" in err
    assert err.count("\r") < 5  # stderr is no terminal: the progress bar redraws once a minute, not every step
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert 40 <= state["images"] < 100000  # stopped early, after at least one logged block, with its state saved


def test_widening_a_real_prior_keeps_its_prediction_on_the_real_channel():
    from ddip.priors.train import widen_channels

    real = build_unet(UNetConfig(image_size=16, channel_mult=(1, 1), attention_resolutions=()), seed=0)
    wide = build_unet(UNetConfig(image_size=16, in_channels=2, out_channels=2, channel_mult=(1, 1),
                                 attention_resolutions=()), seed=1)
    wide.load_state_dict(widen_channels(real.state_dict(), wide.state_dict()))
    x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 990])
    with torch.no_grad():
        eps_real = real(x, t).sample
        eps_wide = wide(torch.cat([x, torch.zeros_like(x)], dim=1), t).sample
    assert torch.allclose(eps_wide[:, :1], eps_real, atol=1e-6)
    assert torch.equal(eps_wide[:, 1:], torch.zeros_like(eps_real))
    narrow = build_unet(UNetConfig(image_size=16, channel_mult=(1, 2), attention_resolutions=()), seed=0)
    with pytest.raises(Exception):
        wide.load_state_dict(widen_channels(narrow.state_dict(), wide.state_dict()))


CROP_NET = UNetConfig(image_size=32, model_channels=32, channel_mult=(1, 1), attention_resolutions=(16,))


def test_crop_training_trains_on_windows_of_whole_phantoms(tmp_path, monkeypatch):
    from ddip.data.phantoms import random_ellipses

    seen = []
    real_loss = DiffusionPrior.loss

    def spy(self, x0, **kw):
        seen.append(x0.detach().clone())
        return real_loss(self, x0, **kw)

    monkeypatch.setattr(DiffusionPrior, "loss", spy)
    cfg = TrainConfig(out=str(tmp_path), unet=CROP_NET, batch_size=8, crop_sizes=(32, 8, 16), max_images=60,
                      snapshot_every=0, log_every=1)
    train_prior(cfg, progress=False)
    assert cfg.crop_sizes == (8, 16, 32) and [cfg.batch_for(c) for c in (8, 16, 32)] == [8, 2, 1]
    sizes = [x.shape[-1] for x in seen]
    assert set(sizes) == {8, 16, 32} and all(x.shape[0] == cfg.batch_for(x.shape[-1]) for x in seen)
    # every crop is a window of one of the phantoms the run's stream makes: rebuild the stream's first step
    g = torch.Generator().manual_seed(cfg.seed)
    pick = cfg.crop_sizes[int(torch.randint(0, 3, (1,), generator=g))]
    assert pick == sizes[0]
    per = max(1, (32 // pick) ** 2 // 4)
    full = random_ellipses(-(-cfg.batch_for(pick) // per), 32, generator=g)
    windows = full.unfold(2, pick, 1).unfold(3, pick, 1)  # (n, 1, 33 - pick, 33 - pick, pick, pick)
    for crop in seen[0]:
        assert (windows == crop[0]).flatten(-2).all(-1).any(), "a crop that is no window of the step's phantoms"
    assert sum(x.abs().sum() > 0 for x in seen[0]) >= 1
    log = [r.split(",") for r in (tmp_path / "loss_log.csv").read_text().splitlines()[1:]]
    assert int(log[-1][1]) == sum(x.shape[0] for x in seen)  # images counts crops


def test_crop_training_resumes_exactly_and_refuses_impossible_crops(tmp_path):
    from safetensors.torch import load_file

    common = dict(unet=CROP_NET, batch_size=4, crop_sizes=(8, 16), max_images=40, snapshot_every=0, log_every=3)
    train_prior(TrainConfig(out=str(tmp_path / "straight"), **common), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "max_images": 15}), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **common), progress=False)
    a = load_file(str(tmp_path / "straight" / "ema.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DdipError, match="other settings"):
        train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "crop_sizes": (16,)}), progress=False)
    for bad in ((64,), (7,), (0,)):
        with pytest.raises(DdipError, match="crop sizes"):
            TrainConfig(out=str(tmp_path / "x"), unet=CROP_NET, crop_sizes=bad)


def test_position_channels_give_each_crop_the_place_it_was_cut_from(tmp_path, monkeypatch):
    """Patch Diffusion's position channels: each training crop comes with its pixels' positions in the whole
    phantom — the window of the step's phantoms at those positions is the crop — and the whole image's grid at
    sampling; the network sees them as two more input channels."""
    from ddip.data.phantoms import random_ellipses
    from ddip.priors.prior import position_grid

    seen = []
    real_loss = DiffusionPrior.loss

    def spy(self, x0, **kw):
        seen.append((x0.detach().clone(), kw["position"]))
        return real_loss(self, x0, **kw)

    monkeypatch.setattr(DiffusionPrior, "loss", spy)
    net = dataclasses.replace(CROP_NET, position_channels=True)
    cfg = TrainConfig(out=str(tmp_path), unet=net, batch_size=8, crop_sizes=(8, 16), max_images=40,
                      snapshot_every=0, log_every=1)
    train_prior(cfg, progress=False)
    # the first step's phantoms, rebuilt from the run's stream (position channels draw nothing from it)
    g = torch.Generator().manual_seed(cfg.seed)
    pick = cfg.crop_sizes[int(torch.randint(0, 2, (1,), generator=g))]
    crops, position = seen[0]
    per = max(1, (32 // pick) ** 2 // 4)
    full = random_ellipses(-(-cfg.batch_for(pick) // per), 32, generator=g)
    grid = position_grid(1, 32, 32)[0]
    for crop, pos in zip(crops, position):
        i = int(torch.argmin((grid[1, :, 0] - pos[1, 0, 0]).abs()))
        j = int(torch.argmin((grid[0, 0, :] - pos[0, 0, 0]).abs()))
        assert torch.equal(pos, grid[:, i:i + pick, j:j + pick])
        assert any(torch.equal(img[:, i:i + pick, j:j + pick], crop) for img in full), "crop not at its position"
    assert position.shape == (crops.shape[0], 2, pick, pick) and position.abs().max() < 1
    grid = position_grid(2, 4, 4)
    assert torch.allclose(grid[0, 0, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # x along a row
    assert torch.allclose(grid[0, 1, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))  # y down a column


def test_a_position_network_warm_started_from_a_plain_one_denoises_whole_images_as_it_did(tmp_path):
    """Warm-starting a network with position channels from a plain prior puts zeros on the new input channels, so
    it starts as the same function on whole images; saved and loaded, it knows it takes positions."""
    from ddip.priors.registry import load_prior, save_prior
    from ddip.priors.train import widen_channels

    plain = build_unet(TINY, seed=0)
    save_prior(tmp_path / "plain.safetensors", plain.state_dict(), TINY)
    cfg = dataclasses.replace(TINY, position_channels=True)
    wide = build_unet(cfg, seed=1)
    wide.load_state_dict(widen_channels(plain.state_dict(), wide.state_dict()))
    save_prior(tmp_path / "wide.safetensors", wide.state_dict(), cfg)
    a, b = load_prior(tmp_path / "plain.safetensors"), load_prior(tmp_path / "wide.safetensors")
    assert (a.image_channels, b.image_channels, b.position_channels) == (1, 1, True)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b.eps(x, 500), a.eps(x, 500), rtol=1e-5, atol=1e-6)
        with pytest.raises(DdipError, match="no position channels"):
            a.eps(x, 500, position=torch.zeros(3, 2, 16, 16))


def test_min_snr_weighting_scales_each_samples_loss_by_min_snr_gamma_over_snr():
    """Min-SNR-γ for ε-prediction: the same draws as the plain loss, each weighted by min(SNR_t, γ)/SNR_t — below 1
    only where the image is nearly clean (SNR_t > γ), exactly 1 where it is noisy."""
    prior = DiffusionPrior(build_unet(TINY, seed=0))
    x0 = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain = prior.loss(x0, generator=torch.Generator().manual_seed(0))
        weighted = prior.loss(x0, generator=torch.Generator().manual_seed(0), min_snr_gamma=5.0)
    t = torch.randint(0, prior.schedule.T, (64,), generator=torch.Generator().manual_seed(0))  # the loss's first draw
    ab = prior.schedule.at(t).double()
    snr = ab / (1 - ab)
    weight = (snr.clamp(max=5.0) / snr).float()
    assert torch.allclose(weighted, plain * weight, rtol=1e-5)
    assert bool((weight[snr > 5] < 1).all()) and bool((weight[snr <= 5] == 1).all()) and bool((snr > 5).any())
    with pytest.raises(DdipError, match="min_snr_gamma"):
        TrainConfig(out="x", min_snr_gamma=0.0)


def test_pure_noise_density_draws_the_nearly_pure_noise_timesteps_that_much_less_often(monkeypatch):
    """``pure_noise_density`` d: a timestep with ᾱ_t < PURE_NOISE_ALPHA_BAR is drawn d times as often as any other
    (each still one sample of the mean); d = 1 is the uniform draw, the same stream as before the option existed."""
    prior = DiffusionPrior(build_unet(TINY, seed=0))
    drawn = []
    monkeypatch.setattr(prior, "eps", lambda x_t, t, **_: drawn.append(t) or torch.zeros_like(x_t))
    x0 = torch.zeros(4000, 1, 4, 4)
    noisy = prior.schedule.alpha_bar < PURE_NOISE_ALPHA_BAR
    share = float(noisy.double().mean())
    assert 0.2 < share < 0.3  # about a quarter of the linear schedule's timesteps
    prior.loss(x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(drawn[-1], torch.randint(0, prior.schedule.T, (4000,), generator=torch.Generator().manual_seed(0)))
    for d in (0.25, 0.5):
        prior.loss(x0, generator=torch.Generator().manual_seed(0), pure_noise_density=d)
        expected = d * share / (d * share + 1 - share)
        observed = float(noisy[drawn[-1]].double().mean())
        assert abs(observed - expected) < 4 * (expected * (1 - expected) / 4000) ** 0.5, (d, observed, expected)
    with pytest.raises(DdipError, match="pure_noise_density"):
        TrainConfig(out="x", pure_noise_density=0.0)
