"""Posterior samples on the development data: what the mean of S samples gains, what adapting once and replaying
costs against S independent adaptations, and whether the samples' spread predicts the error (calibration).

    python benchmarks/samples.py [--volume chest-ct] [--n-slices 8] [--views 15] [--samples 4]
                                 [--methods dds,d3ip] [--independent] [--settings JSON] [--threads 1]

Defaults are the demo's data (8 central slices of the bundled chest CT, 64 px, 15 views, sigma 0.01, seed 0).
Writes ``benchmarks/results/samples.json`` (per method: PSNR of the mean of the first s samples for s = 1, 2, 4, ...,
wall time per sample, the Pearson correlation of per-voxel |error| and std, the fraction of voxels with
|error| <= 2 std, the factor c that would put 95 % of them inside 2 c std) and ``samples-calibration.png`` (mean
|error| against std in 20 std-quantile bins).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from datetime import date
from pathlib import Path

import torch

from sampler import validation_phantoms

RESULTS = Path(__file__).parent / "results"


def pearson_ceiling(std: torch.Tensor) -> float:
    """The Pearson r of |error| and std that a perfect std map would reach: errors drawn exactly N(0, std²) per voxel.

    With |e| = std·|z|, E|z| = m = sqrt(2/π): r = m·sd(std) / sqrt(E[std²] − m²·E[std]²) — set by how much the std
    varies over the voxels alone (about 0.51 when its coefficient of variation is 0.5, 0.68 at 1), and unchanged by
    any calibration factor. An r near it says the map is as informative as its spread lets a map be.
    """
    sd = std.flatten().double()
    m = math.sqrt(2 / math.pi)
    return float(m * sd.std(correction=0) / (sd.pow(2).mean() - m ** 2 * sd.mean() ** 2).sqrt())


def calibration(mean: torch.Tensor, std: torch.Tensor, truth: torch.Tensor, bins: int = 20) -> dict:
    """Per-voxel |error| of the mean against the samples' std: correlation, 2-std coverage, binned curve."""
    err = (mean - truth).abs().flatten().double()
    sd = std.flatten().double()
    corr = float(torch.corrcoef(torch.stack([err, sd]))[0, 1])
    order = sd.argsort()
    chunks = order.chunk(bins)
    ratio = err / sd.clamp_min(torch.finfo(torch.float64).tiny)
    return {"pearson_abs_error_std": corr, "pearson_ceiling": pearson_ceiling(sd),
            "coverage_2std": float((err <= 2 * sd).double().mean()),
            # the factor c with 95 % of voxels inside |error| <= 2 c std (split conformal, if measured on held-out data)
            "std_factor_95": float(ratio.quantile(0.95) / 2) if ratio.numel() <= 2 ** 24 else None,
            "binned": [{"std": float(sd[c].mean()), "abs_error": float(err[c].mean())} for c in chunks]}


def development_measurement(volume: str, n_slices: int = 8, views: int = 15, seed: int = 0):
    """Sparse-view CT (64 px, sigma 0.01) of a bundled fixture's central slices, or of the validation phantoms."""
    from ddip.cli import _volume
    from ddip.tasks import TaskConfig, simulate

    if volume == "phantoms":
        x, record = validation_phantoms(n_slices), None
    else:
        x, record = _volume(f"fixture:{volume}", "ct" if "ct" in volume else "mri", 64, None, n_slices)
    return simulate(x, TaskConfig(task="sv-ct", size=64, views=views, noise=0.01, seed=seed), record=record)


