"""Reconstruct a measurement with any method: the one entry point the CLI, the demo and the benchmark share."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field, fields

import psutil
import torch
from torch import Tensor

from ddip import distributed
from ddip.adapt import AdaptConfig, LoRAConfig, Replay, count_parameters, inject_lora
from ddip.adapt.adapter import PAPER_ZETA
from ddip.adapt.methods import AdaptReport
from ddip.checkpoint import resumable_solve
from ddip.devices import resolve_device
from ddip.errors import DdipError, check_seed
from ddip.io import magnitude
from ddip.methods import adaptation_settings, method_spec, names, tv_parameters
from ddip.physics import Resampled
from ddip.physics.base import pseudo_inverse
from ddip.physics.sharding import Shard, split
from ddip.priors.prior import PLAUSIBLE, NetworkSpeed
from ddip.priors.schedule import T_DEFAULT
from ddip.solvers import admm_tv_reconstruct
from ddip.solvers.base import INITS, MAX_BATCH, NOISE_MIXES
from ddip.solvers.dds import DC_VARIANTS, PAPER_CG_ITERS
from ddip.tasks import Measurement, TaskConfig
from ddip.timing import Timings

log = logging.getLogger("ddip.reconstruct")

NORMALISE = ("auto", "off")
# The data's intensity (the robust maximum of |A^† y|, see intensity_scale) is left alone within this factor range of
# the prior's [0, 1]; outside it, "auto" divides y by it and multiplies the result back. Simulated data sit near 1.
INTENSITY_RANGE = (0.1, 10.0)


def intensity_scale(y: Tensor, physics) -> float:
    """The data's intensity in image units: the 99.5th percentile of |A^† y| (FBP, zero-filled IFFT, ...).

    A percentile rather than the maximum, so that a few hot pixels of noise or streaks do not set it. Computed on at
    most 10^6 evenly spaced voxels.
    """
    a = pseudo_inverse(physics, y).abs().flatten().float()
    a = a[:: max(1, a.numel() // 1_000_000)]
    return float(torch.quantile(a, 0.995))


def adaptation_chunk(max_batch: int, k: int, world: int = 1) -> int:
    """Slices per forward/backward pass in adaptation: at most ``max_batch`` and ``AdaptConfig.chunk``, and with P
    processes at most ⌈K/P⌉ so that the K slices of an optimiser step are shared out to the ranks (each rank one chunk).

    The chunk is also the scope of the loss's CG inner products, so a P-process run equals the one-process run
    whose ``--max-batch`` is this chunk (with one process and the defaults it is min(K, 6): the paper's K slices
    in one batch).
    """
    return max(1, min(max_batch, AdaptConfig.chunk, -(-k // world)))


# Named sets of sampling settings (``--preset``). "paper": the paper's sampling (App. A) — 50 DDIM steps, η 0.85 with
# the authors' code's noise mixing (with which the paper's tables were made) and M = 5 CG steps — for DDS and the
# adapted methods on it; DDNM and MBIR take η and the mixing and keep their own CG counts (30, 5 × 5), MBIR keeps its
# ADMM state across timesteps; DPS keeps all its own (1000 DDPM steps): those are the paper's.
PRESETS: dict[str, dict] = {"paper": {"n_steps": 50, "t_start": T_DEFAULT, "eta": 0.85, "noise_mix": "code",
                                      "cg_iters": PAPER_CG_ITERS}}


def preset_settings(name: str | None, method: str) -> dict:
    """The ReconstructConfig fields that preset ``name`` (None: none) sets for ``method``: only fields it takes."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise DdipError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    spec = method_spec(method)
    if not spec.mixes_noise:  # ADMM-TV: no sampler; DPS: its own DDPM update, the paper's
        return {}
    paper = PRESETS[name]
    # DDS and the adapted methods on it take all of it; DDNM and MBIR η and the mixing (MBIR: its ADMM state kept)
    out = dict(paper) if spec.on_dds else {"t_start": paper["t_start"], "noise_mix": paper["noise_mix"],
                                           "eta": paper["eta"],
                                           **({"carry_admm_state": True} if spec.dc == "mbir" else {})}
    if spec.adapted and "zeta" not in spec.fixed:  # the paper's adaptation window (SCD fixes its own)
        out["zeta"] = PAPER_ZETA
    return out


def with_preset(name: str | None, method: str, settings: dict) -> dict:
    """``settings`` (ReconstructConfig fields) with preset ``name``'s values where they are missing or None."""
    preset = preset_settings(name, method)
    return {**settings, **{key: value for key, value in preset.items() if settings.get(key) is None}}


