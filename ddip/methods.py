"""The registry of reconstruction methods: one :class:`MethodSpec` per method, read by ``reconstruct``, the CLI's
choices, the benchmark and the docs.

A spec says how to build the method's solver step for a task, which adaptation runs on it (if any), its paper
Table 5 row, and which settings apply to it. Adding a method is one :func:`register` call (plus its algorithm in
``ddip.solvers`` / ``ddip.adapt`` and its tests); nothing else names methods.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

from ddip.adapt import AdaptConfig, d3ip, d3ip_mbir, d3ip_meta, ddip_slicewise, scd
from ddip.adapt.methods import SCD_FIXED
from ddip.errors import DdipError
from ddip.priors.schedule import T_DEFAULT
from ddip.solvers import DDNM, DDS, DPS, DiffusionMBIR
from ddip.tasks import TaskConfig

DataConsistency = Literal["dds", "ddnm", "mbir", "dps", "none"]


@dataclass(frozen=True)
class MethodSpec:
    """One reconstruction method.

    ``step(cfg, task)`` builds its solver step from a :class:`~ddip.reconstruct.ReconstructConfig` and the task (None
    for a method that does not sample, ADMM-TV). ``adapt`` is its adaptation function (``ddip.adapt``), None for the
    plain samplers; ``table5`` its (K slices, L steps, learning rate) per task. ``dc`` names its data-consistency
    step: ``"dds"`` / ``"ddnm"`` (CG, ``cg_iters`` and ``dc_variant`` apply), ``"mbir"`` (DiffusionMBIR's ADMM-TV
    along z: ``cg_iters``, the TV weight and penalty apply), ``"dps"`` (a gradient step, no CG), ``"none"``.
    """

    name: str
    summary: str
    step: Callable | None
    dc: DataConsistency
    adapt: Callable | None = None
    table5: dict[str, tuple[int, int, float]] | None = None
    tv: bool = False  # a TV term whose weight and ADMM penalty tv_lam / tv_rho set
    distributed: bool = False  # splits the volume's slices across the processes of a torchrun launch
    replayable: bool = False  # one LoRA state for the volume: further samples replay its trajectory
    fixed: dict = field(default_factory=dict)  # settings it fixes itself (SCD: SCD_FIXED), refused as options
    t_start: int | None = None  # its own T' where the config gives none (None: the schedule's full grid)
    low_start: dict[str, int] = field(default_factory=dict)  # task -> image side from which it starts at T_START_PLAIN
    low_start_lr: dict[str, float] = field(default_factory=dict)  # task -> its learning rate where it starts low

    @property
    def adapted(self) -> bool:
        return self.adapt is not None

    @property
    def takes_init(self) -> bool:
        """The initialisation (Eq. 16) is the caller's (SCD fixes its own, pure noise)."""
        return "init" not in self.fixed

    @property
    def has_cg(self) -> bool:
        return self.dc in ("dds", "ddnm", "mbir")

    @property
    def mixes_noise(self) -> bool:
        """Its DDIM update mixes fresh and predicted noise as ``noise_mix`` says (DPS has its own update)."""
        return self.step is not None and self.dc != "dps"

    @property
    def on_dds(self) -> bool:
        """Its data-consistency step is DDS's (the benchmark's ``--cg-iters`` reaches exactly these)."""
        return self.dc == "dds"


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    """Add a method (a name already taken is an error: a name means one thing)."""
    if spec.name in REGISTRY:
        raise DdipError(f"a method named {spec.name!r} is already registered")
    REGISTRY[spec.name] = spec
    return spec


def method_spec(name: str) -> MethodSpec:
    """The spec of ``name``; an unknown name is one error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise DdipError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}") from None


def names(predicate: Callable[[MethodSpec], bool] = lambda s: True) -> tuple[str, ...]:
    """The registered methods' names (in registration order) whose spec satisfies ``predicate``."""
    return tuple(n for n, s in REGISTRY.items() if predicate(s))


