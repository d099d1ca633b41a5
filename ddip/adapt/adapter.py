"""The adaptation hook: fit the LoRA parameters to the measurements before a sampling step (paper Eq. 11/13).

At an adapted timestep t (inside the horizon [ζ, T' − ζ]) the hook runs L AdamW steps on

    ℒ(θ) = mean |y_K − A · DC(x̂₀(x_t,K; θ))|²                                        (Alg. 1 L5, Alg. 2 L6–7)

over K slices of the volume (K = 1 and a single slice for DDIP), where DC is the sampler's own data-consistency
step — CG for DDS/DDNM, ADMM-TV along z for DiffusionMBIR — with gradients flowing through it. The sampling step
that follows then uses the adapted network for every slice. The hook plugs into :func:`ddip.solvers.solve` as
``before_step``; no sampler knows about it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ddip.adapt.lora import (has_lora_dropout, load_merged, lora_base_weights, merge_lora, restore, snapshot,
                             trainable_parameters)
from ddip.errors import DdipError
from ddip.io import atomic_path, magnitude
from ddip.physics.base import is_complex_image, physics_subset
from ddip.physics.sharding import Shard
from ddip.priors.prior import PLAUSIBLE, DiffusionPrior
from ddip.solvers.base import predict_eps, sampling_grid, to_image
from ddip.timing import section

log = logging.getLogger("ddip.adapt")


PAPER_ZETA = 40  # the paper's adaptation window (Alg. 1/2; --preset paper)


@dataclass(frozen=True)
class AdaptConfig:
    """Hyper-parameters of one adaptation method (paper Table 5; where the authors' code differs, its choice is an
    option)."""

    lr: float = 1e-3
    n_iters: int = 10  # L: optimiser steps per adapted timestep
    k: int = 6  # K: slices per optimiser step (D3IP); 1 for DDIP/SCD
    # ζ: adapt for ζ <= t <= T' − ζ, T' the first timestep (Alg. 1/2); 0: every step. 300, not the paper's 40
    # (PAPER_ZETA, in --preset paper), chosen by measurement with the default sampler (Eq. 7 at η 0.2): D3IP on chest
    # CT 30.84 / 30.84 dB against 29.70 / 30.53 with 40, on the MNI T1 (3D MRI x8) 28.18 / 28.68 against 24.59 at
    # seed 0 — late-step adaptation at that sampler overfits — and at 40 % of the adapted steps (docs/results.md)
    zeta: int = 300
    loss_cg_iters: int | None = None  # CG steps of DC inside the loss (None: as in sampling; SCD: 1)
    loss_admm_iters: int = 1  # ADMM iterations of the MBIR DC inside the loss (the code uses 1)
    weight_decay: float = 0.01  # AdamW's default
    neighbours: bool = False  # K contiguous slices (D3IP mbir, Eq. 15)
    reptile: tuple[float, float] | None = None  # D3IP meta: α decays linearly from the first to the second value
    chunk: int = 6  # slices per forward/backward; K larger than this is reached by gradient accumulation
    # Stop an adaptation that runs away (not in the paper): when the data-consistent estimate of the K slices, once
    # in the prior's plausible range, leaves it, the last optimiser step is undone, the learning rate halved for the
    # rest of the run, and this timestep adapts no further (benchmarks/results/mismatch.json measures why).
    range_guard: bool = True

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.n_iters < 1 or self.k < 1 or self.chunk < 1:
            raise DdipError("adaptation needs lr > 0, n_iters >= 1, k >= 1 and chunk >= 1")
        if isinstance(self.zeta, bool) or not isinstance(self.zeta, int) or self.zeta < 0:
            raise DdipError(f"adaptation window: zeta must be an integer >= 0 (0: every step), got {self.zeta!r}")

    def adapts_at(self, t: int, t_start: int) -> bool:
        """Whether timestep ``t`` of a schedule starting at ``t_start`` (T') lies in the window [ζ, T' − ζ]."""
        return self.zeta <= t <= t_start - self.zeta


def loss_step(step, cfg: AdaptConfig):
    """The sampler's step with the data-consistency effort of the adaptation loss."""
    changes = {}
    if cfg.loss_cg_iters is not None and hasattr(step, "cg_iters"):
        changes["cg_iters"] = cfg.loss_cg_iters
    if hasattr(step, "n_admm"):
        changes["n_admm"] = cfg.loss_admm_iters
    return dataclasses.replace(step, **changes) if changes else step