def main() -> None:
    from ddip.metrics import psnr
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct, reconstruct_samples

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", default="chest-ct",
                        help="a bundled fixture name (64 px), or 'phantoms': fresh ELLIPSES phantoms from the "
                             "validation seed of benchmarks/sampler.py (VALIDATION_SEED)")
    parser.add_argument("--n-slices", type=int, default=8)
    parser.add_argument("--views", type=int, default=15)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--methods", default="dds,d3ip")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--independent", action="store_true",
                        help="also the mean of S independent adaptations for the methods that replay")
    parser.add_argument("--prior", default="ellipses-64")
    parser.add_argument("--settings", default="{}", help="JSON: ReconstructConfig fields for every diffusion method")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "samples.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    m = development_measurement(args.volume, args.n_slices, args.views, args.seed)
    prior = load_prior(args.prior)
    truth = m.ground_truth
    score = lambda v: float(psnr(v, truth).mean())  # noqa: E731  (the demo's PSNR: mean over slices)
    rows = []
    t0 = time.perf_counter()
    tv = reconstruct(m, ReconstructConfig(method="admm-tv"), None)
    rows.append({"method": "admm-tv", "psnr": score(tv.volume), "wall_time_s": time.perf_counter() - t0})
    print(json.dumps(rows[-1]), flush=True)
    counts = [s for s in (1, 2, 4, 8, 16, 32) if s <= args.samples]
    for method in args.methods.split(","):
        cfg = ReconstructConfig(method=method, seed=args.seed, samples=args.samples, **json.loads(args.settings))
        res = reconstruct_samples(m, cfg, prior, keep_samples=True)
        means = {s: res.samples[:s].mean(0) for s in counts}
        row = {"method": method, "samples": args.samples, "adaptation": res.report["samples"]["adaptation"],
               "psnr_mean_of": {str(s): score(v) for s, v in means.items()},
               "psnr_each_sample": [score(v) for v in res.samples],
               "wall_time_per_sample_s": res.report["samples"]["wall_time_per_sample_s"],
               **calibration(res.volume, res.std, truth)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "binned"}), flush=True)
        if args.independent and res.report["samples"]["adaptation"] == "once, then replayed":
            walls, vols = [], []
            for j in range(args.samples):
                r = reconstruct(m, dataclasses.replace(cfg, seed=args.seed + j, samples=1), prior)
                vols.append(r.volume)
                walls.append(r.wall_time_s)
            stack = torch.stack(vols)
            row = {"method": method, "samples": args.samples, "adaptation": "one per sample (independent)",
                   "psnr_mean_of": {str(s): score(stack[:s].mean(0)) for s in counts},
                   "psnr_each_sample": [score(v) for v in stack], "wall_time_per_sample_s": walls,
                   **calibration(stack.mean(0), stack.std(0), truth)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "binned"}), flush=True)
    command = "python benchmarks/samples.py " + " ".join(
        f"--{k.replace('_', '-')} '{v}'" if k == "settings" else
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k}" for k, v in vars(args).items()
        if k != "out" and v is not False)
    out = Path(args.out)
    out.write_text(json.dumps({"command": command, "date": date.today().isoformat(), "threads": torch.get_num_threads(),
                               "data": f"fixture {args.volume}, {args.n_slices} central slices, 64 px, {args.views} "
                                       f"views, sigma 0.01, seed {args.seed}", "rows": rows}, indent=1) + "\n")
    _figure([r for r in rows if "binned" in r], out.with_name(out.stem + "-calibration.png"))


def _figure(rows: list[dict], path: Path) -> None:
    from ddip.io import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(4.6, 3.6))
    top = 0.0
    for r in rows:
        x = [b["std"] for b in r["binned"]]
        y = [b["abs_error"] for b in r["binned"]]
        top = max(top, *x, *y)
        ax.plot(x, y, "o-", ms=3, label=f"{r['method']}, {r['adaptation']} (r = {r['pearson_abs_error_std']:.2f}, "
                                        f"{100 * r['coverage_2std']:.0f} % within 2 std)")
    ax.plot([0, top], [0, top], "k:", lw=1, label="|error| = std")
    ax.set_xlabel("std of the samples (window units), 20 quantile bins")
    ax.set_ylabel("mean |error| of their mean")
    ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    main()
