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

from ddip.evaluation import GATE_STEPS, quality_gate
from ddip.methods import T_START_PLAIN
from ddip.priors import load_prior
from ddip.solvers import DDS
from ddip.solvers.dds import PAPER_CG_ITERS

CG = DDS.cg_iters  # the default DDS's CG count
SAMPLERS = {
    "gate (full grid, 200 steps)": dict(n_steps=GATE_STEPS),
    f"T' {T_START_PLAIN}, 50 steps, {CG} CG (the default DDS)": dict(n_steps=50, t_start=T_START_PLAIN, cg_iters=CG),
    f"T' {T_START_PLAIN}, 100 steps, {CG} CG": dict(n_steps=100, t_start=T_START_PLAIN, cg_iters=CG),
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
    for name, settings in SAMPLERS.items():
        t0 = time.perf_counter()
        r = quality_gate(prior, paper_settings=False, **settings)  # the gate's phantoms, noise and sampling seed
        print(json.dumps({"sampler": name, "settings": settings, "dds_psnr": round(r["dds_psnr"], 3),
                          "least_squares_psnr": round(r["least_squares_psnr"], 3),
                          "margin_db": round(r["margin_db"], 3),
                          "wall_time_s": round(time.perf_counter() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
