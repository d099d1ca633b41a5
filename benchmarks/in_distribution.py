"""In-distribution diagnostics of the shipped ELLIPSES prior (docs/diagnosis.md §3).

The data are those of ``tests/test_quality.py::test_dds_beats_fbp_and_admm_tv_in_distribution``: 8 fresh ELLIPSES
phantoms (seed ``GATE_SEED − 1``), 64 px, sparse-view CT, σ = 0.01. Three questions, one JSON row per answer:

    python benchmarks/in_distribution.py samples    # DDS posterior samples and their running mean vs ADMM-TV
    python benchmarks/in_distribution.py views      # DDS vs ADMM-TV (best λ) and FBP at 4–15 views
    python benchmarks/in_distribution.py denoiser   # the prior's Tweedie x̂₀ vs TV denoising of the same noisy images
    python benchmarks/in_distribution.py variants   # DDS sampler variants (mixing, η, steps, γ, the CT form), seed 100
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from ddip.data import random_ellipses
from ddip.evaluation import GATE_SEED
from ddip.metrics import psnr
from ddip.physics import add_noise, sparse_view_ct
from ddip.priors import load_prior
from ddip.solvers import DDNM, DDS, admm_tv_reconstruct, solve
from ddip.solvers.base import predict_eps

TV_LAMBDAS = (0.005, 0.01, 0.02, 0.05, 0.1)


class Identity:
    """The denoising operator (A = I), so that ADMM-TV denoises."""

    def A(self, x):
        return x

    def A_adjoint(self, y):
        return y


def _phantoms(n: int):
    g = torch.Generator().manual_seed(GATE_SEED - 1)
    return random_ellipses(n, 64, generator=g), g


def _psnr(x_hat, x) -> float:
    return round(float(psnr(x_hat.clamp(0, 1), x).mean()), 2)


def samples(prior, n_samples: int, cg_iters: int) -> None:
    x, g = _phantoms(8)
    op = sparse_view_ct(64, 15)
    y = add_noise(op.A(x), 0.01, generator=g)
    print(json.dumps({"method": "admm-tv", "lam": 0.02, "psnr": _psnr(admm_tv_reconstruct(y, op, lam=0.02, rho=1.0),
                                                                       x)}), flush=True)
    for mix in ("paper", "code"):
        outs = []
        for s in range(n_samples):
            t0 = time.perf_counter()
            outs.append(solve(DDS(noise_mix=mix, cg_iters=cg_iters), prior, y, op,
                              generator=torch.Generator().manual_seed(100 + s)))
            print(json.dumps({"method": "dds", "noise_mix": mix, "seed": 100 + s, "psnr": _psnr(outs[-1], x),
                              f"psnr_mean_of_{len(outs)}": _psnr(torch.stack(outs).mean(0), x),
                              "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)


def views(prior, view_counts: list[int], cg_iters: int) -> None:
    for n_views in view_counts:
        x, g = _phantoms(8)
        op = sparse_view_ct(64, n_views)
        y = add_noise(op.A(x), 0.01, generator=g)
        tv = {str(lam): _psnr(admm_tv_reconstruct(y, op, lam=lam, rho=1.0), x) for lam in TV_LAMBDAS}
        dds = [_psnr(solve(DDS(noise_mix="paper", cg_iters=cg_iters), prior, y, op,
                           generator=torch.Generator().manual_seed(s)), x) for s in (0, 1)]
        print(json.dumps({"views": n_views, "fbp": _psnr(op.fbp(y), x), "admm_tv": tv, "dds_seeds_0_1": dds}),
              flush=True)


def denoiser(prior, timesteps: list[int]) -> None:
    x, g = _phantoms(16)
    for t in timesteps:
        ab = float(prior.schedule.at(t))
        sigma = math.sqrt((1 - ab) / ab)  # x_t / √ᾱ_t = x + σ·n
        x_t = math.sqrt(ab) * x + math.sqrt(1 - ab) * torch.randn(x.shape, generator=g)
        with torch.no_grad():
            x0 = prior.tweedie(x_t, t, predict_eps(prior, x_t, t))
        noisy = x_t / math.sqrt(ab)
        tv = {round(f * sigma, 4): _psnr(admm_tv_reconstruct(noisy, Identity(), lam=f * sigma,
                                                            rho=max(5 * f * sigma, 0.05), dims=(2, 3), cg_iters=5), x)
              for f in (0.25, 0.5, 1.0, 2.0)}
        print(json.dumps({"t": t, "sigma": round(sigma, 4), "noisy": _psnr(noisy, x), "tweedie": _psnr(x0, x),
                          "tv_best": max(tv.values()), "tv": tv}), flush=True)


# (label, DDS settings, solve settings): docs/diagnosis.md §3's sampler variants; "normal" is the authors' CT form
# (CG on A^H A x = A^H y from x̂₀), DDNM the same with 30 CG steps
VARIANTS = [
    ("paper mixing", {"noise_mix": "paper"}, {}),
    ("code mixing", {"noise_mix": "code"}, {}),
    ("ddim mixing", {"noise_mix": "ddim"}, {}),
    ("ddim eta 0", {"noise_mix": "ddim", "eta": 0.0}, {}),
    ("ddim eta 0.5", {"noise_mix": "ddim", "eta": 0.5}, {}),
    ("paper, independent init", {"noise_mix": "paper"}, {"init": "independent"}),
    ("paper, gamma 20", {"noise_mix": "paper", "gamma": 20.0}, {}),
    ("paper, gamma 100", {"noise_mix": "paper", "gamma": 100.0}, {}),
    ("paper, 200 steps", {"noise_mix": "paper", "n_steps": 200}, {}),
    ("ddim eta 0, 200 steps", {"noise_mix": "ddim", "eta": 0.0, "n_steps": 200}, {}),
    ("CT form, paper", {"noise_mix": "paper", "variant": "normal"}, {}),
    ("CT form, code", {"noise_mix": "code", "variant": "normal"}, {}),
    ("CT form, paper, 10 CG", {"noise_mix": "paper", "variant": "normal", "cg_iters": 10}, {}),
    ("paper eta 0.3", {"noise_mix": "paper", "eta": 0.3}, {}),
    ("paper eta 0.5", {"noise_mix": "paper", "eta": 0.5}, {}),
    ("paper eta 0.7", {"noise_mix": "paper", "eta": 0.7}, {}),
    ("CT form, paper eta 0.3", {"noise_mix": "paper", "variant": "normal", "eta": 0.3}, {}),
    ("CT form, paper eta 0.5", {"noise_mix": "paper", "variant": "normal", "eta": 0.5}, {}),
]


def variants(prior, cg_iters: int) -> None:
    x, g = _phantoms(8)
    op = sparse_view_ct(64, 15)
    y = add_noise(op.A(x), 0.01, generator=g)
    runs = [(label, DDS(**{"cg_iters": cg_iters, **dds}), kw) for label, dds, kw in VARIANTS]
    runs.append(("DDNM, paper mixing", DDNM(noise_mix="paper"), {}))
    for label, step, kw in runs:
        t0 = time.perf_counter()
        out = solve(step, prior, y, op, generator=torch.Generator().manual_seed(100), **kw)
        print(json.dumps({"variant": label, "psnr": _psnr(out, x), "wall_s": round(time.perf_counter() - t0, 1)}),
              flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=("samples", "views", "denoiser", "variants"))
    p.add_argument("--prior", default="ellipses-64")
    p.add_argument("--n-samples", type=int, default=6)
    p.add_argument("--views", default="4,6,8,10,15")
    p.add_argument("--timesteps", default="20,50,100,200,400")
    p.add_argument("--cg-iters", type=int, default=DDS.cg_iters,
                   help=f"DDS's CG steps per solve (default {DDS.cg_iters}; docs/diagnosis.md §3 ran the paper's 5)")
    args = p.parse_args(argv)
    prior = load_prior(args.prior)
    if args.what == "samples":
        samples(prior, args.n_samples, args.cg_iters)
    elif args.what == "views":
        views(prior, [int(v) for v in args.views.split(",")], args.cg_iters)
    elif args.what == "variants":
        variants(prior, args.cg_iters)
    else:
        denoiser(prior, [int(t) for t in args.timesteps.split(",")])


if __name__ == "__main__":
    main()
