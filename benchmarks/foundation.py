"""Foundation throughput: ELLIPSES phantoms per second and operator timings, on this machine's CPU.

    python benchmarks/foundation.py            # writes benchmarks/results/foundation.json and .md

Numbers are wall-clock medians of repeated runs with torch's default thread count. The CT comparison point is
``skimage.transform.radon`` (one NumPy slice at a time), the only other parallel-beam projector installable here.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ddip.data.phantoms import random_ellipses  # noqa: E402
from ddip.physics import mri_single_coil, sparse_view_ct  # noqa: E402


def _median_time(fn, repeats: int = 5) -> float:
    fn()  # warm-up (builds caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def phantoms() -> list[dict]:
    rows = []
    for size, n in ((64, 64), (128, 32), (256, 8)):
        g = torch.Generator().manual_seed(0)
        t = _median_time(lambda: random_ellipses(n, size, generator=g), repeats=3)
        rows.append({"size": size, "batch": n, "images_per_s": n / t})
    return rows


def operators(n_slices: int = 32) -> list[dict]:
    from skimage.transform import radon

    rows = []
    for size in (64, 128, 256):
        op = sparse_view_ct(size, 60)
        t0 = time.perf_counter()
        op.A(torch.zeros(1, 1, size, size))
        build = time.perf_counter() - t0
        x = torch.rand(n_slices, 1, size, size)
        y = op.A(x)
        t_a = _median_time(lambda: op.A(x))
        t_at = _median_time(lambda: op.A_adjoint(y))
        t_fbp = _median_time(lambda: op.fbp(y))
        img = x[0, 0].double().numpy()
        theta = np.asarray(op.angles_deg)
        t_sk = _median_time(lambda: radon(img, theta, circle=False), repeats=2) * n_slices
        rows.append({"operator": "sv-ct 60 views", "size": size, "slices": n_slices, "build_s": build,
                     "A_s": t_a, "A_adjoint_s": t_at, "fbp_s": t_fbp, "skimage_radon_s": t_sk,
                     "speedup_vs_skimage": t_sk / t_a})
        mri = mri_single_coil(size, 8)
        t_m = _median_time(lambda: mri.A(x))
        k = mri.A(x)
        t_mt = _median_time(lambda: mri.A_adjoint(k))
        rows.append({"operator": "mri single-coil x8", "size": size, "slices": n_slices, "A_s": t_m,
                     "A_adjoint_s": t_mt})
    return rows


def main() -> None:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    result = {
        "command": "python benchmarks/foundation.py",
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "phantoms": phantoms(),
        "operators": operators(),
    }
    (out / "foundation.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [f"# Foundation throughput ({result['date']}, {result['machine']['cpus']} CPUs, torch "
             f"{result['machine']['torch']})", "", f"Command: `{result['command']}`", "",
             "| phantoms | size | images/s |", "|---|---|---|"]
    lines += [f"| ELLIPSES | {r['size']} | {r['images_per_s']:.1f} |" for r in result["phantoms"]]
    lines += ["", "| operator | size | slices | A (ms) | A_adjoint (ms) | FBP (ms) | skimage radon (ms) | build (s) |",
              "|---|---|---|---|---|---|---|---|"]
    for r in result["operators"]:
        lines.append(f"| {r['operator']} | {r['size']} | {r['slices']} | {1e3 * r['A_s']:.1f} | "
                     f"{1e3 * r['A_adjoint_s']:.1f} | {1e3 * r['fbp_s']:.1f} | {1e3 * r['skimage_radon_s']:.0f} | "
                     f"{r['build_s']:.2f} |" if "fbp_s" in r else
                     f"| {r['operator']} | {r['size']} | {r['slices']} | {1e3 * r['A_s']:.1f} | "
                     f"{1e3 * r['A_adjoint_s']:.1f} | – | – | – |")
    (out / "foundation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
