"""Sampler settings chosen by measurement: a grid of ReconstructConfig settings over data sets and seeds.

    python benchmarks/sampler.py --grid '{"eta": [0.15, 0.3, 0.5, 0.85], "n_steps": [25, 50, 100]}' \\
        [--method dds] [--datasets chest-ct,mni-t1,phantoms] [--seeds 0,1] [--threads 1] [--out FILE.jsonl]

Data sets (64 px, noise σ = 0.01, the noise and sampling seed from ``--seeds``):

- ``chest-ct``: the demo's data, 8 central slices of the bundled chest CT, sparse-view CT at 15 views;
- ``mni-t1``: 8 central slices of the bundled MNI T1, 3D MRI at ×8 (the task's own mask);
- ``phantoms``: 8 fresh ELLIPSES phantoms from a validation seed (``VALIDATION_SEED``: neither the gate's nor the
  in-distribution test's), sparse-view CT at 15 views;
- ``csmri``: 4 slices of the benchmark's CS-MRI ×4 data (multi-coil MNI T1, the complex prior ``ellipses-complex-64``).

Every grid point runs on every data set and seed; one JSON line per run is appended to ``--out`` with the settings
given and those that ran (``resolved_settings``: a rerun skips the runs already there with the same resolved settings,
so a stopped sweep resumes and a changed default is not mistaken for an old row), and a table of the mean PSNR over
seeds per data set, with the wall time, is printed at the end, best first by the mean over data sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
DATASETS = ("chest-ct", "mni-t1", "phantoms", "csmri")


def validation_phantoms(n_slices: int = 8) -> torch.Tensor:
    """Fresh ELLIPSES phantoms (64 px) from the validation seed ``VALIDATION_SEED``: neither the gate's nor the
    in-distribution test's."""
    from ddip.data import random_ellipses
    from ddip.evaluation import VALIDATION_SEED

    return random_ellipses(n_slices, 64, generator=torch.Generator().manual_seed(VALIDATION_SEED)).float()


def measurement(name: str, seed: int):
    """The data set ``name`` measured with noise seed ``seed``."""
    from ddip.cli import _volume
    from ddip.tasks import TaskConfig, simulate

    if name == "csmri":
        from ddip.benchmark import BenchConfig, _measure

        return _measure("csmri", dataclasses.replace(BenchConfig(), seed=seed), 4)
    if name == "phantoms":
        return simulate(validation_phantoms(), TaskConfig(task="sv-ct", size=64, views=15, noise=0.01, seed=seed))
    if name not in DATASETS:
        raise SystemExit(f"unknown data set {name!r}: one of {', '.join(DATASETS)}")
    modality = "ct" if name == "chest-ct" else "mri"
    volume, record = _volume(f"fixture:{name}", modality, 64, None, 8)
    task = TaskConfig(task="sv-ct", size=64, views=15, noise=0.01, seed=seed) if modality == "ct" else \
        TaskConfig(task="mri3d", size=64, noise=0.01, seed=seed)
    return simulate(volume, task, record=record)


def main() -> None:
    from ddip.metrics import psnr
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct, resolved_settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="JSON: a ReconstructConfig field -> the values to try")
    parser.add_argument("--method", default="dds")
    parser.add_argument("--fixed", default="{}", help="JSON: ReconstructConfig fields held fixed")
    parser.add_argument("--datasets", default=",".join(DATASETS[:3]))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "sampler.jsonl"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    grid, fixed = json.loads(args.grid), json.loads(args.fixed)
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = args.datasets.split(",")
    out = Path(args.out)
    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            if "resolved" in row:  # rows from before the defaults were recorded are not reused
                done[json.dumps([row["method"], row["resolved"], row["dataset"], row["seed"]], sort_keys=True)] = row
    priors = {}
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    rows = []
    for dataset in datasets:
        for seed in seeds:
            m = measurement(dataset, seed)
            for point in points:
                settings = {**fixed, **point}
                cfg = ReconstructConfig(method=args.method, seed=seed, **settings)
                resolved = resolved_settings(cfg, m.config, m.y.shape[0])  # what runs, defaults included
                key = json.dumps([args.method, resolved, dataset, seed], sort_keys=True)
                if key in done:
                    rows.append(done[key])
                    continue
                name = "ellipses-complex-64" if dataset == "csmri" else "ellipses-64"  # the tasks' shipped priors
                prior = priors.setdefault(name, load_prior(name))
                t0 = time.perf_counter()
                res = reconstruct(m, cfg, prior)
                row = {"method": args.method, "settings": settings, "resolved": resolved, "dataset": dataset,
                       "seed": seed,
                       "psnr": float(psnr(res.volume, m.ground_truth).mean()),
                       "wall_time_s": time.perf_counter() - t0, "threads": torch.get_num_threads()}
                rows.append(row)
                with out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    table = {}
    for row in rows:
        table.setdefault(json.dumps(row["settings"], sort_keys=True), {}).setdefault(row["dataset"], []).append(row)
    lines = []
    for settings, per in table.items():
        means = {d: statistics.mean(r["psnr"] for r in rs) for d, rs in per.items()}
        wall = statistics.mean(r["wall_time_s"] for rs in per.values() for r in rs)
        lines.append((statistics.mean(means.values()), settings, means, wall))
    for overall, settings, means, wall in sorted(lines, reverse=True):
        print(f"{overall:6.2f}  " + "  ".join(f"{d} {v:6.2f}" for d, v in means.items())
              + f"  {wall:6.1f} s  {settings}")


if __name__ == "__main__":
    main()