@dataclass(frozen=True)
class ReconstructConfig:
    """Settings of one reconstruction (defaults: the paper's; ``None`` means the per-task default).

    The CLI takes its defaults from here; the defaults themselves come from the solver and adaptation configs.
    """

    method: str
    n_steps: int | None = None  # network evaluations (the step's own: 50; DPS 1000)
    t_start: int | None = None  # T', the sampling grid's first timestep (None: the method's own; T: the full grid)
    seed: int = 0
    samples: int = 1  # posterior samples (seeds seed, seed + 1, ...): the result is their mean (reconstruct_samples)
    max_batch: int = MAX_BATCH  # network inputs per forward pass
    init: str = "slerp"
    noise_mix: str | None = None  # DDIM noise mixing (None: the step's own, DataConsistencyStep's; DPS its own)
    eta: float | None = None  # DDIM stochasticity η of the sampling step (None: the step's own; DPS 1)
    k: int | None = None  # K: adaptation slices per optimiser step (None: Table 5)
    n_iters: int | None = None  # L: optimiser steps per adapted timestep (None: Table 5)
    lr: float | None = None
    lora_rank: int = LoRAConfig.rank
    train_biases: bool = LoRAConfig.train_biases
    zeta: int | None = None  # adaptation window [ζ, T' − ζ], 0 adapts at every step (None: AdaptConfig's)
    range_guard: bool = AdaptConfig.range_guard  # undo adaptation steps that take the estimate out of range
    loss_cg_iters: int | None = None
    dc_variant: str | None = None  # CG data consistency: None = the method's own (DDS proximal, DDNM normal)
    cg_iters: int | None = None  # CG steps per data-consistency solve; None: the method's own (DDS 20, DDNM 30, MBIR 5)
    # TV weight λ and ADMM penalty ρ of the methods with a TV term (ADMM-TV, DiffusionMBIR, D3IP-mbir); None: the
    # task's tuned values (ADMM_TV, mbir_parameters), which suit data in the prior's [0, 1] range
    tv_lam: float | None = None
    tv_rho: float | None = None
    carry_admm_state: bool | None = None  # MBIR steps: keep ADMM's z, u across timesteps (None: the step's own, no)
    precision: str = NetworkSpeed.precision  # the network's arithmetic (ddip.priors.prior.PRECISIONS)
    channels_last: bool = NetworkSpeed.channels_last  # NHWC network (GPU tensor cores; docs/gpu.md)
    compile: bool = NetworkSpeed.compile  # torch.compile the network (docs/gpu.md)
    resize: bool = False  # reconstruct on the prior's grid when the data's differs (physics.Resampled)
    normalise: str = "auto"  # "auto": rescale data whose intensity is far from the prior's [0, 1] (undone on output)

    @property
    def speed(self) -> NetworkSpeed:
        return NetworkSpeed(self.precision, self.channels_last, self.compile)

    def __post_init__(self) -> None:
        spec = method_spec(self.method)  # an unknown name is an error listing the registered ones
        if self.init not in INITS:
            raise DdipError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.noise_mix not in (None, *NOISE_MIXES):
            raise DdipError(f"unknown noise_mix {self.noise_mix!r}; choose one of {', '.join(NOISE_MIXES)}")
        if self.dc_variant not in (None, *DC_VARIANTS):
            raise DdipError(f"unknown dc_variant {self.dc_variant!r}; choose one of {', '.join(DC_VARIANTS)}")
        if self.dc_variant is not None and spec.dc not in ("dds", "ddnm"):
            raise DdipError(f"dc_variant applies to the CG samplers (DDS, DDNM and the adapted methods on DDS), "
                            f"not to {self.method}")
        if self.cg_iters is not None and not spec.has_cg:
            raise DdipError(f"cg_iters applies to the samplers with a CG data-consistency step, not to {self.method}")
        if self.cg_iters is not None and (isinstance(self.cg_iters, bool) or self.cg_iters < 1):
            raise DdipError(f"cg_iters must be >= 1, got {self.cg_iters}")
        for name in ("tv_lam", "tv_rho"):
            if getattr(self, name) is not None and not spec.tv:
                raise DdipError(f"{name} applies to the methods with a TV term ({', '.join(names(lambda s: s.tv))}), "
                                f"not to "
                                f"{self.method}")
        if self.carry_admm_state is not None and spec.dc != "mbir":
            raise DdipError(f"carry_admm_state applies to the methods on DiffusionMBIR's step "
                            f"({', '.join(names(lambda s: s.dc == 'mbir'))}), not to {self.method}")
        # options the method has no use for or sets itself, refused when given away from their defaults
        unused = ("n_steps", "t_start", "init", "noise_mix", "max_batch", "precision", "channels_last", "compile") \
            if spec.step is None else () if spec.mixes_noise else ("noise_mix", "t_start")
        unused += tuple(spec.fixed)  # what the method fixes itself (SCD: noise init, every step, 1 CG)
        defaults = {f.name: f.default for f in fields(self)}
        ignored = [name for name in unused if getattr(self, name) != defaults[name]]
        if ignored:
            raise DdipError(f"{', '.join(ignored)}: {self.method} does not use {'it' if len(ignored) == 1 else 'them'} "
                            f"(it has no such setting or fixes its own); leave {'it' if len(ignored) == 1 else 'them'} "
                            f"at the default")
        given = [name for name, default in (("k", None), ("n_iters", None), ("lr", None), ("zeta", None),
                                            ("loss_cg_iters", None), ("lora_rank", LoRAConfig.rank),
                                            ("train_biases", LoRAConfig.train_biases),
                                            ("range_guard", AdaptConfig.range_guard))
                 if getattr(self, name) != default]
        if given and not spec.adapted:
            raise DdipError(f"{', '.join(given)} set the adaptation, which {self.method} does not do; they apply to "
                            f"{', '.join(names(lambda s: s.adapted))}")
        if self.normalise not in NORMALISE:
            raise DdipError(f"unknown normalise {self.normalise!r}; choose one of {', '.join(NORMALISE)}")
        self.speed  # checks the precision
        if self.max_batch < 1 or (self.n_steps is not None and self.n_steps < 1):
            raise DdipError("max_batch and n_steps must be >= 1")
        if self.k is not None and self.k < 1 or self.n_iters is not None and self.n_iters < 1:
            raise DdipError("k and n_iters must be >= 1")
        for name in ("lora_rank", "loss_cg_iters"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise DdipError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "tv_lam", "tv_rho"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise DdipError(f"{name} must be a positive finite number, got {value!r}")
        check_seed(self.seed, "reconstruct")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise DdipError(f"samples must be a positive integer, got {self.samples!r}")
        if self.samples > 1 and spec.step is None:
            raise DdipError(f"{self.method} is deterministic: one reconstruction is all it gives; samples apply to "
                            f"the diffusion methods")
        check_seed(self.seed + self.samples - 1, "reconstruct (the last sample's seed)")
        if self.eta is not None:
            if spec.step is None:
                raise DdipError(f"eta sets the sampling step, which {self.method} does not take")
            if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
                raise DdipError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: DDPM-like), got {self.eta!r}")
        if self.t_start is not None and (isinstance(self.t_start, bool) or not isinstance(self.t_start, int)
                                         or not 1 <= self.t_start <= T_DEFAULT):
            raise DdipError(f"t_start must be an integer timestep in [1, {T_DEFAULT}] ({T_DEFAULT}: the full grid), "
                            f"got {self.t_start!r}")
        if self.zeta is not None and (isinstance(self.zeta, bool) or not isinstance(self.zeta, int) or self.zeta < 0):
            raise DdipError(f"zeta must be an integer >= 0 (0: adapt at every step), got {self.zeta!r}")


