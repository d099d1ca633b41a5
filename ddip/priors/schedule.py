"""The VP (DDPM) noise schedule: linear β from 1e-4 to 0.02 over T = 1000 steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ddip.errors import DdipError

T_DEFAULT = 1000  # the linear schedule's length, T of every shipped prior; a start T' = T samples the full grid


@dataclass(frozen=True)
class VPSchedule:
    """``ᾱ_t = Π_{s≤t} (1 − β_s)`` for integer ``t ∈ [0, T)`` (float64), with ``ᾱ_{−1} = 1`` by convention."""

    alpha_bar: Tensor

    @classmethod
    def linear(cls, T: int = T_DEFAULT, beta_start: float = 1e-4, beta_end: float = 2e-2) -> "VPSchedule":
        if T < 2 or not 0 < beta_start < beta_end < 1:
            raise DdipError(f"VPSchedule.linear: need T >= 2 and 0 < beta_start < beta_end < 1, got "
                            f"{T}, {beta_start}, {beta_end}")
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        return cls(torch.cumprod(1.0 - betas, dim=0))

    @property
    def T(self) -> int:
        return int(self.alpha_bar.shape[0])

    def at(self, t: Tensor | int) -> Tensor:
        """``ᾱ_t`` (float64, on ``t``'s device), with ``t = −1`` giving 1 (the last DDIM step lands on the clean
        image)."""
        t = torch.as_tensor(t, dtype=torch.long)
        padded = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar]).to(t.device)
        return padded[t + 1]

    def timesteps(self, n_steps: int = 50, t_start: int | None = None) -> Tensor:
        """Descending sampling grid of ``n_steps`` timesteps ending at 0, ``Δ`` apart: from ``Δ·(n_steps − 1)`` with
        ``Δ = T // n_steps`` (980 … 0 at 50 steps; also with ``t_start`` T), or with ``t_start`` (T' < T)
        ``Δ = t_start // (n_steps − 1)``, the largest spacing whose grid starts at or below T'."""
        if not 1 <= n_steps <= self.T:
            raise DdipError(f"n_steps must be in [1, {self.T}], got {n_steps}")
        if t_start is not None and not (isinstance(t_start, int) and n_steps - 1 <= t_start <= self.T):
            raise DdipError(f"t_start must be an integer in [n_steps − 1, T] = [{n_steps - 1}, {self.T}] (T: the full "
                            f"grid), got {t_start!r}")
        full = t_start is None or t_start == self.T
        skip = self.T // n_steps if full else max(1, t_start // max(n_steps - 1, 1))
        return torch.arange(skip * (n_steps - 1), -1, -skip, dtype=torch.long)