# -- per-task settings -----------------------------------------------------------------------------------------------
# Where Table 5's learning rate does not transfer to our priors: on CS-MRI at 50 steps lr 1e-3 makes every adapted
# method overfit the unmeasured k-space lines and collapse, 1e-4 does not (docs/diagnosis.md §4). The workable rate
# grows as the number of adapted steps falls (at 10 steps 1e-3 is the better one); `--lr` overrides.
LR_TUNED = {"csmri": 1e-4}  # task -> learning rate of every adapted method
# ADMM-TV (no prior): λ and ρ per task, tuned on the development volumes (see benchmarks/).
ADMM_TV = {"sv-ct": {"lam": 0.02, "rho": 1.0}, "mri3d": {"lam": 2e-3, "rho": 0.05},
           "csmri": {"lam": 2e-3, "rho": 0.05}}


def mbir_ct_parameters(n_views: int, *, rho: float = 0.5, lam: float = 0.01) -> dict[str, float]:
    """The authors' CT ADMM parameters rescaled for an exact adjoint.

    Their normal matrix is ``s·AᵀA`` with ``s = π / (2·n_views)``; dividing their objective by ``s`` gives the same
    minimiser with ``ρ/s`` and ``λ/s`` for the exact ``AᵀA``.
    """
    s = math.pi / (2 * n_views)
    return {"rho": rho / s, "lam": lam / s}


def mbir_parameters(cfg: TaskConfig) -> dict[str, float]:
    """ADMM ρ, λ of DiffusionMBIR per task.

    CT: the paper's ρ = 0.5, λ = 0.01 rescaled to our exact adjoint (see :func:`mbir_ct_parameters`). 3D MRI: the
    paper's ρ = 1e-3, λ = 1e-5 (8 MNI slices at 64 px: 28.78 dB against 27.96 for the ρ = 0.1, λ = 1e-3 used before;
    they once diverged, through conjugate_gradient dividing by rounding noise once converged, not through ρ).
    CS-MRI, where the paper runs no DiffusionMBIR: ρ = 0.1, λ = 1e-3. ``tv_rho`` / ``tv_lam`` override them
    (:func:`tv_parameters`).
    """
    if cfg.task == "sv-ct":
        return mbir_ct_parameters(cfg.views)
    return {"rho": 1e-3, "lam": 1e-5} if cfg.task == "mri3d" else {"rho": 0.1, "lam": 1e-3}


def tv_parameters(cfg, task: TaskConfig) -> dict[str, float]:
    """λ and ρ of a TV method: ``cfg.tv_lam`` / ``cfg.tv_rho`` where given, else the task's (ADMM_TV,
    mbir_parameters)."""
    tuned = ADMM_TV[task.task] if cfg.method == "admm-tv" else mbir_parameters(task)
    return {"lam": cfg.tv_lam or tuned["lam"], "rho": cfg.tv_rho or tuned["rho"]}


def adaptation_settings(cfg, task: TaskConfig, n_slices: int) -> dict:
    """K, L, learning rate and window ζ of an adapted method: Table 5's, the task's tuned rate (LR_TUNED; from a low
    start the spec's ``low_start_lr``), AdaptConfig's ζ (SCD: 0, every step; ZETA_LOW_START from a low start), the
    config's overrides; K at most the volume's slices (they are drawn from them)."""
    spec = method_spec(cfg.method)
    k, n_iters, lr = spec.table5[task.task]
    lr = LR_TUNED.get(task.task, lr)
    # A low start: one that leaves AdaptConfig's window no room (not even t = ζ adapts).
    start = sampling_start(cfg, task)
    low = start is not None and not AdaptConfig().adapts_at(AdaptConfig.zeta, start)
    if low:
        lr = spec.low_start_lr.get(task.task, lr)
    zeta = spec.fixed.get("zeta", cfg.zeta)
    if zeta is None:
        zeta = ZETA_LOW_START if low else AdaptConfig.zeta
    return {"k": min(cfg.k or k, n_slices), "n_iters": cfg.n_iters or n_iters, "lr": cfg.lr or lr, "zeta": zeta}


