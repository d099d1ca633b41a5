"""The adaptation methods of the paper, each a call of :func:`ddip.solvers.solve` with an adaptation hook.

=================  ===================================================================================
``d3ip``            Alg. 2: one LoRA state for the volume, K random slices per optimiser step
``d3ip_mbir``       Eq. 15: K neighbouring slices, DiffusionMBIR's ADMM-TV as data consistency
``d3ip_meta``       App. B: Reptile over the D3IP trajectory gives θ_vol, then per-slice DDIP from θ_vol
``ddip_slicewise``  Alg. 1 (DDIP): per slice, a fresh LoRA state (or carried over), K = 1
``scd``             DDIP with 1 CG step in the loss, adapting at every step, from pure noise
=================  ===================================================================================

All take a prior that already carries LoRA (:func:`ddip.adapt.inject_lora`), return the reconstruction and a
report (losses, network passes), and leave the base weights untouched. Persistence is a hook like adaptation: a
method hands ``persist`` (:data:`ddip.checkpoint.Persist`) to its solves, wrapped by :func:`~ddip.checkpoint.nested`
when its own loop has state, and continues from the ``resume`` payload it is given; it never touches files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddip.adapt.adapter import AdaptConfig, VolumeAdapter
from ddip.adapt.lora import restore, snapshot
from ddip.checkpoint import Persist, nested, resumable_solve
from ddip.physics.base import physics_subset
from ddip.physics.sharding import Shard, split
from ddip.priors.prior import DiffusionPrior
from ddip.solvers.base import MAX_BATCH, Init, initialise, sampling_grid


@dataclass
class AdaptReport:
    """What an adapted reconstruction cost and recorded."""

    method: str
    passes_forward: int = 0  # network forward passes in sampling (images)
    passes_adapt: int = 0  # forward+backward passes in adaptation (images)
    losses: list = field(default_factory=list)
    trajectory: dict = field(default_factory=dict)
    theta_vol: dict | None = None
    rollbacks: list = field(default_factory=list)  # (step, t, why) of each adaptation update undone


def d3ip(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(), *,
         generator: torch.Generator, adapt_generator: torch.Generator,
         init: Init = "slerp", max_batch: int = MAX_BATCH, record_trajectory: bool = False, progress: bool = False,
         persist: Persist | None = None, resume: dict | None = None, method: str = "d3ip",
         shard: Shard | None = None) -> tuple[Tensor, AdaptReport]:
    """D3IP (Alg. 2), or D3IP mbir / the Reptile stage of meta according to ``step`` and ``cfg``.

    ``shard``: run as one of the ranks of a process group (``torchrun``), each sampling its block of slices and all
    sharing one LoRA state (:mod:`~ddip.physics.sharding`); every rank passes the whole ``y`` and gets the whole
    volume back. With the same generators the result is the single-process one up to the order of floating-point sums.
    """
    adapter = VolumeAdapter(prior, step, y, physics, cfg, generator=adapt_generator,
                            record_trajectory=record_trajectory, shard=shard)
    y_run, physics_run = split(shard, y, physics)
    x = resumable_solve(step, prior, y_run, physics_run, generator=generator, persist=persist, resume=resume,
                        adapter=adapter, init=init, max_batch=max_batch, progress=progress, desc=method)
    if shard is not None:
        x = shard.gather_volume(x)
    report = AdaptReport(method, passes_forward=len(adapter.timesteps) * y.shape[0], passes_adapt=adapter.passes,
                         losses=adapter.losses, trajectory=adapter.trajectory, rollbacks=adapter.rollbacks)
    return x, report


def d3ip_mbir(step, prior, y, physics, cfg: AdaptConfig = AdaptConfig(neighbours=True), **kwargs):
    """D3IP (mbir): ``step`` is a :class:`~ddip.solvers.DiffusionMBIR`; K neighbouring slices (Eq. 15)."""
    return d3ip(step, prior, y, physics, dataclasses.replace(cfg, neighbours=True), method="d3ip-mbir", **kwargs)


def ddip_slicewise(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(k=1), *,
         generator: torch.Generator, adapt_generator: torch.Generator,
         init: Init = "slerp", carry_over: bool = False, start_state: dict | None = None, max_batch: int = MAX_BATCH,
         record_trajectory: bool = False, persist: Persist | None = None, resume: dict | None = None,
         method: str = "ddip", progress: bool = False) -> tuple[Tensor, AdaptReport]:
    """DDIP (Alg. 1): every slice adapted on its own, from a fresh LoRA state (or the previous slice's).

    The initial state of all slices is drawn once for the volume (so the slerp of Eq. 16 spans the volume).
    Its persistence payload holds the finished slices, the volume's initial state and the current slice's sampling
    state (``inner``).
    """
    cfg = dataclasses.replace(cfg, k=1, neighbours=False)
    fresh = snapshot(prior.net) if start_state is None else start_state
    if resume is not None:
        x_T, first = resume["x_T"].to(y.device), int(resume["slice"])
        slices = list(resume["done"].to(y.device).split(1)) if resume["done"].numel() else []
    else:
        x_T = initialise(prior, y, physics, sampling_grid(prior, step)[0], mode=init,
                         generator=generator)
        first, slices = 0, []
    report = AdaptReport(method)
    for i in range(first, y.shape[0]):
        if not carry_over or i == 0:
            restore(prior.net, fresh)
        phys_i = physics_subset(physics, slice(i, i + 1))
        adapter = VolumeAdapter(prior, step, y[i : i + 1], phys_i, cfg, generator=adapt_generator,
                                record_trajectory=record_trajectory)
        inner = nested(persist, {"slice": i, "done": torch.cat(slices) if slices else torch.zeros(0), "x_T": x_T})
        slices.append(resumable_solve(step, prior, y[i : i + 1], phys_i, generator=generator, persist=inner,
                                      resume=resume["inner"] if resume is not None and i == first else None,
                                      adapter=adapter, x_T=x_T[i : i + 1], max_batch=max_batch, progress=progress,
                                      desc=f"{method} slice {i + 1}/{y.shape[0]}"))
        report.passes_forward += step.n_steps
        report.passes_adapt += adapter.passes
        report.losses.extend(adapter.losses)
        report.rollbacks.extend(adapter.rollbacks)
        if record_trajectory:
            report.trajectory[i] = adapter.trajectory
    out = torch.cat(slices)
    return out, report


#: What SCD fixes itself, as the paper re-implements it: 1 CG step in the loss, every step adapted (ζ 0), pure-noise
#: initialisation. The registry refuses these options for it and records them as what ran.
SCD_FIXED = {"loss_cg_iters": 1, "zeta": 0, "init": "noise"}


def scd(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(k=1), **kwargs):
    """SCD as the paper re-implements it: DDIP with :data:`SCD_FIXED`'s settings."""
    cfg = dataclasses.replace(cfg, loss_cg_iters=SCD_FIXED["loss_cg_iters"], zeta=SCD_FIXED["zeta"])
    return ddip_slicewise(step, prior, y, physics, cfg, method="scd", **{**kwargs, "init": SCD_FIXED["init"]})


def d3ip_meta(step, prior: DiffusionPrior, y: Tensor, physics, cfg: AdaptConfig = AdaptConfig(), *,
              finetune: AdaptConfig | None = None, generator: torch.Generator, adapt_generator: torch.Generator,
              init: Init = "slerp", max_batch: int = MAX_BATCH, persist: Persist | None = None,
              resume: dict | None = None, progress: bool = False) -> tuple[Tensor, AdaptReport]:
    """D3IP (meta), App. B: Reptile D3IP (α 1.0 → 0.5) gives θ_vol; then DDIP on every slice started from θ_vol.

    Its persistence payload names the stage it was saved in; the fine-tuning stage's also holds θ_vol and stage 1's
    counts, so a run resumed there does not repeat stage 1.
    """
    meta_cfg = dataclasses.replace(cfg, reptile=cfg.reptile or (1.0, 0.5))
    if resume is None or resume["stage"] == "reptile":
        _, stage1 = d3ip(step, prior, y, physics, meta_cfg, generator=generator, adapt_generator=adapt_generator,
                         init=init, max_batch=max_batch, method="d3ip-meta", progress=progress,
                         persist=nested(persist, {"stage": "reptile"}),
                         resume=None if resume is None else resume["inner"])
        theta_vol = snapshot(prior.net)
        resume = None
    else:
        theta_vol = resume["theta_vol"]
        stage1 = AdaptReport("d3ip-meta", passes_forward=int(resume["passes_forward"]),
                             passes_adapt=int(resume["passes_adapt"]))
        resume = resume["inner"]
    done = {"stage": "finetune", "theta_vol": theta_vol, "passes_forward": stage1.passes_forward,
            "passes_adapt": stage1.passes_adapt}
    x, stage2 = ddip_slicewise(step, prior, y, physics, finetune or dataclasses.replace(cfg, k=1), generator=generator,
                     adapt_generator=adapt_generator, init=init, start_state=theta_vol, max_batch=max_batch,
                     method="d3ip-meta", progress=progress, persist=nested(persist, done), resume=resume)
    report = AdaptReport("d3ip-meta", passes_forward=stage1.passes_forward + stage2.passes_forward,
                         passes_adapt=stage1.passes_adapt + stage2.passes_adapt,
                         losses=stage1.losses + stage2.losses, theta_vol=theta_vol,
                         rollbacks=stage1.rollbacks + stage2.rollbacks)
    return x, report


__all__ = ["AdaptReport", "SCD_FIXED", "d3ip", "d3ip_meta", "d3ip_mbir", "ddip_slicewise", "scd"]