def network_estimate(prior: DiffusionPrior, x_t: Tensor, t: int, y: Tensor, physics) -> Tensor:
    """x̂₀(x_t; θ) in image layout (complex for complex images), differentiable in the network's parameters."""
    complex_image = x_t.shape[1] == 2 and is_complex_image(physics, y)
    eps = predict_eps(prior, x_t, t, max_batch=x_t.shape[0])
    return to_image(prior.tweedie(x_t, t, eps), complex_image)


def adaptation_loss(step, x0: Tensor, y: Tensor, physics, extent: list | None = None) -> Tensor:
    """ℒ = mean |y − A·DC(x̂₀)|² (Alg. 1 L5, Alg. 2 L6–7), DC being ``step``'s own data consistency.

    Differentiable in ``x0`` through the data-consistency step (CG or ADMM unrolled). ``extent``, if given, receives
    the (min, max) of DC(x̂₀) (magnitudes for complex images).
    """
    with section("data_consistency"):
        x0_dc, _ = step.data_consistency(x0, y, physics, {})
        if extent is not None:
            v = magnitude(x0_dc.detach())
            extent.append((float(v.min()), float(v.max())))
        return (physics.A(x0_dc) - y).abs().pow(2).mean()


def adaptation_backward(prior: DiffusionPrior, step, x_t: Tensor, t: int, y: Tensor, physics,
                        weight: float, extent: list | None = None) -> float:
    """Backpropagate ``weight · ℒ(x̂₀(x_t; θ))`` into the LoRA parameters; returns the weighted loss.

    The chain rule is split at x̂₀ (through the data-consistency step first, then through the network), which gives
    the same gradients as one ``backward`` and lets each part be timed on its own.
    """
    x0 = network_estimate(prior, x_t, t, y, physics)
    x0_leaf = x0.detach().requires_grad_(True)
    loss = adaptation_loss(step, x0_leaf, y, physics, extent=extent) * weight
    with section("data_consistency_backward"):
        loss.backward()
    with section("network_backward"):
        x0.backward(x0_leaf.grad)
    return float(loss.detach())


