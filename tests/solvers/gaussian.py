"""A Gaussian prior x₀ ~ N(m, s²I), whose Tweedie estimate and posterior are closed-form."""

import torch
from torch import nn

from ddip.priors.prior import DiffusionPrior
from ddip.priors.schedule import VPSchedule


class GaussianEps(nn.Module):
    """ε(x_t, t) of the exact denoiser: x̂₀ = m + s²√ᾱ(x_t − √ᾱ m)/(ᾱ s² + 1 − ᾱ)."""

    def __init__(self, mean: float, std: float, schedule: VPSchedule, channels: int = 1):
        super().__init__()
        self.mean, self.var, self.schedule = mean, std**2, schedule
        self.config = type("Config", (), {"in_channels": channels})()

    def forward(self, x, t):
        ab = self.schedule.at(t.cpu()).to(x.dtype).to(x.device).view(-1, *([1] * (x.ndim - 1)))
        x0 = self.mean + self.var * ab.sqrt() * (x - ab.sqrt() * self.mean) / (ab * self.var + 1 - ab)
        return (x - ab.sqrt() * x0) / (1 - ab).sqrt()


def gaussian_prior(mean: float, std: float, channels: int = 1) -> DiffusionPrior:
    schedule = VPSchedule.linear()
    return DiffusionPrior(GaussianEps(mean, std, schedule, channels), schedule)


def posterior_mean(physics, y: torch.Tensor, mean: float, std: float, sigma: float) -> torch.Tensor:
    """(AᴴA/σ² + I/s²)⁻¹ (Aᴴy/σ² + m/s²) for one slice, by dense linear algebra (real image space)."""
    shape = (1, *physics.img_shape)
    n = int(torch.tensor(shape).prod())
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape[1:])
    normal = torch.stack([physics.A_adjoint(physics.A(b.unsqueeze(0))).real.flatten() for b in basis], dim=1)
    rhs = physics.A_adjoint(y).real.flatten() / sigma**2 + mean / std**2
    mu = torch.linalg.solve(normal / sigma**2 + torch.eye(n, dtype=torch.float64) / std**2, rhs)
    return mu.view(shape)
