"""Run under ``torchrun --nproc-per-node P``: D3IP, D3IP mbir and DDS on a small CT volume, the slices split over the
P ranks (P = 1 is the single-process run). Rank 0 saves the volumes, the LoRA states and the z-difference check to
the file named on the command line. Used by tests/test_distributed.py.
"""

import sys

import torch
import torch.nn.functional as F

from ddip import distributed
from ddip.adapt import AdaptConfig, LoRAConfig, VolumeAdapter, d3ip, d3ip_mbir, inject_lora, snapshot
from ddip.data import load_fixture
from ddip.physics import add_noise, sparse_view_ct
from ddip.physics.sharding import Shard, ShardedPhysics
from ddip.priors import DiffusionPrior, UNetConfig, build_unet
from ddip.solvers import DDS, DiffusionMBIR, solve
from ddip.solvers.tv import diff, diff_adjoint

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,))


def main(out: str) -> None:
    distributed.init_from_env()
    rank, world = distributed.world()
    x = F.interpolate(load_fixture("chest-ct").slices[8:15], size=16, mode="area")  # 7 slices: uneven blocks
    op = sparse_view_ct(16, 6)
    y = add_noise(op.A(x), 0.01, generator=torch.Generator().manual_seed(0))
    shard = Shard.even(y.shape[0], rank, world) if world > 1 else None
    results = {}

    def prior():
        p = DiffusionPrior(build_unet(TINY, seed=0))
        inject_lora(p.net, LoRAConfig(), generator=torch.Generator().manual_seed(1))
        return p

    cfg = AdaptConfig(lr=1e-3, n_iters=2, k=4, chunk=2, zeta=0)  # 2 chunks: one per rank
    for name, fn, step in (("d3ip", d3ip, DDS(n_steps=6)),
                           ("d3ip_mbir", d3ip_mbir, DiffusionMBIR(n_steps=6, rho=0.5, lam=0.01))):
        p = prior()
        vol, _ = fn(step, p, y, op, cfg, generator=torch.Generator().manual_seed(2),
                    adapt_generator=torch.Generator().manual_seed(3), shard=shard)
        results[name] = vol
        for k, v in snapshot(p.net).items():
            results[f"{name}.lora.{k}"] = v

    # one adapted timestep on a given state: the gradient all-reduce gives the single-process LoRA step
    p = prior()
    x_t = torch.randn((7, 1, 16, 16), generator=torch.Generator().manual_seed(5))
    adapter = VolumeAdapter(p, DDS(), y, op, cfg, generator=torch.Generator().manual_seed(3), shard=shard)
    adapter(0, 500, x_t if shard is None else shard.take(x_t), {})
    for k, v in snapshot(p.net).items():
        results[f"once.lora.{k}"] = v

    # plain DDS through the sharded operator
    p = DiffusionPrior(build_unet(TINY, seed=0))
    y_run, phys = (y, op) if shard is None else (shard.take(y), ShardedPhysics(op, shard))
    vol = solve(DDS(n_steps=6), p, y_run, phys, generator=torch.Generator().manual_seed(2))
    results["dds"] = vol if shard is None else shard.gather_volume(vol)

    # the halo exchange: differences along z of a split volume equal those of the whole volume
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    block = v if shard is None else shard.take(v)
    d, da = diff(block, 0, shard), diff_adjoint(block, 0, shard)
    results["diff"] = d if shard is None else shard.gather_volume(d)
    results["diff_adjoint"] = da if shard is None else shard.gather_volume(da)
    if rank == 0:
        torch.save({k: v.contiguous() for k, v in results.items()}, out)
    distributed.close()


if __name__ == "__main__":
    main(sys.argv[1])
