"""Posterior samples: their mean is the result, their spread is written beside it, and D3IP adapts only once."""

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from ddip.adapt import adapter as adapter_module
from ddip.cli import main
from ddip.errors import DdipError
from ddip.priors.registry import load_prior
from ddip.reconstruct import ReconstructConfig, reconstruct, reconstruct_samples
from ddip.tasks import open_measurement

STEPS = 6


def _nifti(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float64), img


def test_the_mean_of_s_samples_is_the_average_of_the_seeded_runs_and_s1_is_the_plain_run(ct_measurement,
                                                                                            tiny_prior):
    m, prior = open_measurement(ct_measurement), load_prior(tiny_prior)
    cfg = ReconstructConfig(method="dds", n_steps=STEPS, seed=3)
    plain = reconstruct(m, cfg, prior).volume
    assert torch.equal(reconstruct_samples(m, cfg, prior).volume, plain)  # S = 1: bit for bit
    res = reconstruct_samples(m, ReconstructConfig(method="dds", n_steps=STEPS, seed=3, samples=3), prior)
    runs = torch.stack([plain] + [reconstruct(m, ReconstructConfig(method="dds", n_steps=STEPS, seed=s), prior).volume
                                  for s in (4, 5)])
    assert torch.allclose(res.volume, runs.mean(0), atol=1e-6)
    assert torch.allclose(res.std, runs.std(0), atol=1e-6) and float(res.std.mean()) > 0
    assert res.report["samples"]["seeds"] == [3, 4, 5] and res.report["samples"]["adaptation"] == "none"


def test_d3ip_adapts_once_and_replays_its_lora_trajectory_for_the_other_samples(ct_measurement, tiny_prior,
                                                                               monkeypatch):
    m, prior = open_measurement(ct_measurement), load_prior(tiny_prior)
    calls = {"adapt": 0, "replay": 0}
    real_adapt, real_replay = adapter_module.VolumeAdapter.__call__, adapter_module.Replay.__call__

    def adapt(self, *a):
        calls["adapt"] += 1
        return real_adapt(self, *a)

    seen = []

    def replay(self, i, *a):
        calls["replay"] += 1
        real_replay(self, i, *a)
        if i in self.trajectory:  # the network now holds the recorded adapted weights
            state = {n: p.detach().clone() for n, p in self.prior.net.named_parameters() if p.requires_grad}
            seen.append(all(torch.equal(state[k], self.trajectory[i][k]) for k in self.trajectory[i]))

    monkeypatch.setattr(adapter_module.VolumeAdapter, "__call__", adapt)
    monkeypatch.setattr(adapter_module.Replay, "__call__", replay)
    cfg = ReconstructConfig(method="d3ip", n_steps=STEPS, k=2, n_iters=1, zeta=0, samples=3)
    res = reconstruct_samples(m, cfg, prior)
    assert calls == {"adapt": STEPS, "replay": 2 * STEPS}  # one adapted run, two replays
    assert seen and all(seen)
    assert res.report["samples"]["adaptation"] == "once, then replayed"
    # the replayed trajectory is the adapted run's: replaying it with the first seed gives the adapted volume
    first = reconstruct(m, ReconstructConfig(method="d3ip", n_steps=STEPS, k=2, n_iters=1, zeta=0), prior,
                        record_trajectory=True)
    again = reconstruct(m, ReconstructConfig(method="d3ip", n_steps=STEPS, k=2, n_iters=1, zeta=0), prior,
                        replay=first.trajectory)
    # (up to float rounding: the replay folds each LoRA state into the base weights, and this untrained toy prior's
    # values reach ~10)
    torch.testing.assert_close(again.volume, first.volume, rtol=1e-3, atol=1e-3)
    with pytest.raises(DdipError, match="trajector"):
        reconstruct(m, ReconstructConfig(method="dds", n_steps=STEPS), prior, record_trajectory=True)


def test_samples_are_refused_for_admm_tv():
    with pytest.raises(DdipError, match="deterministic"):
        ReconstructConfig(method="admm-tv", samples=2)
    with pytest.raises(DdipError, match="samples"):
        ReconstructConfig(method="dds", samples=0)


