"""``DiffusionPrior``: the ε-network and the VP schedule in one object, for training and for sampling.

Images live in [0, 1] (not centred), as the paper's priors are trained; the ε parameterisation and the Tweedie
estimate are written here and nowhere else:

    x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε,        x̂₀(x_t) = (x_t − √(1 − ᾱ_t) · ε_θ(x_t, t)) / √ᾱ_t
"""

from __future__ import annotations

import copy
import math
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ddip.errors import DdipError
from ddip.priors.schedule import VPSchedule

# The priors' images lie in [0, 1] (magnitudes for complex data); an estimate beyond this range has left what the
# prior knows, e.g. an adaptation that fitted a measurement the operator does not describe exactly (detector centre,
# geometry, units) through the network.
PLAUSIBLE = (-0.5, 1.5)
# ᾱ_t below which x_t is nearly pure noise (t ≳ 750 of 1000 under the linear schedule: a quarter of uniform draws)
PURE_NOISE_ALPHA_BAR = 0.003

# The network's arithmetic: float32 as stored; "bfloat16" autocasts each call (weights re-cast every call, GroupNorm
# and softmax kept in float32 by autocast); "bfloat16-weights" casts a copy of the weights once and runs the whole
# network in bfloat16 (trained LoRA parameters stay float32, see ddip.adapt.lora).
PRECISIONS = ("float32", "bfloat16", "bfloat16-weights")


@dataclass(frozen=True)
class NetworkSpeed:
    """How the network is run: precision, memory layout, compilation. Every option computes the same function
    as the eager float32 network up to rounding (tests/priors/test_speed.py states the tolerances)."""

    precision: str = "float32"
    channels_last: bool = False  # NHWC activations and weights: cuDNN's tensor-core convolutions need no transposes
    compile: bool = False  # torch.compile the network (on first use; a new input shape recompiles)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise DdipError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")


def keep_adapters_float32(net: nn.Module) -> nn.Module:
    """Put the LoRA parameters of a lower-precision network back in float32 (in place; returns ``net``): AdamW's small
    steps would vanish in bfloat16, and peft casts each branch's input to its weights and its output back."""
    for name, param in net.named_parameters():
        if "lora_" in name and param.dtype != torch.float32:
            param.data = param.data.float()
    return net


def position_grid(batch: int, height: int, width: int, *, device=None, dtype=torch.float32) -> Tensor:
    """``(batch, 2, height, width)``: each pixel's x and y in [-1, 1] across the whole image (pixel centres), the
    input of a network with position channels (Patch Diffusion, Wang et al. 2023, Sec. 3.2)."""
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) / width * 2 - 1
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])
    return grid.expand(batch, 2, height, width)


def _per_sample(a: Tensor, like: Tensor) -> Tensor:
    return a.to(device=like.device, dtype=like.real.dtype).view(-1, *([1] * (like.ndim - 1)))