def sampling_start(cfg, task: TaskConfig) -> int | None:
    """T' of ``cfg``'s sampler on ``task``: the config's; else the method's own — its spec's ``t_start`` (DDS), or
    T_START_PLAIN on images at least as large as its spec's ``low_start`` gives for the task (the data's side,
    ``task.size``, also where ``resize`` samples on the prior's grid) — with room for as many timesteps as steps;
    None: the full grid."""
    if cfg.t_start is not None:
        return cfg.t_start
    spec = method_spec(cfg.method)
    own = spec.t_start
    if own is None and task.size >= spec.low_start.get(task.task, math.inf):
        own = T_START_PLAIN
    return None if own is None else max(own, (cfg.n_steps or 0) - 1)


# -- steps -----------------------------------------------------------------------------------------------------------
def _sampler_settings(cfg, task: TaskConfig) -> dict:
    """The DDIM-loop settings every CG sampler takes from a config (None: the step's own default; T':
    :func:`sampling_start`, where T' = T, the full grid, is the step's default)."""
    out = {}
    if cfg.noise_mix is not None:
        out["noise_mix"] = cfg.noise_mix
    if cfg.n_steps is not None:
        out["n_steps"] = cfg.n_steps
    t_start = sampling_start(cfg, task)
    if t_start is not None and t_start != T_DEFAULT:
        out["t_start"] = t_start
    if cfg.eta is not None:
        out["eta"] = cfg.eta
    if cfg.dc_variant is not None:
        out["variant"] = cfg.dc_variant
    if cfg.cg_iters is not None:
        out["cg_iters"] = cfg.cg_iters
    return out


def dds_step(cfg, task: TaskConfig) -> DDS:
    return DDS(**_sampler_settings(cfg, task))


def ddnm_step(cfg, task: TaskConfig) -> DDNM:
    return DDNM(**_sampler_settings(cfg, task))


def mbir_step(cfg, task: TaskConfig) -> DiffusionMBIR:
    carry = {} if cfg.carry_admm_state is None else {"carry_state": cfg.carry_admm_state}
    return DiffusionMBIR(**tv_parameters(cfg, task), **_sampler_settings(cfg, task), **carry)


def dps_step(cfg, task: TaskConfig) -> DPS:
    return DPS(**({"n_steps": cfg.n_steps} if cfg.n_steps else {}), **({"eta": cfg.eta} if cfg.eta is not None else {}))


# T' of the plain samplers on CG data consistency, chosen by measurement (docs/results.md, "Where sampling starts"):
# from the noised data-consistent start at t = 150 instead of pure noise DDS gains 0.8-0.9 dB on chest CT, MNI T1,
# fresh phantoms and CS-MRI. On small images the other methods keep the full grid: the adapted ones adapt on its
# noisy part (64 px: D3IP from T' = 150 lost 1.7 dB on average over chest CT, MNI T1 and phantoms; 128 px: -0.2 dB).
T_START_PLAIN = 150
# On large images the data-consistent start is good enough that MBIR and the adapted methods gain from it too: each
# spec's ``low_start`` gives, per task, the image side from which it starts at T_START_PLAIN — measured
# (docs/results.md, "Table 2 at the paper's 256 px"): chest CT: MBIR +0.3 / +0.7 / +1.6 dB over the full grid at
# 64 / 128 / 256 px (15 / 30 / 60 views; at 64 px it lost 0.4 on phantoms), D3IP +1.3 and D3IP-mbir +1.3 / +0.8
# (two seeds) at 256 px, where at 128 px D3IP lost 0.2 and D3IP-mbir gained 0.25 (noise for an adapted run);
# MNI T1, ×8, 256 px: D3IP +2.2, MBIR and D3IP-mbir -0.6 (so MRI keeps the full grid for those two).
# From that low start D3IP on 3D MRI adapts at lr 1e-3 (each spec's ``low_start_lr``: task -> rate): 256 px, MNI T1,
# ×8, 8 slices, T' 150, ζ 40: 39.36 / 38.90 dB over seeds 0 / 1, DDS 38.34 / 38.26 (+1.02 / +0.64), where Table 5's
# 1e-4 gave 38.30 (seed 0, -0.04 against DDS) and 3e-3 38.90 (seed 0).