@dataclass
class Result:
    volume: Tensor
    wall_time_s: float
    peak_memory_mb: float
    report: dict = field(default_factory=dict)
    std: Tensor | None = None  # the samples' standard deviation per voxel (reconstruct_samples with S > 1)
    trajectory: dict | None = None  # the LoRA state after each adapted step (record_trajectory)
    samples: Tensor | None = None  # the S sample volumes, stacked (reconstruct_samples with keep_samples)


class _PeakMemory:
    """Peak resident memory of this process during a block (a 5 ms polling thread; CUDA: allocator peak)."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return self.peak / 2**20


# the ReconstructConfig fields whose effect resolved_settings records (the value that ran, whoever chose it)
RESOLVED_FIELDS = ("n_steps", "t_start", "eta", "noise_mix", "cg_iters", "carry_admm_state", "k", "n_iters", "lr", "zeta",
                   "tv_lam", "tv_rho")


def resolved_settings(cfg: ReconstructConfig, task: TaskConfig, n_slices: int) -> dict:
    """What a run of ``cfg`` on ``task`` actually uses where ``cfg`` leaves the choice to the method (``None``): the
    sampling step's settings, the adaptation's K, L and learning rate, the TV weights — recorded with every result."""
    spec = method_spec(cfg.method)
    out: dict = {}
    if spec.step is not None:
        step = spec.step(cfg, task)
        out["sampler"] = {name: getattr(step, name, None) for name in ("n_steps", "eta", "noise_mix", "cg_iters")}
        if hasattr(step, "carry_state"):  # MBIR's steps: ADMM's z, u kept across timesteps or not
            out["sampler"]["carry_state"] = step.carry_state
        if getattr(step, "t_start", None) is not None:  # recorded when given, so that earlier runs keep their keys
            out["sampler"]["t_start"] = step.t_start
    if spec.adapted:
        out["adaptation"] = adaptation_settings(cfg, task, n_slices)
    if spec.tv:
        out["tv"] = tv_parameters(cfg, task)
    return out


@dataclass
class _Prepared:
    """A reconstruction ready to run: the data on the device in the prior's units, the operator on the prior's grid,
    this process's shard of the slices, and the report so far."""

    spec: object  # the method's MethodSpec
    device: torch.device
    y: Tensor
    physics: object
    prior: object
    shard: Shard | None
    factor: float  # the measurements were divided by it (normalise="auto") and the result is multiplied back
    far: bool  # the data's intensity lies outside INTENSITY_RANGE
    checkpointer: object
    report: dict


