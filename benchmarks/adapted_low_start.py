"""Does D3IP's adapted network help a sampler that starts near the data? D3IP (defaults: full grid, ζ 300) records
its LoRA trajectory; DDS from T' = 150 then samples once with the last adapted LoRA state and once with the base
weights, on the data sets of benchmarks/sampler.py.

    python benchmarks/adapted_low_start.py [--datasets chest-ct,mni-t1] [--seeds 0,1] [--threads 1]

Prints one JSON line per data set and seed: D3IP's PSNR, DDS from T' 150 with the base and with the adapted weights.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from sampler import measurement


def main() -> None:
    from ddip.adapt import LoRAConfig, inject_lora
    from ddip.adapt.lora import restore
    from ddip.methods import T_START_PLAIN
    from ddip.metrics import psnr
    from ddip.priors import load_prior
    from ddip.reconstruct import ReconstructConfig, reconstruct
    from ddip.solvers import DDS, solve

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="chest-ct,mni-t1")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    base = load_prior("ellipses-64")
    for dataset in args.datasets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            m = measurement(dataset, seed)
            cfg = ReconstructConfig(method="d3ip", seed=seed)
            r = reconstruct(m, cfg, base, record_trajectory=True)
            out = {"dataset": dataset, "seed": seed, "d3ip": float(psnr(r.volume, m.ground_truth).mean())}
            for name, adapted in (("dds_t150", False), ("adapted_t150", True)):
                prior = copy.deepcopy(base)
                if adapted:
                    inject_lora(prior.net, LoRAConfig(rank=cfg.lora_rank, train_biases=cfg.train_biases))
                    restore(prior.net, r.trajectory[max(r.trajectory)])
                x = solve(DDS(t_start=T_START_PLAIN), prior, m.y, m.physics,
                          generator=torch.Generator().manual_seed(seed))
                out[name] = float(psnr(x, m.ground_truth).mean())
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
