"""Data that do not match the operator exactly: do the adapted methods run away?

    python benchmarks/mismatch.py [--variants ...] [--methods admm-tv,dds,d3ip] [--k 3 --iters 7] [--threads 1]

The demo's data (8 central slices of the bundled chest CT, 64 px, 15 views, sigma 0.01, seed 0) measured three ways
and always reconstructed with ddip's own operator (rotation axis on bin ``bins // 2``):

- ``matched``: ddip's projector, as the reconstruction assumes;
- ``center+0.5``: ddip's projector with the rotation axis half a bin off (``TaskConfig.detector_center``), as
  another package's convention (``(bins - 1) / 2``) or a scanner's calibration puts it;
- ``skimage``: scikit-image's ``radon`` (another interpolation model) on the same geometry;
- ``narrow``: a detector of 64 bins, narrower than the image's diagonal (the corners are seen by some views only),
  matched otherwise; ``narrow-0.5``: the same with the axis at (bins − 1) / 2, as mbirjax's 64-channel sinogram of
  issue 26 had it.

Writes ``benchmarks/results/mismatch.json``: per variant and method the PSNR, the value range of the result, whether
it stayed in the plausible range, and the wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results"
# name: (detector bins, None for ddip's default; offset of the measured rotation axis from the assumed bins // 2, in
# bins; the projector that made the data)
VARIANTS = {"matched": (None, 0.0, "ddip"), "center+0.5": (None, 0.5, "ddip"), "skimage": (None, 0.0, "skimage"),
            "narrow": (64, 0.0, "ddip"), "narrow-0.5": (64, -0.5, "ddip")}


def skimage_sinogram(volume: torch.Tensor, op) -> torch.Tensor:
    """scikit-image's parallel-beam projection of each slice on ``op``'s angles (same orientation, same detector:
    tests/data/test_sinogram_import.py checks that ADMM-TV reconstructs it as ddip's own to 0.1 dB)."""
    from skimage.transform import radon

    angles = np.asarray(op.angles_deg)
    sino = np.stack([radon(img, theta=angles, circle=False).T for img in volume[:, 0].double().numpy()])
    if sino.shape[-1] != op.n_det:
        raise SystemExit(f"scikit-image made {sino.shape[-1]} bins where ddip has {op.n_det}")
    return torch.from_numpy(sino[:, None]).float()


def main() -> None:
    from ddip.cli import _volume
    from ddip.metrics import psnr
    from ddip.physics import add_noise
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct
    from ddip.tasks import TaskConfig, simulate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-slices", type=int, default=8)
    parser.add_argument("--views", type=int, default=15)
    parser.add_argument("--methods", default="admm-tv,dds,d3ip")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=3, help="D3IP's K (the demo's)")
    parser.add_argument("--iters", type=int, default=7, help="D3IP's L (the demo's)")
    parser.add_argument("--range-guard", choices=("on", "off"), default="on")
    parser.add_argument("--prior", default="ellipses-64")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "mismatch.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    volume, record = _volume("fixture:chest-ct", "ct", 64, None, args.n_slices)
    task = TaskConfig(task="sv-ct", size=64, views=args.views, noise=0.01, seed=args.seed)
    prior = load_prior(args.prior)
    rows = []
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            raise SystemExit(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
        bins, offset, projector = VARIANTS[variant]
        assumed = dataclasses.replace(task, detector_bins=bins)
        m = simulate(volume, assumed, record=record)  # what the reconstruction assumes: axis on bin bins // 2
        if offset:
            centre = m.physics.n_det // 2 + offset
            m = dataclasses.replace(m, y=simulate(volume, dataclasses.replace(assumed, detector_center=centre),
                                                  record=record).y)
        if projector == "skimage":
            clean = skimage_sinogram(m.ground_truth, m.physics)
            m = dataclasses.replace(m, y=add_noise(clean, task.noise,
                                                   generator=torch.Generator().manual_seed(args.seed)))
        for method in args.methods.split(","):
            t0 = time.perf_counter()
            adapt = {"k": args.k, "n_iters": args.iters, "range_guard": args.range_guard == "on"} \
                if method == "d3ip" else {}
            res = reconstruct(m, ReconstructConfig(method=method, seed=args.seed, **adapt),
                              None if method == "admm-tv" else prior)
            v = res.volume
            rows.append({"variant": variant, "method": method, "psnr": float(psnr(v, m.ground_truth).mean()),
                         "min": float(v.min()), "max": float(v.max()),
                         "plausible": res.report["value_range"]["plausible"],
                         "rollbacks": len(res.report.get("adapt_rollbacks", [])),
                         "wall_time_s": round(time.perf_counter() - t0, 1)})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.out).write_text(json.dumps({"date": str(date.today()), "command": "python benchmarks/mismatch.py "
                                          + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                                                     if k != "out"),
                                          "threads": torch.get_num_threads(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
