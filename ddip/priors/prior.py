"""``DiffusionPrior``: the ε-network and the VP schedule in one object, for training and for sampling.

Images live in [0, 1] (not centred), as the paper's priors are trained; the ε parameterisation and the Tweedie
estimate are written here and nowhere else:

    x_t = √ᾱ_t · x₀ + √(1 − ᾱ_t) · ε,        x̂₀(x_t) = (x_t − √(1 − ᾱ_t) · ε_θ(x_t, t)) / √ᾱ_t
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddip.priors.schedule import VPSchedule


def _per_sample(a: Tensor, like: Tensor) -> Tensor:
    return a.to(device=like.device, dtype=like.real.dtype).view(-1, *([1] * (like.ndim - 1)))


class DiffusionPrior(nn.Module):
    """Owns the ε-network (``net(x, t).sample`` or ``net(x, t)``) and its :class:`VPSchedule`.

    ``autocast``: a lower precision (``torch.bfloat16``) for the network's own arithmetic, by ``torch.autocast`` on
    the input's device, forward and backward (adaptation); ε comes back in the input's dtype and everything outside
    the network (CG, ADMM, the DDIM update) stays in full precision. None (default) runs the network as stored.
    """

    def __init__(self, net: nn.Module, schedule: VPSchedule | None = None, *, autocast: torch.dtype | None = None):
        super().__init__()
        self.net = net
        self.schedule = schedule or VPSchedule.linear()
        self.autocast = autocast

    def with_autocast(self, dtype: torch.dtype | None) -> "DiffusionPrior":
        """The same network and schedule (shared, not copied) with another network precision."""
        return DiffusionPrior(self.net, self.schedule, autocast=dtype)

    def _timesteps(self, t: Tensor | int, batch: int, device: torch.device) -> Tensor:
        t = torch.as_tensor(t, device=device)
        return t.expand(batch) if t.ndim == 0 else t

    def eps(self, x_t: Tensor, t: Tensor | int) -> Tensor:
        """ε_θ(x_t, t); ``t`` is an integer timestep, one per sample or one for the batch."""
        timesteps = self._timesteps(t, x_t.shape[0], x_t.device)
        if self.autocast is None:  # no context at all: an enclosing autocast (training) stays in force
            out = self.net(x_t, timesteps)
        else:
            with torch.autocast(x_t.device.type, dtype=self.autocast):
                out = self.net(x_t, timesteps)
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

    def loss(self, x0: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """DDPM ε-MSE per sample ``(B,)`` with ``t ~ U{0, …, T−1}`` and ``ε ~ N(0, I)`` drawn from ``generator``."""
        t = torch.randint(0, self.schedule.T, (x0.shape[0],), generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
        noise, t_dev = noise.to(x0.device), t.to(x0.device)
        ab = _per_sample(self.schedule.at(t), x0)
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        return (self.eps(x_t, t_dev).float() - noise.float()).pow(2).flatten(1).mean(1)