@dataclass
class VolumeAdapter:
    """``before_step`` hook adapting one LoRA state to (a subset of) the volume's measurements.

    Keeps a record of the losses, of the network passes it costs, and (optionally) of the trainable state after each
    adapted step, so that sampling can be replayed without adapting (:class:`Replay`).

    With ``shard`` (the volume split across processes, :mod:`~ddip.physics.sharding`) ``x_t`` is this rank's block
    while ``y`` and ``physics`` are the whole volume's: the K slices are drawn from the same generator on every rank,
    their states assembled on every rank, the chunks of ``cfg.chunk`` slices dealt round-robin to the ranks, and the
    LoRA gradient (and the loss) summed over the ranks before the optimiser step, so every rank holds the same LoRA
    state and takes the single-process step.
    """

    prior: DiffusionPrior
    step: object
    y: Tensor
    physics: object
    cfg: AdaptConfig
    generator: torch.Generator | None = None
    record_trajectory: bool = False
    losses: list[tuple[int, float]] = field(default_factory=list)
    trajectory: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    passes: int = 0  # network forward+backward passes, counted in images
    timesteps: list[int] | None = None  # the sampling grid (default: the step's own); sets T' and the window
    n_total_adapted: int = field(init=False, default=0)  # adapted timesteps in the run (Reptile's α schedule)
    shard: Shard | None = None  # x_t is one block of a volume split across processes
    rollbacks: list[tuple[int, int, str]] = field(default_factory=list)  # (step, t, why) of each undone update
    _optimizer: torch.optim.Optimizer | None = None
    _n_adapted: int = 0
    _lr_scale: float = 1.0  # halved at each rollback, for the rest of the run
    _before_last_step: dict[str, Tensor] | None = None  # the LoRA state the last optimiser step started from
    _guard_armed: bool = False  # the range guard acts once an estimate has been in range (an untrained net never is)

    def __post_init__(self) -> None:
        if self.timesteps is None:
            self.timesteps = sampling_grid(self.prior, self.step)
        self._t_start = self.timesteps[0]
        self.n_total_adapted = sum(self.cfg.adapts_at(t, self._t_start) for t in self.timesteps)
        if not self.n_total_adapted:
            log.warning("no timestep of %d-step sampling (%d … %d) lies in the adaptation window [ζ, T' − ζ] with "
                        "ζ = %s: nothing adapts, the result is the unadapted sampler's (lower zeta; 0 adapts at every step)",
                        len(self.timesteps), self._t_start, self.timesteps[-1], self.cfg.zeta)
        self._dc_step = loss_step(self.step, self.cfg)
        if not trainable_parameters(self.prior.net):
            raise DdipError("the prior has no trainable parameters: inject LoRA first (ddip.adapt.inject_lora)")

    def _draw(self, n_total: int) -> Tensor:
        k = min(self.cfg.k, n_total)
        if self.cfg.neighbours:
            start = int(torch.randint(0, n_total - k + 1, (1,), generator=self.generator))
            return torch.arange(start, start + k)
        return torch.randperm(n_total, generator=self.generator)[:k].sort().values

    def __call__(self, i: int, t: int, x_t: Tensor, state: dict) -> None:
        if not self.cfg.adapts_at(t, self._t_start):
            return
        net = self.prior.net
        params = list(trainable_parameters(net).values())
        # AdamW starts afresh at every adapted timestep (the authors' code); new K slices every optimiser step
        self._optimizer = torch.optim.AdamW(params, lr=self.cfg.lr * self._lr_scale, weight_decay=self.cfg.weight_decay)
        before = snapshot(net) if self.cfg.reptile is not None else None
        x_t = x_t.detach()
        n_total = x_t.shape[0] if self.shard is None else self.shard.n
        # Train mode only matters for LoRA dropout; otherwise stay in eval mode so the adapted function is exactly
        # the one sampling evaluates (attention kernels differ by ~1e-6 between modes).
        net.train(has_lora_dropout(net))
        for _ in range(self.cfg.n_iters):
            index = self._draw(n_total)
            self._optimizer.zero_grad(set_to_none=True)
            good = snapshot(net)
            x_k = x_t[index] if self.shard is None else self.shard.gather_rows(x_t, index)
            total, extent = 0.0, ([] if self.cfg.range_guard else None)  # (min, max) of each chunk's estimate
            for c, chunk in enumerate(index.split(self.cfg.chunk)):
                self.passes += chunk.numel()
                if self.shard is not None and c % self.shard.world != self.shard.rank:
                    continue  # another rank's chunk
                weight = chunk.numel() / index.numel()
                rows = slice(c * self.cfg.chunk, c * self.cfg.chunk + chunk.numel())
                sub = chunk if not self.cfg.neighbours else slice(int(chunk[0]), int(chunk[-1]) + 1)
                total += adaptation_backward(self.prior, self._dc_step, x_k[rows], t, self.y[sub],
                                             physics_subset(self.physics, sub), weight, extent=extent)
            outside = float(any(not (PLAUSIBLE[0] <= lo and hi <= PLAUSIBLE[1]) for lo, hi in extent or ()))
            if self.shard is not None:
                total, outside = self._sum_over_ranks(params, total, outside)
            if self.cfg.range_guard and not outside:
                self._guard_armed = True
            elif self.cfg.range_guard and self._guard_armed:
                # the estimate was in range and has left it: undo the step that led here, adapt no further now
                self._roll_back(self._before_last_step, i, t, "its data-consistent estimate left the prior's range")
                self._before_last_step = None
                break
            if self._finite(total, params):
                self._before_last_step = good
                self._optimizer.step()
            if not self._finite(total, params, check_grads=False):
                self._roll_back(good, i, t, "non-finite loss or gradient")
                continue
            self.losses.append((t, total))
        net.eval()
        if before is not None:
            self._reptile_interpolate(before)
        self._n_adapted += 1
        if self.record_trajectory:
            self.trajectory[i] = snapshot(net)

    def _sum_over_ranks(self, params: list, total: float, outside: float) -> tuple[float, float]:
        """All-reduce the LoRA gradients (one flat vector), the loss and the out-of-range flags: every rank then
        steps (or rolls back) identically."""
        flat = torch.cat([torch.zeros_like(p).flatten() if p.grad is None else p.grad.flatten() for p in params]
                         + [torch.tensor([total, outside], dtype=params[0].dtype, device=params[0].device)])
        flat = self.shard.sum(flat, kind="lora_gradient")
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        return float(flat[-2]), float(flat[-1])

    @staticmethod
    def _finite(loss: float, params: list, check_grads: bool = True) -> bool:
        if not math.isfinite(loss):
            return False
        tensors = [p.grad for p in params if p.grad is not None] if check_grads else [p.detach() for p in params]
        # one host-device synchronisation for all tensors (not one per tensor: hundreds per step on a GPU)
        return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    def _roll_back(self, good: dict[str, Tensor] | None, i: int, t: int, why: str) -> None:
        """Restore the last good LoRA state (if given) and halve the learning rate for the rest of the run."""
        if good is not None:
            restore(self.prior.net, good)
        self._lr_scale *= 0.5
        for group in self._optimizer.param_groups:
            group["lr"] *= 0.5
        self.rollbacks.append((i, t, why))
        log.warning("adaptation at step %d (t = %d): %s; LoRA rolled back, lr halved to %g", i, t, why,
                    self.cfg.lr * self._lr_scale)

    def state_dict(self) -> dict:
        """Everything needed to continue adapting bit-exactly (for resumable reconstructions)."""
        return {"lora": snapshot(self.prior.net),
                "generator": None if self.generator is None else self.generator.get_state(),
                "passes": self.passes, "n_adapted": self._n_adapted, "lr_scale": self._lr_scale,
                "before_last_step": self._before_last_step, "guard_armed": self._guard_armed,
                "rollbacks": [list(r) for r in self.rollbacks],
                "losses": torch.tensor([[float(t), v] for t, v in self.losses], dtype=torch.float64)}

    def load_state_dict(self, state: dict) -> None:
        restore(self.prior.net, state["lora"])
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
        self.passes, self._n_adapted = int(state["passes"]), int(state["n_adapted"])
        # checkpoints written before the range guard carry none of its state
        self._lr_scale = float(state.get("lr_scale", 1.0))
        self._before_last_step = state.get("before_last_step")
        self._guard_armed = bool(state.get("guard_armed", False))
        self.rollbacks = [(int(i), int(t), str(why)) for i, t, why in state.get("rollbacks", [])]
        self.losses = [(int(t), float(v)) for t, v in state["losses"].tolist()]

    def reptile_alpha(self) -> float:
        """α_n of the current adapted step: linear from ``reptile[0]`` (first) to ``reptile[1]`` (last) (App. B)."""
        a0, a1 = self.cfg.reptile
        frac = min(self._n_adapted / max(self.n_total_adapted - 1, 1), 1.0)
        return a0 + (a1 - a0) * frac

    def _reptile_interpolate(self, before: dict[str, Tensor]) -> None:
        """θ ← θ_t + α_n(θ̃ − θ_t): Reptile's step towards the adapted state θ̃ (App. B)."""
        alpha = self.reptile_alpha()
        after = snapshot(self.prior.net)
        restore(self.prior.net, {k: before[k] + alpha * (after[k] - before[k]) for k in before})


