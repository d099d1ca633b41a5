"""Diagnostic runs on a development volume: any methods and settings side by side, one JSON row each.

Used to find *why* a table misses a target (number of sampling steps, learning rate, trained biases, ...):

    python benchmarks/diagnose.py mri3d --n-slices 8 --noise-mix paper \
        '{"method": "dds", "n_steps": 10}' '{"method": "dds", "n_steps": 50}'
    python benchmarks/diagnose.py mri3d --n-slices 4 --noise-mix code \
        '{"method": "d3ip", "k": 4, "lr": 1e-3}'

Each positional argument is a JSON object of :class:`ddip.reconstruct.ReconstructConfig` fields. The volume and
measurement are the benchmark's (``ddip.benchmark``: chest CT for SV-CT with the paper's 60·size/256 views unless
``--views`` says otherwise, the MNI152 T1 for the MRI tasks, seed 0); the prior is the task's shipped default. Besides
PSNR/SSIM each row gives the relative error of the spatial frequencies below and above ``--band`` cycles per image
(for CT, the ones the views measure and the ones they leave to the prior), and with ``--samples N`` the PSNR of the
mean of N runs with seeds 0…N−1 (a posterior sample against an estimate of the posterior mean). The first rows are
two prior-free baselines: A^†y and least squares (CG on the normal equations from zero, 50 steps). Prints and appends
rows to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import torch

from ddip.benchmark import BenchConfig, _measure
from ddip.methods import method_spec
from ddip.metrics import band_errors, evaluate_volume
from ddip.physics.base import normal_of, pseudo_inverse
from ddip.physics.cg import conjugate_gradient
from ddip.priors import default_prior, load_prior
from ddip.reconstruct import ReconstructConfig, reconstruct
from ddip.tasks import paper_views


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("task", choices=("sv-ct", "mri3d", "csmri"))
    p.add_argument("specs", nargs="+", help="JSON objects of ReconstructConfig fields")
    p.add_argument("--n-slices", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--noise-mix", default="paper", choices=("paper", "code", "ddim"))
    p.add_argument("--views", type=int, default=None, help="CT views (default: the paper's 60·size/256)")
    p.add_argument("--band", type=float, default=19.0, help="frequency (cycles per image) splitting the band errors")
    p.add_argument("--samples", type=int, default=1, help="also report the PSNR of the mean of this many seeds")
    p.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    args = p.parse_args(argv)

    cfg = BenchConfig(size=args.size)
    views = args.views or (paper_views(args.size) if args.task == "sv-ct" else 60)
    m = _measure(args.task, cfg, args.n_slices, views)
    prior_name = default_prior(args.task, args.size)
    prior = load_prior(prior_name)
    truth = m.ground_truth
    x_dagger = pseudo_inverse(m.physics, m.y)
    aty = m.physics.A_adjoint(m.y)
    least_squares = conjugate_gradient(normal_of(m.physics), aty, torch.zeros_like(aty), n_iter=50)
    def bands(x):
        return {f"err_{k}": v for k, v in band_errors(x, truth, args.band).items()}

    rows = [{"method": name, "psnr": evaluate_volume(x, truth)["psnr"], **bands(x)}
            for name, x in (("A_dagger", x_dagger), ("least_squares", least_squares))]
    for spec in args.specs:
        settings = json.loads(spec)
        if method_spec(settings["method"]).mixes_noise:
            settings = {"noise_mix": args.noise_mix, **settings}
        t0 = time.perf_counter()
        res = reconstruct(m, ReconstructConfig(**settings), prior)
        metrics = evaluate_volume(res.volume, truth)
        row = {**settings, "psnr": metrics["psnr"], "ssim": metrics["ssim"], **bands(res.volume),
               "wall_s": time.perf_counter() - t0, "loss_first": res.report.get("loss_first"),
               "loss_last": res.report.get("loss_last")}
        if args.samples > 1:
            seed = settings.get("seed", 0)
            more = [reconstruct(m, ReconstructConfig(**{**settings, "seed": seed + k}), prior).volume
                    for k in range(1, args.samples)]
            row["psnr_mean_of_samples"] = evaluate_volume(torch.stack([res.volume, *more]).mean(0), truth)["psnr"]
        rows.append(row)
    header = {"task": args.task, "views": views if args.task == "sv-ct" else None, "n_slices": args.n_slices,
              "size": args.size, "prior": prior_name, "date": date.today().isoformat()}
    for row in rows:
        line = json.dumps({**header, **row})
        print(line, flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
