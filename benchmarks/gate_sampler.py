"""The quality gate's data under other DDS samplers: how much of the gate margin is the sampler's, not the prior's.

    python benchmarks/gate_sampler.py [--prior ellipses-64] [--threads 1]

The gate (``ddip.evaluation.quality_gate``: 8 fresh ELLIPSES phantoms from ``GATE_SEED``, the paper's views, σ 0.01)
uses DDS on the full grid with 200 steps at η 0.2, chosen on the validation seed. The start T' = 150 of today's
default DDS was chosen on the same validation seed (``benchmarks/sampler.py``), so scoring it once on the gate's
phantoms is a fair held-out test of the sampler — it says nothing new about the prior. Prints one JSON line per
sampler: PSNR and the margin over the gate's best least-squares CG count.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ddip.data import random_ellipses
from ddip.evaluation import GATE_ETA, GATE_IMAGES, GATE_NOISE_MIX, GATE_SEED, GATE_STEPS, _clamp, least_squares_psnr
from ddip.metrics import psnr
from ddip.methods import T_START_PLAIN
from ddip.physics import add_noise, sparse_view_ct
from ddip.priors import load_prior
from ddip.solvers import DDS, solve
from ddip.solvers.dds import PAPER_CG_ITERS
from ddip.tasks import paper_views

SAMPLERS = {
    "gate (full grid, 200 steps)": dict(n_steps=GATE_STEPS, cg_iters=PAPER_CG_ITERS),
    f"T' {T_START_PLAIN}, 50 steps, 20 CG (the default DDS)": dict(n_steps=50, t_start=T_START_PLAIN),
    f"T' {T_START_PLAIN}, 100 steps, 20 CG": dict(n_steps=100, t_start=T_START_PLAIN),
    f"T' {T_START_PLAIN}, 150 steps, 5 CG": dict(n_steps=150, t_start=T_START_PLAIN, cg_iters=PAPER_CG_ITERS),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", default="ellipses-64")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prior = load_prior(args.prior)
    size = int(prior.net.config.sample_size)
    g = torch.Generator().manual_seed(GATE_SEED)  # drawn as quality_gate draws them
    x = random_ellipses(GATE_IMAGES, size, generator=g)
    op = sparse_view_ct(size, paper_views(size))
    y = add_noise(op.A(x), 0.01, generator=g)
    best_ls = max(least_squares_psnr(op, y, x).values())
    state = g.get_state()
    for name, settings in SAMPLERS.items():
        g.set_state(state)
        t0 = time.perf_counter()
        rec = _clamp(solve(DDS(eta=GATE_ETA, noise_mix=GATE_NOISE_MIX, **settings), prior, y, op, generator=g))
        value = float(psnr(rec, x).mean())
        print(json.dumps({"sampler": name, "settings": settings, "dds_psnr": round(value, 3),
                          "least_squares_psnr": round(best_ls, 3), "margin_db": round(value - best_ls, 3),
                          "wall_time_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