class DiffusionPrior(nn.Module):
    """Owns the ε-network (``net(x, t).sample`` or ``net(x, t)``) and its :class:`VPSchedule`.

    ``autocast``: a lower precision (``torch.bfloat16``) for the network's own arithmetic, by ``torch.autocast`` on
    the input's device, forward and backward (adaptation); ε comes back in the input's dtype and everything outside
    the network (CG, ADMM, the DDIM update) stays in full precision. None (default) runs the network as stored.
    :meth:`with_speed` gives the same prior in another precision, layout or compiled (:class:`NetworkSpeed`).
    ``position_channels``: the network takes each pixel's position after the image's channels
    (``UNetConfig.position_channels``); :meth:`eps` adds them.
    """

    def __init__(self, net: nn.Module, schedule: VPSchedule | None = None, *, autocast: torch.dtype | None = None,
                 channels_last: bool = False, compile: bool = False, position_channels: bool = False):
        super().__init__()
        self.net = net
        self.position_channels = position_channels
        self.schedule = schedule or VPSchedule.linear()
        self.autocast = autocast
        self.channels_last = channels_last
        self.compile = compile
        self._compiled: tuple[nn.Module, nn.Module] | None = None  # (net, its compiled wrapper), made on first use

    def __getstate__(self) -> dict:  # copies (deepcopy, pickling) compile their own network again on first use
        state = self.__dict__.copy()
        state["_compiled"] = None
        return state

    def with_speed(self, speed: NetworkSpeed) -> "DiffusionPrior":
        """This prior run as ``speed`` says. The network is shared unless the weights change dtype or layout, in which
        case a converted copy is made: the caller's prior is never altered."""
        net = self.net
        weights = torch.bfloat16 if speed.precision == "bfloat16-weights" else None
        if weights is not None or speed.channels_last:
            net = copy.deepcopy(net)
            if weights is not None:  # nn.Module.to: diffusers' own ``to`` warns about casts it did not make itself
                net = keep_adapters_float32(nn.Module.to(net, weights))
            if speed.channels_last:
                net = net.to(memory_format=torch.channels_last)
        autocast = torch.bfloat16 if speed.precision == "bfloat16" else None
        return DiffusionPrior(net, self.schedule, autocast=autocast, channels_last=speed.channels_last,
                              compile=speed.compile, position_channels=self.position_channels)

    def _network(self) -> nn.Module:
        if not self.compile:
            return self.net
        if self._compiled is None or self._compiled[0] is not self.net:
            self._compiled = (self.net, torch.compile(self.net))
        return self._compiled[1]

    @property
    def image_channels(self) -> int | None:
        """The image channels the network denoises (2: a complex prior's real and imaginary parts), without its
        position channels; None for a network without a diffusers config."""
        channels = getattr(getattr(self.net, "config", None), "in_channels", None)
        return None if channels is None else int(channels) - 2 * self.position_channels

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype the network's weights are stored in (its inputs are cast to it); None without weights."""
        return next((p.dtype for p in self.net.parameters() if p.dtype.is_floating_point), None)

    def _timesteps(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        return t.expand(batch) if t.ndim == 0 else t

    def eps(self, x_t: Tensor, t: Tensor | int, *, position: Tensor | None = None) -> Tensor:
        """ε_θ(x_t, t); ``t`` is an integer timestep, one per sample or one for the batch. A network with position
        channels gets ``position`` (``(B, 2, H, W)``, a crop's place in its image: :func:`position_grid` cropped
        with it), by default the whole image's grid; other networks take none."""
        timesteps = self._timesteps(t, x_t.shape[0], x_t.device)
        dtype = self.dtype
        x = x_t if dtype is None else x_t.to(dtype)
        if self.position_channels:
            if position is None:
                position = position_grid(x.shape[0], *x.shape[-2:], device=x.device)
            x = torch.cat([x, position.to(x.dtype)], 1)
        elif position is not None:
            raise DdipError("this prior's network has no position channels (UNetConfig.position_channels)")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # no context at all without autocast: an enclosing autocast (training) stays in force
        ctx = nullcontext() if self.autocast is None else torch.autocast(x_t.device.type, dtype=self.autocast)
        with ctx:
            out = self._network()(x, timesteps)
        out = out.sample if hasattr(out, "sample") else out
        return out[:, : x_t.shape[1]].to(x_t.dtype)

    def tweedie(self, x_t: Tensor, t: Tensor | int, eps: Tensor | None = None) -> Tensor:
        """Tweedie estimate x̂₀ = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t (paper Eq. 4), from ``eps`` or from the network.

        ``t`` is one timestep for the batch (sampling; the scalars are exact Python floats) or one per sample.
        """
        eps = self.eps(x_t, t) if eps is None else eps
        if isinstance(t, int):
            ab = float(self.schedule.at(t))
            return (x_t - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        ab = _per_sample(self.schedule.at(self._timesteps(t, x_t.shape[0], torch.device("cpu"))), x_t)
        return (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()

    def eps_from_x0(self, x_t: Tensor, t: int, x0: Tensor) -> Tensor:
        """The ε for which :meth:`tweedie` gives ``x0`` (the inverse map, e.g. after clipping x̂₀)."""
        ab = float(self.schedule.at(t))
        return (x_t - math.sqrt(ab) * x0) / math.sqrt(1 - ab)

    def loss(self, x0: Tensor, *, generator: torch.Generator | None = None,
             min_snr_gamma: float | None = None, pure_noise_density: float = 1.0,
             position: Tensor | None = None) -> Tensor:
        """DDPM ε-MSE per sample ``(B,)`` with ``t ~ U{0, …, T−1}`` and ``ε ~ N(0, I)`` drawn from ``generator``
        (on its device; the CPU without one).

        ``min_snr_gamma`` = γ weights each sample by min(SNR_t, γ) / SNR_t, SNR_t = ᾱ_t / (1 − ᾱ_t): Min-SNR-γ
        (Hang et al. 2023) in its form for ε-prediction, which lowers the weight of the nearly clean timesteps whose
        gradients conflict with the rest; None is the plain ε-MSE. ``pure_noise_density`` < 1 draws the timesteps
        whose ᾱ_t is below ``PURE_NOISE_ALPHA_BAR`` that many times as often as the others (each still weighted as
        one sample): fewer of a step's samples go where the network has almost nothing to learn; 1 is uniform.
        ``position``: where the crops ``x0`` lie in their images, for a network with position channels (:meth:`eps`).
        """
        if not 0 < pure_noise_density <= 1:
            raise DdipError(f"pure_noise_density must lie in (0, 1], got {pure_noise_density}")
        where = None if generator is None else generator.device  # draws on the generator's device
        if pure_noise_density == 1:
            t = torch.randint(0, self.schedule.T, (x0.shape[0],), generator=generator, device=where)
        else:
            noisy = self.schedule.alpha_bar.to(where or "cpu") < PURE_NOISE_ALPHA_BAR
            density = torch.where(noisy, pure_noise_density, 1.0)
            t = torch.multinomial(density, x0.shape[0], replacement=True, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=where)
        noise, t = noise.to(x0.device), t.to(x0.device)
        ab = _per_sample(self.schedule.at(t), x0)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        mse = (self.eps(x_t, t, position=position).float() - noise.float()).pow(2).flatten(1).mean(1)
        if min_snr_gamma is None:
            return mse
        snr = (ab / (1 - ab)).flatten().float()
        return mse * snr.clamp(max=min_snr_gamma) / snr
