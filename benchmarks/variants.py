"""One Table 2 row of ``ddip benchmark`` under settings the benchmark has no option for (T', ζ, K, L, ...).

    python benchmarks/variants.py --size 256 --task sv-ct-60 --method d3ip --settings '{"t_start":150,"zeta":50}' \\
        [--n-slices 8] [--n-steps 50] [--threads 1] --out OUT [--resume]

The row is made exactly as the benchmark makes its rows (``ddip.benchmark._Run``: the same data, metrics, keys,
checkpoints and resume), so it sits beside the benchmark's own rows in ``OUT/rows.jsonl`` and compares with them.
SIGTERM / SIGINT checkpoint the reconstruction after its current step; rerun the command with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ddip.benchmark import BenchConfig, _measure, _rconfig, _Run, table2_settings
from ddip.signals import Interrupted, StopRequest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--task", choices=sorted(table2_settings(256)), default="sv-ct-60",
                        help="a table 2 setting, as ddip benchmark --table2 names it")
    parser.add_argument("--method", default="d3ip")
    parser.add_argument("--settings", default="{}", help="JSON: ReconstructConfig fields")
    parser.add_argument("--n-slices", type=int, default=8)
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    task, views = table2_settings(args.size)[args.task]
    settings = json.loads(args.settings)
    # a seed is the benchmark's (it draws the measurement noise as well as the sampling noise)
    cfg = BenchConfig(size=args.size, n_slices=args.n_slices, n_steps=args.n_steps, methods=(args.method,),
                      seed=settings.pop("seed", BenchConfig.seed))
    m = _measure(task, cfg, args.n_slices, views)
    rcfg = _rconfig(cfg, method=args.method, n_steps=args.n_steps, **settings)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with StopRequest() as stop:
        run = _Run(cfg, out, "", resume=args.resume, stop=stop)
        label = {"task": task, "views": views if task == "sv-ct" else None, "prior": run.prior_name(task),
                 "variant": json.loads(args.settings)}
        try:
            run.row(m, rcfg, task, label)
        except Interrupted as exc:
            raise SystemExit(f"variants.py: {exc}") from None


if __name__ == "__main__":
    main()