def test_the_cli_writes_the_mean_and_the_std_in_the_inputs_space_and_units(ct_measurement, tiny_prior, tmp_path):
    out = tmp_path / "run"
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", str(STEPS),
                 "--samples", "3", "--quiet", "--out", str(out)]) == 0
    mean, img = _nifti(out / "reconstruction.nii.gz")
    std, std_img = _nifti(out / "std.nii.gz")
    assert std.shape == mean.shape and np.allclose(std_img.affine, img.affine)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["report"]["nifti_units"] == "HU" and metrics["report"]["samples"]["n"] == 3
    # the std in HU is the window-unit std times the window's width (chest CT: [-1000, 1000] HU or the like)
    m = open_measurement(ct_measurement)
    lo, hi = m.record["scaling"]["window_hu"]
    res = reconstruct_samples(m, ReconstructConfig(method="dds", n_steps=STEPS, samples=3), load_prior(tiny_prior))
    assert np.allclose(std.mean(), float(res.std.mean()) * (hi - lo), rtol=1e-3)
    assert json.loads((out / "config.json").read_text())["samples"] == 3


def test_a_stopped_multi_sample_run_resumes_to_the_same_mean_and_std(ct_measurement, tiny_prior, tmp_path):
    common = ["-m", "ddip", "reconstruct", str(ct_measurement), "--method", "d3ip", "--prior", tiny_prior, "--steps",
              "8", "--k", "2", "--iters", "1", "--samples", "2", "--quiet", "--checkpoint-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, *common, "--out", str(straight)], env=env, check=True)
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([sys.executable, *common, "--out", str(stopped)], env=env, stderr=subprocess.PIPE)
    # stop it once the second sample has begun (its own checkpoint exists): the first is kept as finished
    deadline = time.time() + 300
    while not (stopped / "checkpoint.sample1.pt").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before it could be signalled"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 128 + signal.SIGTERM, proc.stderr.read().decode()
    kept = torch.load(stopped / "checkpoint.samples.pt", weights_only=True)
    assert kept["volumes"].shape[0] == 1 and kept["trajectory"]  # sample 0 and its LoRA trajectory
    subprocess.run([sys.executable, *common, "--out", str(stopped), "--resume"], env=env, check=True)
    for name in ("reconstruction.nii.gz", "std.nii.gz"):
        assert np.array_equal(_nifti(straight / name)[0], _nifti(stopped / name)[0]), name
    assert not list(stopped.glob("checkpoint*.pt"))


def test_a_result_outside_the_priors_range_is_reported_with_a_warning(ct_measurement, tiny_prior, caplog):
    from ddip.reconstruct import plausible_range

    assert plausible_range(torch.tensor([0.0, 0.5]), "dds") == {"min": 0.0, "max": 0.5, "plausible": True}
    assert not caplog.records
    assert not plausible_range(torch.tensor([-6.1, 8.3]), "d3ip")["plausible"]
    assert "left the data's plausible range" in caplog.text and "d3ip" in caplog.text
    res = reconstruct(open_measurement(ct_measurement), ReconstructConfig(method="admm-tv"))
    assert res.report["value_range"]["plausible"]


def test_the_pearson_ceiling_is_what_errors_drawn_from_the_std_map_reach(monkeypatch):
    """benchmarks/samples.py's ceiling for the |error|–std correlation: errors drawn N(0, std²) per voxel reach it
    (to sampling error), whatever the map's scale; a map with no spread has none to give."""
    bench = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")
    monkeypatch.syspath_prepend(bench)
    import samples

    g = torch.Generator().manual_seed(0)
    for spread in (0.3, 0.8):
        std = torch.exp(spread * torch.randn(400_000, generator=g, dtype=torch.float64))
        err = std * torch.randn(400_000, generator=g, dtype=torch.float64)
        drawn = float(torch.corrcoef(torch.stack([err.abs(), std]))[0, 1])
        ceiling = samples.pearson_ceiling(std)
        assert abs(drawn - ceiling) < 0.01, (spread, drawn, ceiling)
        assert samples.pearson_ceiling(7 * std) == pytest.approx(ceiling, rel=1e-9)
    assert samples.pearson_ceiling(torch.ones(10)) == 0