def _prepare(m: Measurement, cfg: ReconstructConfig, prior, device, checkpointer) -> _Prepared:
    """Check the method against the process group and the prior; move, resample and normalise the data."""
    spec = method_spec(cfg.method)
    device = resolve_device(device)
    y, physics = m.y.to(device), m.physics
    report: dict = {"method": cfg.method, "task": m.config.task, "device": str(device)}
    rank, world = distributed.world()
    shard = None
    if world > 1:  # under torchrun: this rank samples its block of slices (ddip.physics.sharding)
        if not spec.distributed:
            raise DdipError(f"method {cfg.method!r} runs in one process; under torchrun use one of "
                            f"{', '.join(names(lambda s: s.distributed))}")
        shard = Shard.even(y.shape[0], rank, world)
        report.update(world_size=world, slices_per_rank=shard.sizes)
        if checkpointer is not None:
            checkpointer = checkpointer.sibling(f"rank{rank}of{world}")
    if spec.step is not None and prior is None:
        raise DdipError(f"method {cfg.method!r} needs a prior (--prior)")
    if prior is not None:
        size = int(prior.net.config.sample_size)
        if size != m.config.size:
            if not cfg.resize:
                raise DdipError(f"the prior's image size is {size} but the data are {m.config.size} px: pass "
                                f"--resize to reconstruct on the prior's grid, or simulate with --size {size}")

            physics = Resampled(physics, size)
            report["resized_from"] = size
        prior = prior.to(device).with_speed(cfg.speed)
    scale = intensity_scale(y, physics)
    far = scale > 0 and not INTENSITY_RANGE[0] <= scale <= INTENSITY_RANGE[1]
    factor = scale if far and cfg.normalise == "auto" else 1.0
    if factor != 1.0:
        log.warning("the data's intensity is %.3g times the prior's range [0, 1]: measurements divided by %.3g for "
                    "the reconstruction and the result multiplied back (normalise='off' keeps them as they are)",
                    scale, scale)
        y = y / factor
    elif far:
        log.warning("the data's intensity is %.3g times the prior's range [0, 1] and normalise is off: expect a poor "
                    "reconstruction", scale)
    report.update(intensity_scale=scale, normalised_by=factor)
    return _Prepared(spec, device, y, physics, prior, shard, factor, far, checkpointer, report)


