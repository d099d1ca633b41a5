"""Diagnostic runs on a development volume: any methods and settings side by side, one JSON row each.

Used to find *why* a table misses a target (number of sampling steps, learning rate, trained biases, ...):

    python benchmarks/diagnose.py mri3d --n-slices 8 --noise-mix paper \
        '{"method": "dds", "n_steps": 10}' '{"method": "dds", "n_steps": 50}'
    python benchmarks/diagnose.py mri3d --n-slices 4 --noise-mix code \
        '{"method": "d3ip", "k": 4, "lr": 1e-3}'

Each positional argument is a JSON object of :class:`ddip.reconstruct.ReconstructConfig` fields. The volume and
measurement are the benchmark's (``ddip.benchmark``: chest CT for SV-CT with the paper's 60·size/256 views, the
MNI152 T1 for the MRI tasks, seed 0); the prior is the task's shipped default. Prints and appends rows to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

from ddip.benchmark import BenchConfig, _measure
from ddip.metrics import evaluate_volume
from ddip.physics.base import pseudo_inverse
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
    p.add_argument("--out", default=None, help="JSON-lines file the rows are appended to")
    args = p.parse_args(argv)

    cfg = BenchConfig(size=args.size)
    views = paper_views(args.size) if args.task == "sv-ct" else 60
    m = _measure(args.task, cfg, args.n_slices, views)
    prior_name = default_prior(args.task, args.size)
    prior = load_prior(prior_name)
    x_dagger = pseudo_inverse(m.physics, m.y)
    rows = [{"method": "A_dagger", "psnr": evaluate_volume(x_dagger, m.ground_truth)["psnr"]}]
    for spec in args.specs:
        settings = {"noise_mix": args.noise_mix, **json.loads(spec)}
        t0 = time.perf_counter()
        res = reconstruct(m, ReconstructConfig(**settings), prior)
        metrics = evaluate_volume(res.volume, m.ground_truth)
        rows.append({**settings, "psnr": metrics["psnr"], "ssim": metrics["ssim"],
                     "wall_s": time.perf_counter() - t0, "loss_first": res.report.get("loss_first"),
                     "loss_last": res.report.get("loss_last")})
    header = {"task": args.task, "n_slices": args.n_slices, "size": args.size, "prior": prior_name,
              "date": date.today().isoformat()}
    for row in rows:
        line = json.dumps({**header, **row})
        print(line, flush=True)
        if args.out:
            with Path(args.out).open("a") as f:
                f.write(line + "\n")


if __name__ == "__main__":
    main()
