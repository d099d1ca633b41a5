"""The fast network paths (docs/gpu.md) compute the eager float32 function, within stated tolerances.

Tolerances are relative L2 errors of ε against the eager float32 network, measured on this tiny network:
channels_last changes only the summation order (≈ 1e-6), bfloat16 (autocast or cast weights) has 8 mantissa bits
(≈ 1.5e-2 measured; 3e-2 allowed), torch.compile fuses kernels (≈ 1e-6 in float32).
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ddip.adapt import LoRAConfig, inject_lora, trainable_parameters
from ddip.errors import DdipError
from ddip.priors.prior import DiffusionPrior, NetworkSpeed
from ddip.priors.train import TrainConfig, train_prior
from ddip.priors.unet import UNetConfig, build_unet

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,))
ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"float32": 1e-5, "bfloat16": 3e-2, "bfloat16-weights": 3e-2}


def _prior() -> DiffusionPrior:
    return DiffusionPrior(build_unet(TINY, seed=3).eval())


def _x(n=4, seed=0):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "bfloat16-weights"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_paths_equal_the_eager_float32_network_and_leave_it_alone(precision, channels_last):
    prior = _prior()
    before = {k: v.clone() for k, v in prior.net.state_dict().items()}
    x = _x()
    with torch.no_grad():
        ref = prior.eps(x, 700)
        fast = prior.with_speed(NetworkSpeed(precision, channels_last))
        out = fast.eps(x, 700)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    err = _rel(out, ref)
    assert err <= TOLERANCE[precision], (precision, channels_last, err)
    if precision != "float32":
        assert err > 1e-4  # the bfloat16 paths really run in bfloat16
    # the caller's prior is untouched: same weights, float32, NCHW
    for k, v in prior.net.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]) and v.is_contiguous()
    assert (fast.net is prior.net) == (precision != "bfloat16-weights" and not channels_last)


def test_unknown_precision_is_one_clear_error():
    with pytest.raises(DdipError, match="precision"):
        NetworkSpeed("float16")


def test_lora_on_cast_weights_trains_float32_parameters_with_the_autocast_gradient():
    """Adaptation on bfloat16 weights: LoRA stays float32 (AdamW's steps would vanish in bfloat16) and its gradient
    matches the bfloat16 autocast path's within bfloat16 rounding."""
    x = _x(2)
    grads = {}
    for precision in ("bfloat16", "bfloat16-weights"):
        prior = copy.deepcopy(_prior().with_speed(NetworkSpeed(precision)))
        inject_lora(prior.net, LoRAConfig(), generator=torch.Generator().manual_seed(1))
        params = trainable_parameters(prior.net)
        assert params and all(p.dtype == torch.float32 for p in params.values())
        for name, p in params.items():  # a non-zero up-projection, so that every LoRA factor gets a gradient
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
        prior.eps(x, 500).square().mean().backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in params.values()])
    assert _rel(grads["bfloat16-weights"], grads["bfloat16"]) < 0.1


@pytest.mark.slow  # compilation takes 36 s on 2 cores; --compile is a GPU option
def test_compiled_network_equals_eager_and_copies_compile_their_own():
    # the smallest network (one level, no attention): compilation time grows with the graph
    prior = DiffusionPrior(build_unet(UNetConfig(image_size=8, model_channels=32, channel_mult=(1,),
                                                 attention_resolutions=()), seed=3).eval())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    fast = prior.with_speed(NetworkSpeed(compile=True))
    with torch.no_grad():
        ref, out = prior.eps(x, 300), fast.eps(x, 300)
    assert _rel(out, ref) < 1e-5
    twin = copy.deepcopy(fast)  # a copy (reconstruct copies the prior before LoRA) holds no compiled wrapper
    assert twin._compiled is None and fast._compiled is not None
    assert twin.net is not fast.net


def test_training_with_channels_last_and_device_streams(tmp_path):
    """channels_last trains the same network as NCHW up to rounding; device random streams run and resume."""
    unet = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=())
    common = dict(unet=unet, batch_size=4, max_images=16, log_every=1, snapshot_every=0)
    a = train_prior(TrainConfig(out=str(tmp_path / "nchw"), **common), progress=False)
    b = train_prior(TrainConfig(out=str(tmp_path / "nhwc"), channels_last=True, **common), progress=False)
    assert a["images"] == b["images"] == 16
    # the same phantoms, noise and initial weights: the logged losses agree up to rounding (Adam's early steps are
    # sign-like, so the weights themselves may differ by ~lr where a gradient is near zero)
    la, lb = (np.loadtxt(tmp_path / run / "loss_log.csv", delimiter=",", skiprows=1)[:, 2] for run in ("nchw", "nhwc"))
    assert len(la) == 4 and np.allclose(la, lb, rtol=1e-4), (la, lb)
    c = train_prior(TrainConfig(out=str(tmp_path / "dev"), rng="device", **common), progress=False)
    assert c["images"] == 16
    resumed = train_prior(TrainConfig(out=str(tmp_path / "dev"), rng="device", **{**common, "max_images": 24}),
                          progress=False)
    assert resumed["images"] == 24
    with pytest.raises(DdipError, match="rng"):
        TrainConfig(out=str(tmp_path / "x"), rng="gpu")


@pytest.mark.slow  # 67 s on 2 cores (bf16 without native support); run it before spending a lent GPU
def test_gpu_benchmark_runs_at_tiny_size(tmp_path):
    """benchmarks/gpu.py end to end on the CPU at toy sizes: every section reports (the code path, not speed)."""
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--device", "cpu",
                           "--out", str(out), "--min-time", "0.01", "--train-secs", "1"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    kinds = {(r["kind"], r["variant"]) for r in report["networks"]}
    assert {("forward", "fp32"), ("forward", "bf16-weights+cl"), ("lora_fwd_bwd", "bf16-weights+cl"),
            ("train_step", "bf16-autocast")} <= kinds
    assert all(r["flop_per_image"] > 0 and r["images_per_s"] > 0 for r in report["networks"])
    fwd = {r["variant"]: r for r in report["networks"] if r["kind"] == "forward"}
    assert fwd["fp32"]["relative_error_vs_fp32"] == 0 and 1e-4 < fwd["bf16-weights+cl"]["relative_error_vs_fp32"] < 3e-2
    runs = report["reconstruction"]["runs"]
    assert {(r["method"], r["speed"]) for r in runs} == {("dds", "fp32"), ("dds", "today"), ("dds", "fast"),
                                                         ("d3ip", "today"), ("d3ip", "fast")}
    assert all(r["adapt_passes"] > 0 for r in runs if r["method"] == "d3ip")
    assert report["reconstruction"]["relative_difference"]["d3ip fast"] < 0.05
    assert set(report["reconstruction"]["d3ip_256_cubed_projection"]) == {"today", "fast"}
    assert report["training_runs"] and all(r["images"] > 0 for r in report["training_runs"])
    assert "## Reconstruction" in (out / "gpu.md").read_text()