@dataclass
class Replay:
    """``before_step`` hook that loads a recorded trajectory instead of adapting (paper App. E).

    Each state is folded into the base weights (:func:`~ddip.adapt.lora.load_merged`), so a replayed sample costs
    the plain sampler's network passes; the network it is given keeps the last state merged (a throwaway copy).
    """

    prior: DiffusionPrior
    trajectory: dict[int, dict[str, Tensor]]
    _last: int | None = None
    _base: dict[str, Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._base = lora_base_weights(self.prior.net)
        merge_lora(self.prior.net)  # the state it is given (freshly injected: B = 0, so W stays W₀)

    def __call__(self, i: int, t: int, x_t: Tensor, state: dict) -> None:
        if i in self.trajectory:
            load_merged(self.prior.net, self.trajectory[i], self._base)
            self._last = i

    def state_dict(self) -> dict:
        """The last replayed step (the trajectory itself is given again when a replayed run resumes)."""
        return {"last": self._last}

    def load_state_dict(self, state: dict) -> None:
        """A resumed replay starts from the LoRA state it had reached."""
        self._last = state.get("last")
        if self._last is not None:
            load_merged(self.prior.net, self.trajectory[self._last], self._base)


def save_trajectory(path, trajectory: dict[int, dict[str, Tensor]]) -> None:
    """Write a LoRA trajectory as one safetensors file (keys ``step/param``)."""
    flat = {f"{i:04d}/{name}": v.contiguous() for i, state in trajectory.items() for name, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp))


def load_trajectory(path) -> dict[int, dict[str, Tensor]]:
    out: dict[int, dict[str, Tensor]] = {}
    for key, v in load_file(str(path)).items():
        step, name = key.split("/", 1)
        out.setdefault(int(step), {})[name] = v
    return out
