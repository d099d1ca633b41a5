"""The quality gate a prior must pass before it ships, and a grid of its unconditional samples.

Gate: on in-distribution data — fresh ELLIPSES phantoms from a seed the training stream never
uses — at the prior's size with 15 CT views (the paper's 60 views at 256 px, scaled) and noise σ = 0.01, DDS with the
prior must beat the least-squares solution by at least 3 dB PSNR. The least-squares baseline is CG on the normal
equations from zero, reported at its best iteration count among several (early stopping is its regulariser), so the
comparison is against the strongest version of it.

The gate's sampler is DDS (proximal CG, γ = 5, the paper's M = 5 CG steps, kept fixed so that gates of different
versions compare) with 200 steps and η = 0.2 instead of the paper's 50 steps and η = 0.85: the gate measures the
prior, so it uses the best data-consistent sampler we found, chosen on a validation seed (``VALIDATION_SEED``) that
the gate never reports (the candidates and their PSNR: ddip/priors/weights/README.md).
The report also gives DDS at the paper's settings (``dds_paper_psnr``) so the two can be compared.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from ddip.data.phantoms import random_ellipses
from ddip.devices import resolve_device
from ddip.errors import DdipError
from ddip.io import pyplot, read_safetensors, save_figure
from ddip.metrics import psnr
from ddip.physics import add_noise, conjugate_gradient, sparse_view_ct
from ddip.priors.prior import DiffusionPrior
from ddip.priors.registry import load_prior
from ddip.solvers import DDS, solve
from ddip.solvers.base import ddim_update, predict_eps
from ddip.solvers.dds import PAPER_CG_ITERS
from ddip.tasks import TaskConfig, paper_views, simulate

GATE_SEED = 2_147_483_647  # the training streams use seeds 0 … 1e6 + 3; this one is never used for training
# phantoms on which samplers and training settings are chosen, so that the gate's own ones stay held out
VALIDATION_SEED = GATE_SEED - 2
GATE_MARGIN_DB = 3.0
GATE_IMAGES = 8  # fresh phantoms per evaluation
GATE_STEPS, GATE_ETA = 200, 0.2  # the gate's DDS sampler (module docstring: how it was chosen)
GATE_NOISE_MIX = "paper"  # the mixing the gate's sampler was chosen and every shipped prior's gate made with


def least_squares_psnr(op, y: Tensor, x: Tensor, iters: tuple[int, ...] = (1, 2, 3, 5, 10, 20, 40, 80)
                       ) -> dict[int, float]:
    """Mean PSNR of CG on the normal equations after each number of iterations in ``iters`` (cumulative: CG restarts
    from the previous count's iterate at each reported count, so a value is that of restarted CG, not of one
    uninterrupted run — close once CG has converged, slightly different early on)."""
    rhs = op.A_adjoint(y)
    out, x_k, done = {}, torch.zeros_like(rhs), 0
    for n in sorted(iters):
        x_k = conjugate_gradient(op.normal, rhs, x_k, n_iter=n - done, reduce="slice")
        done = n
        out[n] = float(psnr(x_k, x).mean())
    return out


def quality_gate(prior: DiffusionPrior, *, n_images: int = GATE_IMAGES, n_views: int | None = None, sigma: float = 0.01,
                 n_steps: int = GATE_STEPS, eta: float = GATE_ETA, t_start: int | None = None,
                 cg_iters: int = PAPER_CG_ITERS, paper_settings: bool = True, seed: int = GATE_SEED) -> dict:
    """DDS against least squares on fresh in-distribution phantoms; ``passed`` when the margin is ≥ 3 dB.

    A 1-channel prior is gated on sparse-view CT with the paper's angular undersampling (``n_views`` default
    60·size/256: 15 at 64 px, 30 at 128 px). A 2-channel (complex) prior is gated on the task it is for: CS-MRI,
    uniform-1D ×4 multi-coil k-space of the phantoms given a smooth phase, with coil maps estimated from the ACS lines
    (:func:`ddip.tasks.simulate`); PSNR on magnitudes. ``paper_settings`` also runs DDS with the paper's 50 steps and
    η = 0.85 and reports it (not gated). ``t_start`` and ``cg_iters`` give DDS another start or CG count (to see
    how much of the margin is the sampler's: ``benchmarks/gate_sampler.py``); the report's ``sampler`` names them
    when they differ from the gate's.
    """
    size = int(prior.net.config.sample_size)
    g = torch.Generator().manual_seed(seed)
    x = random_ellipses(n_images, size, generator=g)
    if prior.image_channels == 2:
        task, n_views = "csmri", None
        m = simulate(x, TaskConfig(task="csmri", size=size, noise=sigma, seed=seed % 2**31))
        op, y, x = m.physics, m.y, m.ground_truth
    else:
        task, n_views = "sv-ct", n_views or paper_views(size)
        op = sparse_view_ct(size, n_views)
        y = add_noise(op.A(x), sigma, generator=g)
    # The phantoms are drawn on the CPU (the same ones whatever the device), then everything runs where the prior
    # lives: the operators keep their matrices, masks and coil maps on the device of the data they are given.
    device = next(prior.net.parameters()).device
    x, y = x.to(device), y.to(device)
    ls = least_squares_psnr(op, y, x)
    state = g.get_state()
    sampler = DDS(n_steps=n_steps, eta=eta, noise_mix=GATE_NOISE_MIX, cg_iters=cg_iters, t_start=t_start)
    rec = _clamp(solve(sampler, prior, y, op, generator=g))
    dds = float(psnr(rec, x).mean())
    best_ls = max(ls.values())
    report = {"dds_psnr": dds, "least_squares_psnr": best_ls,
              "least_squares_by_iters": {str(k): v for k, v in ls.items()}, "margin_db": dds - best_ls,
              "passed": dds - best_ls >= GATE_MARGIN_DB,
              "sampler": {"method": "dds", "n_steps": n_steps, "eta": eta,
                          **({} if t_start is None else {"t_start": t_start}),
                          **({} if cg_iters == PAPER_CG_ITERS else {"cg_iters": cg_iters})},
              "task": task, "n_images": n_images, "n_views": n_views, "sigma": sigma, "size": size, "seed": seed}
    if paper_settings:
        g.set_state(state)
        paper = _clamp(solve(DDS(noise_mix=GATE_NOISE_MIX, cg_iters=PAPER_CG_ITERS), prior, y, op, generator=g))
        report["dds_paper_psnr"] = float(psnr(paper, x).mean())
        report["paper_margin_db"] = report["dds_paper_psnr"] - best_ls
    return report


def _clamp(x: Tensor) -> Tensor:
    """Real images to [0, 1]; complex ones keep their phase and have the magnitude capped at 1."""
    if x.is_complex():
        return torch.polar(x.abs().clamp(max=1.0), x.angle())
    return x.clamp(0, 1)


def sample_grid(prior: DiffusionPrior, path, *, n: int = 16, n_steps: int = 100, seed: int = 0) -> Tensor:
    """Unconditional samples written as a PNG grid (magnitudes for complex priors); returns the samples.

    Ancestral sampling (DDPM, η = 1, on ``n_steps`` of the 1000 timesteps) with the Tweedie estimate clipped to the
    data range at every step — guided-diffusion's ``clip_denoised``, which is how ADM samples. Deterministic DDIM
    (η = 0) without clipping drives our small networks to saturated or empty images.
    """
    plt = pyplot()

    size = int(prior.net.config.sample_size)
    channels = prior.image_channels
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g).to(next(prior.net.parameters()).device)
    timesteps = prior.schedule.timesteps(n_steps).tolist()
    lo = 0.0 if channels == 1 else -1.0  # images in [0, 1]; complex ones have real and imaginary parts in [-1, 1]
    with torch.no_grad():
        for i, t in enumerate(timesteps):
            s = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            eps = predict_eps(prior, x, t)
            x0 = prior.tweedie(x, t, eps).clamp(lo, 1.0)
            eps = prior.eps_from_x0(x, t, x0)  # the ε consistent with the clipped x̂₀
            x = ddim_update(prior, x0, eps, t, s, eta=1.0, noise_mix="ddim", generator=g)
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            img = (x[k].norm(dim=0) if x.shape[1] > 1 else x[k, 0]).cpu()
            ax.imshow(img.clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
    fig.tight_layout()
    save_figure(fig, path, dpi=80)
    return x


def gate_curve(run_dir, *, n_images: int = GATE_IMAGES, ema_length: float | None = None,
               seed: int = GATE_SEED, device: str | torch.device = "cpu") -> list[dict]:
    """Evaluate the gate on every EMA snapshot of a training run, and on its last EMA weights (``ema.safetensors``),
    not yet evaluated; returns all rows, sorted.

    Rows are appended to ``RUN/gate_curve.jsonl`` (one JSON object per snapshot, with ``images`` seen) and the curve
    is drawn to ``RUN/gate_curve.png``. ``ema_length`` evaluates instead the snapshots of one of the run's
    power-function EMAs (``TrainConfig.ema_lengths``), to ``RUN/gate_curve-len<σ>.jsonl`` / ``.png``. ``seed`` draws
    other phantoms and noise (``VALIDATION_SEED``: those on which training settings are compared), to files named
    ``-seed<seed>`` as well. ``device`` is where the prior runs (the phantoms are the same on any device).
    """
    run = Path(run_dir)
    if not (run / "ema.safetensors").is_file():
        raise DdipError(f"{run}: not a train-prior run folder (no ema.safetensors)")
    tag = "" if ema_length is None else f"-len{ema_length:g}"
    if tag and not (run / f"ema{tag}.safetensors").is_file():
        raise DdipError(f"{run}: the run kept no EMA of relative length {ema_length:g} (train-prior --ema-lengths)")
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise DdipError(f"the gate needs n_images >= 1 phantoms, got {n_images!r}")
    log = run / f"gate_curve{tag}{'' if seed == GATE_SEED else f'-seed{seed}'}.jsonl"
    sampler = {"method": "dds", "n_steps": GATE_STEPS, "eta": GATE_ETA}  # rows of another gate sampler are redone
    rows = {r["images"]: r for r in map(json.loads, log.read_text().splitlines()) if r.get("sampler") == sampler} \
        if log.exists() else {}
    weights = {int(path.stem.split("_")[1]): path
               for path in sorted((run / "snapshots").glob(f"ema{tag}_*.safetensors"))}
    latest = read_safetensors(run / f"ema{tag}.safetensors", "prior")[1].get("images_seen")
    if latest is not None:  # the run's last EMA weights, also when it made no snapshot at that count
        weights.setdefault(int(json.loads(latest)), run / f"ema{tag}.safetensors")
    prior, where = None, resolve_device(device)
    for images, path in sorted(weights.items()):
        if images in rows:
            continue
        prior = prior or load_prior(run / "ema.safetensors", device=where)
        prior.net.load_state_dict(load_file(str(path), device=str(where)))
        row = {**quality_gate(prior, n_images=n_images, seed=seed), "images": images}
        rows[images] = row
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")
    ordered = [rows[k] for k in sorted(rows)]
    if ordered:
        _plot_curve(ordered, log.with_suffix(".png"))
    return ordered


def _plot_curve(rows: list[dict], path) -> None:
    plt = pyplot()

    images = [r["images"] / 1000 for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(images, [r["dds_psnr"] for r in rows], "o-", label=f"DDS, gate sampler ({GATE_STEPS} steps, η {GATE_ETA})")
    if all("dds_paper_psnr" in r for r in rows):
        ax.plot(images, [r["dds_paper_psnr"] for r in rows], "^-", label="DDS, paper settings (50 steps, η 0.85)")
    ax.plot(images, [r["least_squares_psnr"] for r in rows], "s--", label="least squares (best CG count)")
    ax.plot(images, [r["least_squares_psnr"] + GATE_MARGIN_DB for r in rows], ":", label="gate (+3 dB)")
    ax.set_xlabel("training images seen (thousands)")
    ax.set_ylabel(f"PSNR (dB), {rows[-1].get('task', 'sv-ct')}, {rows[-1]['size']} px")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