def _run(p: _Prepared, cfg: ReconstructConfig, task: TaskConfig, *, progress: bool, record_trajectory: bool,
         replay: dict | None) -> tuple[Tensor, dict | None]:
    """Sample (or, for ADMM-TV, solve): the volume in the prior's units and grid, and the LoRA trajectory if any.
    Adds the method's counts (network passes, adaptation losses and rollbacks) to ``p.report``."""
    spec, y, physics, shard = p.spec, p.y, p.physics, p.shard
    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    if spec.step is None:  # ADMM-TV, the one method without a network (and nothing to resume)
        return admm_tv_reconstruct(y, physics, **tv_parameters(cfg, task)), None
    persist = p.checkpointer
    resume = None if persist is None else persist.load()
    step = spec.step(cfg, task)
    if not spec.adapted:
        y_run, phys_run = split(shard, y, physics)
        x = resumable_solve(step, p.prior, y_run, phys_run, generator=generator, persist=persist, resume=resume,
                            init=cfg.init, max_batch=cfg.max_batch, progress=progress, desc=cfg.method)
        p.report["network_forward_passes"] = step.n_steps * y.shape[0]
        return (x if shard is None else shard.gather_volume(x)), None
    acfg = AdaptConfig(**adaptation_settings(cfg, task, y.shape[0]), loss_cg_iters=cfg.loss_cg_iters,
                       range_guard=cfg.range_guard,
                       chunk=adaptation_chunk(cfg.max_batch, cfg.k or spec.table5[task.task][0],
                                              distributed.world()[1]))
    prior = copy.deepcopy(p.prior)  # the caller's prior stays free of LoRA layers
    lora_layers = inject_lora(prior.net, LoRAConfig(rank=cfg.lora_rank, train_biases=cfg.train_biases),
                              generator=torch.Generator().manual_seed(cfg.seed + 1))
    if replay is not None:
        x = resumable_solve(step, prior, y, physics, generator=generator, persist=persist, resume=resume,
                            adapter=Replay(prior, replay), init=cfg.init, max_batch=cfg.max_batch,
                            progress=progress, desc=f"{cfg.method} (replay)")
        rep = AdaptReport(cfg.method, passes_forward=step.n_steps * y.shape[0])
    else:
        kwargs = dict(generator=generator, adapt_generator=torch.Generator().manual_seed(cfg.seed + 2),
                      max_batch=cfg.max_batch, persist=persist, resume=resume, progress=progress)
        if spec.takes_init:
            kwargs["init"] = cfg.init
        if shard is not None:
            kwargs["shard"] = shard
        if record_trajectory:
            kwargs["record_trajectory"] = True
        x, rep = spec.adapt(step, prior, y, physics, acfg, **kwargs)
    p.report.update({"network_forward_passes": rep.passes_forward, "network_adapt_passes": rep.passes_adapt,
                     "lora_layers": len(lora_layers), "adapted_parameters": count_parameters(prior.net)["trainable"],
                     "adapt": dataclasses.asdict(acfg),
                     "loss_first": rep.losses[0][1] if rep.losses else None,
                     "loss_last": rep.losses[-1][1] if rep.losses else None,
                     "adapt_rollbacks": [{"step": i, "t": t, "why": why} for i, t, why in rep.rollbacks]})
    return x, rep.trajectory or None


def _finish(p: _Prepared, x: Tensor, method: str) -> Tensor:
    """The volume on the data's grid and in the data's units, its value range checked."""
    if p.shard is not None:
        p.report["communication_bytes"] = dict(p.shard.traffic)  # what this rank sent into collectives, by kind
    if hasattr(p.physics, "to_data_grid"):
        x = p.physics.to_data_grid(x)
    # (data left far from the prior's scale by normalise="off" have been warned about in _prepare)
    p.report["value_range"] = plausible_range(x, method) if p.factor != 1.0 or not p.far else None
    if p.factor != 1.0:
        x = x * p.factor
    if not bool(torch.isfinite(torch.view_as_real(x) if x.is_complex() else x).all()):
        raise DdipError(f"{method} produced NaN or Inf values")
    return x.detach().cpu()


def reconstruct(m: Measurement, cfg: ReconstructConfig, prior=None, *, device: str | torch.device = "cpu",
                progress: bool = False, checkpointer=None, record_trajectory: bool = False,
                replay: dict | None = None) -> Result:
    """Run ``cfg.method`` on measurement ``m``; returns the volume (image layout, on the CPU) and its costs.

    With a :class:`~ddip.checkpoint.Checkpointer` the run saves its whole state every few steps and, if the
    checkpoint already exists, resumes from it to the same result an uninterrupted run gives.
    ``record_trajectory`` (D3IP, D3IP-mbir) returns the LoRA state after each adapted step in
    ``Result.trajectory``; ``replay`` (such a trajectory) samples with it instead of adapting (paper App. E).
    """
    spec = method_spec(cfg.method)
    if (record_trajectory or replay is not None) and not spec.replayable:
        raise DdipError(f"LoRA trajectories are recorded and replayed for {', '.join(names(lambda s: s.replayable))}, "
                        f"not {cfg.method}")
    p = _prepare(m, cfg, prior, device, checkpointer)
    p.report["resolved"] = resolved_settings(cfg, m.config, m.y.shape[0])
    with _PeakMemory(p.device) as mem, Timings() as timings:
        t0 = time.perf_counter()
        x, trajectory = _run(p, cfg, m.config, progress=progress, record_trajectory=record_trajectory, replay=replay)
        x = _finish(p, x, cfg.method)
        wall = time.perf_counter() - t0
    p.report["time_breakdown_s"] = timings.as_dict(total=wall)
    return Result(x, wall, mem.mb, p.report, trajectory=trajectory)


