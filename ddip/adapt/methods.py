"""The adaptation methods of the paper, each a call of :func:`ddip.solvers.solve` with an adaptation hook.

=================  ===================================================================================
``d3ip``            Alg. 2: one LoRA state for the volume, K random slices per optimiser step
``d3ip_mbir``       Eq. 15: K neighbouring slices, DiffusionMBIR's ADMM-TV as data consistency
``d3ip_meta``       App. B: Reptile over the D3IP trajectory gives θ_vol, then per-slice DDIP from θ_vol
``ddip``            Alg. 1: per slice, a fresh LoRA state (or carried over), K = 1
``scd``             DDIP with 1 CG step in the loss, adapting at every step, from pure noise
=================  ===================================================================================

All take a prior that already carries LoRA (:func:`ddip.adapt.inject_lora`), return the reconstruction and a
report (losses, network passes), and leave the base weights untouched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddip.adapt.adapter import AdaptConfig, VolumeAdapter
from ddip.adapt.lora import restore, snapshot
from ddip.priors.prior import DiffusionPrior
from ddip.solvers.base import Init, initialise, physics_subset, solve


@dataclass
class AdaptReport:
    """What an adapted reconstruction cost and recorded."""

    method: str
    passes_forward: int = 0  # network forward passes in sampling (images)
    passes_adapt: int = 0  # forward+backward passes in adaptation (images)
    losses: list = field(default_factory=list)
    trajectory: dict = field(default_factory=dict)
    theta_vol: dict | None = None


def d3ip(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(), *,
         generator: torch.Generator | None = None, adapt_generator: torch.Generator | None = None,
         init: Init = "slerp", max_batch: int = 16, record_trajectory: bool = False, progress: bool = False,
         method: str = "d3ip") -> tuple[Tensor, AdaptReport]:
    """D3IP (Alg. 2), or D3IP mbir / the Reptile stage of meta according to ``step`` and ``cfg``."""
    timesteps = prior.schedule.timesteps(step.n_steps).tolist()
    adapter = VolumeAdapter(prior, step, y, physics, cfg, generator=adapt_generator,
                            record_trajectory=record_trajectory,
                            n_total_adapted=sum(cfg.adapts_at(t) for t in timesteps))
    x = solve(step, prior, y, physics, generator=generator, init=init, max_batch=max_batch,
              before_step=adapter, progress=progress)
    report = AdaptReport(method, passes_forward=len(timesteps) * y.shape[0], passes_adapt=adapter.passes,
                         losses=adapter.losses, trajectory=adapter.trajectory)
    return x, report


def d3ip_mbir(step, prior, y, physics, cfg: AdaptConfig = AdaptConfig(neighbours=True), **kwargs):
    """D3IP (mbir): ``step`` is a :class:`~ddip.solvers.DiffusionMBIR`; K neighbouring slices (Eq. 15)."""
    return d3ip(step, prior, y, physics, dataclasses.replace(cfg, neighbours=True), method="d3ip-mbir", **kwargs)


def ddip(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(n_slices=1), *,
         generator: torch.Generator | None = None, adapt_generator: torch.Generator | None = None,
         init: Init = "slerp", carry_over: bool = False, start_state: dict | None = None, max_batch: int = 16,
         record_trajectory: bool = False, method: str = "ddip") -> tuple[Tensor, AdaptReport]:
    """DDIP (Alg. 1): every slice adapted on its own, from a fresh LoRA state (or the previous slice's).

    The initial state of all slices is drawn once for the volume (so the slerp of Eq. 16 spans the volume).
    """
    cfg = dataclasses.replace(cfg, n_slices=1, neighbours=False)
    fresh = snapshot(prior.net) if start_state is None else start_state
    x_T = initialise(prior, y, physics, prior.schedule.timesteps(step.n_steps)[0].item(), mode=init,
                     generator=generator)
    report = AdaptReport(method)
    slices = []
    for i in range(y.shape[0]):
        if not carry_over or i == 0:
            restore(prior.net, fresh)
        phys_i = physics_subset(physics, slice(i, i + 1))
        adapter = VolumeAdapter(prior, step, y[i : i + 1], phys_i, cfg, generator=adapt_generator,
                                record_trajectory=record_trajectory)
        slices.append(solve(step, prior, y[i : i + 1], phys_i, generator=generator, x_T=x_T[i : i + 1],
                            max_batch=max_batch, before_step=adapter))
        report.passes_forward += step.n_steps
        report.passes_adapt += adapter.passes
        report.losses.extend(adapter.losses)
        if record_trajectory:
            report.trajectory[i] = adapter.trajectory
    out = torch.cat(slices)
    return out, report


def scd(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(n_slices=1), **kwargs):
    """SCD as the paper re-implements it: DDIP with 1 CG step in the loss, every step adapted, pure-noise init."""
    cfg = dataclasses.replace(cfg, loss_cg_iters=1, horizon=None)
    kwargs.setdefault("init", "noise")
    return ddip(step, prior, y, physics, cfg, method="scd", **kwargs)


def d3ip_meta(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(), *,
              finetune: AdaptConfig | None = None, generator: torch.Generator | None = None,
              adapt_generator: torch.Generator | None = None, init: Init = "slerp", max_batch: int = 16
              ) -> tuple[Tensor, AdaptReport]:
    """D3IP (meta), App. B: Reptile D3IP (α 1.0 → 0.5) gives θ_vol; then DDIP on every slice started from θ_vol."""
    meta_cfg = dataclasses.replace(cfg, reptile=cfg.reptile or (1.0, 0.5))
    _, stage1 = d3ip(step, prior, y, physics, meta_cfg, generator=generator, adapt_generator=adapt_generator,
                     init=init, max_batch=max_batch, method="d3ip-meta")
    theta_vol = snapshot(prior.net)
    x, stage2 = ddip(step, prior, y, physics, finetune or dataclasses.replace(cfg, n_slices=1), generator=generator,
                     adapt_generator=adapt_generator, init=init, start_state=theta_vol, max_batch=max_batch,
                     method="d3ip-meta")
    report = AdaptReport("d3ip-meta", passes_forward=stage1.passes_forward + stage2.passes_forward,
                         passes_adapt=stage1.passes_adapt + stage2.passes_adapt,
                         losses=stage1.losses + stage2.losses, theta_vol=theta_vol)
    return x, report


__all__ = ["AdaptReport", "d3ip", "d3ip_meta", "d3ip_mbir", "ddip", "scd"]
