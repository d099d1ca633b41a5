"""One sampling loop for every diffusion inverse solver, with a hook for adaptation.

Notation (paper §2.1, App. A; VP schedule with images in [0, 1]):

=====================  ==================================================================================
``x_t``                 the diffusion state of every slice, ``(D, C, H, W)`` in the network's layout
``eps``                 ε_θ(x_t, t), the network's noise prediction
``x0_hat``              Tweedie estimate x̂₀(x_t) = (x_t − √(1−ᾱ_t)·ε) / √ᾱ_t (DiffusionPrior.tweedie)
``x0_dc``               D_θ(x_t | y): x̂₀ after the solver's data-consistency step (CG, ADMM)
``s``                   the next timestep (−1 after the last, where ᾱ = 1)
=====================  ==================================================================================

:func:`solve` owns the loop; a *step* (DDS, DDNM, DiffusionMBIR, DPS, ...) turns ``x_t`` into ``x_s``. The
``before_step`` hook runs before every step and may change the network in place (DDIP/D3IP adapt LoRA weights there);
no step knows about adaptation. A volume split across processes (:mod:`ddip.physics.sharding`) is the same loop run
on each rank's block with a :class:`~ddip.physics.sharding.ShardedPhysics`. Complex images (CS-MRI) are carried as two
real channels (real, imaginary); a prior with one channel denoises them as two independent real images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

import torch
from torch import Tensor
from tqdm import tqdm

from ddip.errors import DdipError
from ddip.physics.base import is_complex_image, pseudo_inverse
from ddip.physics.sharding import Shard, shard_of
from ddip.priors.prior import DiffusionPrior
from ddip.timing import section

NoiseMix = Literal["paper", "code", "ddim"]
NOISE_MIXES = ("paper", "code", "ddim")
Init = Literal["slerp", "independent", "noise"]
INITS = ("slerp", "independent", "noise")
MAX_BATCH = 16  # network inputs per forward pass: bounds memory whatever the number of slices


@dataclass(frozen=True)
class StepOutput:
    """What a step returns: the next state, the data-consistent estimate, and state carried to the next step."""

    x_next: Tensor
    x0_hat: Tensor
    state: dict = field(default_factory=dict)


# -- image <-> network layout --------------------------------------------------------------------------------------
def to_network_layout(image: Tensor) -> Tensor:
    """Image ``(D, 1, H, W)`` (complex allowed) -> network layout ``(D, C, H, W)`` real (C = 2 for complex)."""
    return torch.cat([image.real, image.imag], dim=1) if image.is_complex() else image


def to_image(x: Tensor, complex_image: bool) -> Tensor:
    """Inverse of :func:`to_network_layout`."""
    return torch.complex(x[:, :1], x[:, 1:2]) if complex_image else x


def predict_eps(prior: DiffusionPrior, x_t: Tensor, t: int, *, max_batch: int = MAX_BATCH) -> Tensor:
    """ε_θ(x_t, t) for a whole volume, ``max_batch`` network inputs at a time.

    When x_t has more channels than the network (complex data, real prior), each channel is denoised as a
    separate image.
    """
    d, c, h, w = x_t.shape
    c_net = prior.image_channels or c
    flat = x_t.reshape(d * c, 1, h, w) if c != c_net else x_t
    if c != c_net and c_net != 1:
        raise DdipError(f"prior has {c_net} input channels but the data needs {c}")
    with section("network_forward"):
        outs = [prior.eps(flat[i : i + max_batch], t) for i in range(0, flat.shape[0], max_batch)]
    return torch.cat(outs).reshape(d, c, h, w)


def volume_noise(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype,
                 shard: Shard | None = None) -> Tensor:
    """Standard normal noise of ``shape``; for a block of a split volume, the block of the whole volume's noise, so
    that each slice gets the noise it would get in one process."""
    if shard is None:
        return torch.randn(shape, generator=generator, dtype=dtype)
    return shard.take(torch.randn((shard.n, *shape[1:]), generator=generator, dtype=dtype))


def ddim_update(prior: DiffusionPrior, x0: Tensor, eps: Tensor, t: int, s: int, *, eta: float,
                noise_mix: NoiseMix, generator: torch.Generator | None, shard: Shard | None = None) -> Tensor:
    """x_s from the data-consistent x̂₀ and the predicted ε (paper Eq. 7).

    ``noise_mix``:
      * ``"paper"``: √(1−ᾱ_s)·(η·z + (1−η)·ε̂), Eq. (7) as printed (not variance preserving: η² + (1−η)² < 1);
      * ``"code"``: √(1−ᾱ_s)·(η·z + √(1−η²)·ε̂), the authors' released code;
      * ``"ddim"``: true DDIM with σ_s = η·√((1−ᾱ_s)/(1−ᾱ_t))·√(1−ᾱ_t/ᾱ_s) (η = 1 is DDPM ancestral sampling).
    """
    ab_t, ab_s = float(prior.schedule.at(t)), float(prior.schedule.at(s))
    if s < 0 or ab_s >= 1.0:
        return x0
    z = volume_noise(tuple(x0.shape), generator, x0.dtype, shard).to(x0.device)
    if noise_mix == "paper":
        return math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * (eta * z + (1 - eta) * eps)
    if noise_mix == "code":
        return math.sqrt(ab_s) * x0 + math.sqrt(1 - ab_s) * (eta * z + math.sqrt(1 - eta**2) * eps)
    if noise_mix == "ddim":
        sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t)) * math.sqrt(max(0.0, 1 - ab_t / ab_s))
        return math.sqrt(ab_s) * x0 + math.sqrt(max(0.0, 1 - ab_s - sigma**2)) * eps + sigma * z
    raise DdipError(f"unknown noise_mix {noise_mix!r}; choose one of {', '.join(NOISE_MIXES)}")


def slerp(a: Tensor, b: Tensor, tau: float) -> Tensor:
    """Spherical interpolation ``sin((1−τ)Ω)/sin Ω · a + sin(τΩ)/sin Ω · b`` with Ω the angle between a and b."""
    cos = float((a * b).sum() / (a.norm() * b.norm()))
    omega = math.acos(max(-1.0, min(1.0, cos)))
    if omega < 1e-6:
        return (1 - tau) * a + tau * b
    return (math.sin((1 - tau) * omega) * a + math.sin(tau * omega) * b) / math.sin(omega)


def initial_noise(shape: tuple[int, ...], *, mode: Init, generator: torch.Generator | None,
                  dtype: torch.dtype = torch.float32, shard: Shard | None = None) -> Tensor:
    """Per-slice initial noise: ``"slerp"`` (Eq. 16: ε_i = slerp(ε_first, ε_last, i/(N−1))), or independent.

    With ``shard`` (``shape`` a block of a split volume) the block of the whole volume's noise.
    """
    if shard is not None:
        return shard.take(initial_noise((shard.n, *shape[1:]), mode=mode, generator=generator, dtype=dtype))
    if mode == "slerp" and shape[0] > 1:
        first = torch.randn(shape[1:], generator=generator, dtype=dtype)
        last = torch.randn(shape[1:], generator=generator, dtype=dtype)
        n = shape[0]
        return torch.stack([slerp(first, last, i / (n - 1)) for i in range(n)])
    return torch.randn(shape, generator=generator, dtype=dtype)


def initialise(prior: DiffusionPrior, y: Tensor, physics, t_start: int, *, mode: Init,
               generator: torch.Generator | None) -> Tensor:
    """x_T' = √ᾱ_T'·A^†y + √(1−ᾱ_T')·noise (paper Eq. 16); ``mode="noise"`` drops the A^†y term."""
    x_dagger = to_network_layout(pseudo_inverse(physics, y))
    if mode not in INITS:
        raise DdipError(f"unknown init {mode!r}; choose one of {', '.join(INITS)}")
    noise = initial_noise(tuple(x_dagger.shape), mode=mode, generator=generator, dtype=x_dagger.dtype,
                          shard=shard_of(physics)).to(x_dagger.device)
    if mode == "noise":
        return noise
    ab = float(prior.schedule.at(t_start))
    return math.sqrt(ab) * x_dagger + math.sqrt(1 - ab) * noise


class Step(Protocol):
    """A solver step: ``x_t`` at timestep ``t`` -> ``x_s``. Steps hold their own hyper-parameters."""

    n_steps: int

    def __call__(self, x_t: Tensor, t: int, s: int, *, prior: DiffusionPrior, y: Tensor, physics,
                 state: dict, generator: torch.Generator | None, max_batch: int) -> StepOutput: ...


@dataclass(frozen=True)
class DataConsistencyStep:
    """Base of the samplers that correct the Tweedie estimate then take a DDIM step (DDS, DDNM, DiffusionMBIR).

    Subclasses implement :meth:`data_consistency` (in image space, differentiable: adaptation backpropagates
    through it) and may carry state across timesteps (:meth:`init_state`).
    """

    # Eq. 7 as printed at η 0.2, not the paper's η 0.85 with the authors' code's mixing: chosen by measurement over
    # η × mixing × steps on chest CT, MNI T1 and fresh phantoms, +3.2 dB for DDS at the same cost, +4.0 / +3.3 dB for
    # DDNM (docs/results.md, "Sampler settings chosen by measurement"); the paper's tables keep theirs under
    # ``--preset paper``.
    eta: float = 0.2
    noise_mix: NoiseMix = "paper"
    n_steps: int = 50
    t_start: int | None = None  # T', the first timestep (Eq. 16); None: the schedule's full grid (980 at 50 steps)

    def init_state(self, x_image: Tensor) -> dict:
        return {}

    def data_consistency(self, x0: Tensor, y: Tensor, physics, state: dict) -> tuple[Tensor, dict]:
        raise NotImplementedError

    def __call__(self, x_t: Tensor, t: int, s: int, *, prior: DiffusionPrior, y: Tensor, physics, state: dict,
                 generator: torch.Generator | None, max_batch: int = MAX_BATCH) -> StepOutput:
        complex_image = x_t.shape[1] == 2 and is_complex_image(physics, y)
        with torch.no_grad():
            eps = predict_eps(prior, x_t, t, max_batch=max_batch)
            x0 = prior.tweedie(x_t, t, eps)
            with section("data_consistency"):
                x0_dc, state = self.data_consistency(to_image(x0, complex_image), y, physics, state)
            x0_dc = to_network_layout(x0_dc)
            x_next = ddim_update(prior, x0_dc, eps, t, s, eta=self.eta, noise_mix=self.noise_mix,
                                 generator=generator, shard=shard_of(physics))
        return StepOutput(x_next, x0_dc, state)


def sampling_grid(prior: DiffusionPrior, step, n_steps: int | None = None) -> list[int]:
    """The timesteps T', …, 0 a solve with ``step`` visits: ``n_steps`` (default the step's) down from the step's
    ``t_start`` (T'; None or absent: the schedule's full grid, 980 … 0 at 50 steps)."""
    return prior.schedule.timesteps(int(n_steps or step.n_steps), t_start=getattr(step, "t_start", None)).tolist()


def solve(
    step: Step,
    prior: DiffusionPrior,
    y: Tensor,
    physics,
    *,
    generator: torch.Generator | None = None,
    n_steps: int | None = None,
    init: Init = "slerp",
    x_T: Tensor | None = None,
    start: int = 0,
    state: dict | None = None,
    max_batch: int = MAX_BATCH,
    before_step: Callable[[int, int, Tensor, dict], None] | None = None,
    callback: Callable[[int, int, StepOutput], None] | None = None,
    progress: bool = False,
    desc: str | None = None,
) -> Tensor:
    """Reconstruct every slice of ``y`` with ``step`` on the grid t = T', …, 0 (default 980, 960, …, 0).

    Args:
        step: the solver step (its ``n_steps`` is the default number of network evaluations).
        y: measurements of all slices ``(D, ...)``; ``physics`` any object with ``A`` and ``A_adjoint``.
        init: initialisation of x_T' (Eq. 16): ``"slerp"`` (paper), ``"independent"`` noise per slice (the
            authors' code), or ``"noise"`` (pure noise, no A^†y).
        x_T: a given starting state (network layout) instead of ``init``, e.g. one slice of a volume's init.
        start, state: resume before step ``start`` from ``x_T`` with the step's carried ``state`` (checkpoints).
        max_batch: network inputs per forward pass, which bounds memory whatever the number of slices.
        before_step: ``before_step(i, t, x_t, state)``, called before each step (the adaptation hook).
        callback: ``callback(i, t, output)`` after each step.
        progress, desc: a progress bar (with ETA) on stderr, labelled ``desc``.

    Returns the final data-consistent estimate in image layout ``(D, 1, H, W)`` (complex for complex images).
    """
    prior.net.eval()  # sampling is deterministic given the generator: no train-mode code paths
    timesteps = sampling_grid(prior, step, n_steps)
    complex_image = is_complex_image(physics, y)
    if start and x_T is None:
        raise DdipError("resuming at a later step needs the state x_T to resume from")
    x = initialise(prior, y, physics, timesteps[0], mode=init, generator=generator) if x_T is None else x_T
    if state is None:
        state = step.init_state(to_image(x, complex_image)) if hasattr(step, "init_state") else {}

    bar = tqdm(total=len(timesteps), initial=start, disable=not progress, unit="step", dynamic_ncols=True, desc=desc,
               leave=False)
    out = None
    for i, t in enumerate(timesteps):
        if i < start:
            continue
        s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        if before_step is not None:
            before_step(i, t, x, state)
        out = step(x, t, s, prior=prior, y=y, physics=physics, state=state, generator=generator,
                   max_batch=max_batch)
        if not bool(torch.isfinite(out.x_next).all()):
            raise DdipError(f"sampling produced NaN or Inf at step {i} (t = {t})")
        x, state = out.x_next, out.state
        if callback is not None:
            callback(i, t, out)
        bar.update(1)
        bar.set_postfix(t=t, nfe=i + 1)
    bar.close()
    if out is None:  # resumed after the last step: x is already the result
        return to_image(x, complex_image)
    return to_image(out.x0_hat, complex_image)