# The adaptation window [ζ, T' - ζ] where the sampling start leaves AdaptConfig's ζ no room (T' < 2ζ): the one
# measured at T' = 150 (ζ = 40: 22 adapted steps of 50).
ZETA_LOW_START = 40

# Paper Table 5: (K slices, L optimiser steps, learning rate) per task and method.
TABLE5 = {
    "sv-ct": {"scd": (1, 10, 1e-3), "ddip": (1, 10, 1e-3), "d3ip": (6, 10, 1e-3), "d3ip-mbir": (6, 10, 1e-3),
              "d3ip-meta": (6, 10, 1e-3)},
    "mri3d": {"scd": (1, 10, 1e-5), "ddip": (1, 10, 1e-5), "d3ip": (6, 10, 1e-4), "d3ip-mbir": (6, 5, 1e-5),
              "d3ip-meta": (6, 10, 1e-5)},
    "csmri": {"scd": (1, 5, 1e-3), "ddip": (1, 5, 1e-3), "d3ip": (3, 5, 1e-3), "d3ip-mbir": (3, 5, 1e-3),
              "d3ip-meta": (3, 5, 1e-3)},
}


def _table5(name: str) -> dict[str, tuple[int, int, float]]:
    return {task: rows[name] for task, rows in TABLE5.items()}


register(MethodSpec("admm-tv", "ADMM with 3D total variation, no prior (the classical baseline)", None, "none",
                    tv=True))
register(MethodSpec("ddnm", "DDNM: null-space data consistency by CG", ddnm_step, "ddnm", distributed=True))
register(MethodSpec("dps", "DPS: a gradient step through the network, 1000 steps, per slice", dps_step, "dps"))
register(MethodSpec("dds", "DDS: proximal CG data consistency per DDIM step", dds_step, "dds", distributed=True,
                    t_start=T_START_PLAIN))
register(MethodSpec("mbir", "DiffusionMBIR: DDS with ADMM-TV across slices", mbir_step, "mbir", tv=True,
                    distributed=True, low_start={"sv-ct": 128}))
register(MethodSpec("scd", "SCD: per-slice LoRA adaptation at every step, 1 CG step in the loss, from noise",
                    dds_step, "dds", adapt=scd, table5=_table5("scd"), fixed=SCD_FIXED))
register(MethodSpec("ddip", "DDIP (Alg. 1): per-slice LoRA adaptation", dds_step, "dds", adapt=ddip_slicewise,
                    table5=_table5("ddip")))
register(MethodSpec("d3ip", "D3IP (Alg. 2): one LoRA state for the volume, K random slices per step", dds_step,
                    "dds", adapt=d3ip, table5=_table5("d3ip"), distributed=True, replayable=True,
                    low_start={"sv-ct": 256, "mri3d": 256}, low_start_lr={"mri3d": 1e-3}))
register(MethodSpec("d3ip-mbir", "D3IP with DiffusionMBIR's ADMM-TV and K neighbouring slices (Eq. 15)", mbir_step,
                    "mbir", adapt=d3ip_mbir, table5=_table5("d3ip-mbir"), tv=True, distributed=True,
                    replayable=True, low_start={"sv-ct": 256}))
register(MethodSpec("d3ip-meta", "D3IP meta (App. B): Reptile over the volume, then per-slice DDIP", dds_step, "dds",
                    adapt=d3ip_meta, table5=_table5("d3ip-meta")))

__all__ = ["ADMM_TV", "LR_TUNED", "MethodSpec", "REGISTRY", "T_START_PLAIN", "TABLE5",
           "ZETA_LOW_START", "adaptation_settings", "mbir_ct_parameters", "mbir_parameters", "method_spec", "names",
           "register", "sampling_start", "tv_parameters"]