def plausible_range(x: Tensor, method: str) -> dict:
    """The result's value range in the prior's units, with a warning when it leaves :data:`PLAUSIBLE`."""
    v = magnitude(x)
    lo, hi = float(v.min()), float(v.max())
    inside = PLAUSIBLE[0] <= lo and hi <= PLAUSIBLE[1]
    if not inside:
        log.warning("%s's result spans [%.3g, %.3g] where the prior's images lie in [0, 1]: it has left the data's "
                    "plausible range (the operator may not fit the data: detector centre, geometry, units; compare "
                    "with dds, or lower --lr for an adapted method)", method, lo, hi)
    return {"min": lo, "max": hi, "plausible": inside}


def reconstruct_samples(m: Measurement, cfg: ReconstructConfig, prior=None, *, device: str | torch.device = "cpu",
                        progress: bool = False, checkpointer=None, keep_samples: bool = False) -> Result:
    """``cfg.samples`` posterior samples of ``cfg.method``: their mean as ``Result.volume``, their standard deviation
    per voxel as ``Result.std``, and the spread in the report.

    Sample j runs with seed ``cfg.seed + j``, so sample 0 is :func:`reconstruct`'s volume and ``samples=1`` returns
    exactly its volume. D3IP and D3IP-mbir adapt once: the further samples replay the first one's LoRA trajectory with fresh
    noise (S samples cost one adaptation and S − 1 plain runs); the per-slice methods (SCD, DDIP, D3IP-meta) adapt
    anew for each sample. With a checkpointer each sample resumes from its own checkpoint and finished samples are
    kept (``<checkpoint>.samples``), so a stopped run continues where it stopped.
    """
    samples = cfg.samples
    if samples == 1:
        return reconstruct(m, cfg, prior, device=device, progress=progress, checkpointer=checkpointer)
    if distributed.world()[1] > 1:
        raise DdipError("several posterior samples run in one process; under torchrun use one sample")
    spec = method_spec(cfg.method)
    replays = spec.replayable
    store = None if checkpointer is None else checkpointer.sibling("samples")
    saved = None if store is None else store.load()
    volumes = [] if saved is None else list(saved["volumes"])
    trajectory = None if saved is None else saved["trajectory"] or None
    report = None if saved is None else json.loads(saved["report"])
    walls = [] if saved is None else list(saved["walls"].tolist())
    peak = 0.0 if saved is None else float(saved["peak"])
    for j in range(len(volumes), samples):
        ck = checkpointer if j == 0 or checkpointer is None else checkpointer.sibling(f"sample{j}")
        r = reconstruct(m, dataclasses.replace(cfg, seed=cfg.seed + j, samples=1), prior, device=device, progress=progress,
                        checkpointer=ck, record_trajectory=replays and j == 0,
                        replay=trajectory if replays and j > 0 else None)
        volumes.append(r.volume)
        walls.append(r.wall_time_s)
        peak = max(peak, r.peak_memory_mb)
        if j == 0:
            report, trajectory = r.report, r.trajectory
        if store is not None and j < samples - 1:
            store.save({"volumes": torch.stack(volumes), "trajectory": trajectory or {}, "report": json.dumps(report),
                        "walls": torch.tensor(walls, dtype=torch.float64), "peak": peak})
    stack = torch.stack(volumes)
    mean = stack.mean(0)
    std = (stack - mean).abs().pow(2).sum(0).div(samples - 1).sqrt()  # real also for complex samples
    report = {**report, "samples": {"n": samples, "seeds": [cfg.seed + j for j in range(samples)],
                                    "adaptation": ("once, then replayed" if replays else
                                                   "one per sample" if spec.adapted else "none"),
                                    "wall_time_per_sample_s": walls, "std_mean": float(std.mean()),
                                    "std_max": float(std.max())}}
    return Result(mean, sum(walls), peak, report, std=std, samples=stack if keep_samples else None)
