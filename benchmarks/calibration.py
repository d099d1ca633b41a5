"""Calibrating the samples' spread: fitted on held-out phantoms, judged on the development volumes.

    python benchmarks/calibration.py [--method dds] [--samples 8] [--fit phantoms] [--evaluate chest-ct,mni-t1]
                                     [--settings JSON] [--threads 1] [--cache DIR]

The spread of S posterior samples ranks the errors of their mean but is too small for it (docs/results.md,
"Posterior samples"): the samples share the prior's bias, which no spread shows. Each variant below maps the
per-voxel sample std s to an error scale σ; its parameters are fitted on the ``--fit`` data set only (split
conformal: the validation phantoms, VALIDATION_SEED, in distribution) and every variant is scored on every data set
by the Pearson correlation of |error| and σ and the fraction of voxels with |error| ≤ 2σ (the targets: r ≥ 0.5 and
0.85–0.99 on the development volumes):

- ``raw``: σ = s;
- ``smoothed``: σ = √(box₃(s²)), the variance averaged over each voxel's 3×3 in-plane neighbourhood (an S-sample
  std is itself noisy: about 1/√(2(S − 1)) relative);
- ``scaled``: σ = c·s, c the 95 % quantile of |error|/(2s) on the fit set;
- ``gaussian``: σ² = a²·box₃(s²) + b², (a, b) maximising the Gaussian likelihood of the errors on the fit set
  (b: the floor the shared bias sets where the samples agree);
- ``tv-disagreement``: σ = |mean − ADMM-TV|, the disagreement with an estimate that shares none of the prior's bias
  (two methods disagree where at least one errs), and ``std+tv``: σ² = box₃(s²) + box₃((mean − ADMM-TV)²).

The sample stacks are cached (``--cache``, outside the repository) so a refit costs nothing. Writes
``benchmarks/results/calibration-<method>.json``.
"""

from __future__ import annotations

import argparse
import json
import math
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from samples import calibration, development_measurement

RESULTS = Path(__file__).parent / "results"


def smoothed_variance(std: torch.Tensor) -> torch.Tensor:
    """box₃(s²): the sample variance averaged over each voxel's 3×3 in-plane neighbourhood (edges replicated)."""
    v = std.pow(2).reshape(-1, 1, *std.shape[-2:])
    v = F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return v.reshape(std.shape)


def fit_gaussian(err: torch.Tensor, var: torch.Tensor) -> tuple[float, float]:
    """(a, b) maximising the likelihood of err ~ N(0, a²·var + b²), by a coarse-to-fine grid on (log a, log b)."""
    err2, var = err.double().pow(2).flatten(), var.double().flatten()

    def nll(la: float, lb: float) -> float:
        s2 = math.exp(2 * la) * var + math.exp(2 * lb)
        return float((s2.log() + err2 / s2).mean())

    la, lb, width = 0.0, math.log(float(err2.mean().sqrt())), 4.0
    for _ in range(6):
        grid = torch.linspace(-width, width, 17).tolist()
        la, lb = min(((la + da, lb + db) for da in grid for db in grid), key=lambda p: nll(*p))
        width /= 4
    return math.exp(la), math.exp(lb)


def score(mean: torch.Tensor, sigma: torch.Tensor, truth: torch.Tensor) -> dict:
    """samples.py's calibration measures of an error scale σ: Pearson r of |error| and σ, the share within 2σ."""
    c = calibration(mean, sigma, truth)
    return {"pearson_abs_error_sigma": c["pearson_abs_error_std"], "pearson_ceiling": c["pearson_ceiling"],
            "coverage_2sigma": c["coverage_2std"]}


def admm_tv_of(name: str, seed: int = 0) -> torch.Tensor:
    """ADMM-TV's reconstruction of data set ``name`` (about a second)."""
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct

    return reconstruct(development_measurement(name, seed=seed), ReconstructConfig(method="admm-tv", seed=seed),
                       load_prior("ellipses-64")).volume


def samples_of(name: str, method: str, n: int, settings: dict, cache: Path, seed: int = 0):
    """(the S samples, the ground truth) of ``method`` on data set ``name``, computed once and cached."""
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct_samples

    key = cache / f"{name}-{method}-{n}-{seed}-{json.dumps(settings, sort_keys=True)}.pt"
    if key.exists():
        saved = torch.load(key)
        return saved["samples"], saved["truth"]
    m = development_measurement(name, seed=seed)
    cfg = ReconstructConfig(method=method, seed=seed, samples=n, **settings)
    res = reconstruct_samples(m, cfg, load_prior("ellipses-64"), keep_samples=True)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"samples": res.samples, "truth": m.ground_truth}, key)
    return res.samples, m.ground_truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default="dds")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--fit", default="phantoms")
    parser.add_argument("--evaluate", default="chest-ct,mni-t1")
    parser.add_argument("--settings", default="{}", help="JSON: ReconstructConfig fields")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "ddip-calibration"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings, cache = json.loads(args.settings), Path(args.cache)
    data = {}
    for name in [args.fit, *args.evaluate.split(",")]:
        stack, truth = samples_of(name, args.method, args.samples, settings, cache)
        mean = stack.mean(0)
        data[name] = (mean, stack.std(0), truth, (mean - admm_tv_of(name)).abs())  # d: the disagreement with TV
    mean, std, truth, _ = data[args.fit]
    c = calibration(mean, std, truth)["std_factor_95"]
    a, b = fit_gaussian((mean - truth).abs(), smoothed_variance(std))
    variants = {"raw": lambda s, d: s, "smoothed": lambda s, d: smoothed_variance(s).sqrt(),
                "scaled": lambda s, d: c * s, "gaussian": lambda s, d: (a * a * smoothed_variance(s) + b * b).sqrt(),
                "tv-disagreement": lambda s, d: d,
                "std+tv": lambda s, d: (smoothed_variance(s) + smoothed_variance(d)).sqrt()}
    rows = {name: {v: score(m, f(s, d), t) for v, f in variants.items()} for name, (m, s, t, d) in data.items()}
    for name, row in rows.items():
        print(name, "  ".join(f"{v}: r {r['pearson_abs_error_sigma']:.2f} (ceiling {r['pearson_ceiling']:.2f}) cov {r['coverage_2sigma']:.3f}"
                              for v, r in row.items()), flush=True)
    command = (f"python benchmarks/calibration.py --method {args.method} --samples {args.samples} --fit {args.fit} "
               f"--evaluate {args.evaluate} --settings '{args.settings}'")
    out = Path(args.out) if args.out else RESULTS / f"calibration-{args.method}.json"
    out.write_text(json.dumps({"command": command, "date": date.today().isoformat(),
                               "fitted_on": args.fit, "scaled_c": c, "gaussian_a": a, "gaussian_b": b,
                               "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
