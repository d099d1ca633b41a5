"""The ``ddip`` command line.

``ddip demo`` is the README's main job. Until the diffusion solvers land it runs the end-to-end path that exists:
a slab of the bundled real chest CT, simulated 60-view sparse-view CT with noise, reconstructed by filtered
back-projection and by least squares (CG on the normal equations), written as NIfTI, PNG views, ``config.json`` and
``metrics.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ddip.errors import DdipError


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``ddip demo`` (validated once, saved as ``config.json`` next to the results)."""

    out: str = "out/demo"
    volume: str = "chest-ct"
    n_slices: int = 16
    n_views: int = 60
    noise_sigma: float = 0.01
    cg_iters: int = 30
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.n_slices <= 32:
            raise DdipError(f"--slices must be in [1, 32] (the bundled slab has 32), got {self.n_slices}")
        if self.n_views < 1:
            raise DdipError(f"--views must be >= 1, got {self.n_views}")
        if self.noise_sigma < 0:
            raise DdipError(f"--noise must be >= 0, got {self.noise_sigma}")
        if self.cg_iters < 1:
            raise DdipError(f"--cg-iters must be >= 1, got {self.cg_iters}")


def run_demo(cfg: DemoConfig) -> dict:
    from ddip.data.fixtures import load_fixture
    from ddip.io import write_json, write_nifti, write_png_views
    from ddip.metrics import evaluate_volume
    from ddip.physics import add_noise, conjugate_gradient, sparse_view_ct

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise DdipError(f"{out}: output folder exists and is not empty (pass --overwrite to replace its files)")
    prepared = load_fixture(cfg.volume)
    start = (prepared.slices.shape[0] - cfg.n_slices) // 2
    x_true = prepared.slices[start : start + cfg.n_slices]
    op = sparse_view_ct(x_true.shape[-1], cfg.n_views)
    generator = torch.Generator().manual_seed(cfg.seed)
    y = add_noise(op.A(x_true), cfg.noise_sigma, generator=generator)

    results, timings = {}, {}
    t0 = time.perf_counter()
    results["fbp"] = op.fbp(y).clamp(0, 1)
    timings["fbp"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    rhs = op.A_adjoint(y)
    results["least_squares"] = conjugate_gradient(op.normal, rhs, torch.zeros_like(rhs), n_iter=cfg.cg_iters,
                                                  reduce="slice").clamp(0, 1)
    timings["least_squares"] = time.perf_counter() - t0

    metrics = {}
    for name, x in results.items():
        m = evaluate_volume(x, x_true)
        m.update(method=name, wall_time_s=timings[name])
        metrics[name] = m
        write_nifti(out / f"{name}.nii.gz", x)
    write_nifti(out / "ground_truth.nii.gz", x_true)
    write_png_views(out / "views.png", {"ground truth": x_true, "FBP": results["fbp"],
                                        "least squares": results["least_squares"]},
                    error_of="least squares", reference="ground truth")
    write_json(out / "config.json", {"command": "demo", **asdict(cfg), "volume_record": prepared.record,
                                     "slab_in_fixture": [start, start + cfg.n_slices], "operator": repr(op)})
    write_json(out / "metrics.json", metrics)
    return metrics


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="reconstruct a slab of the bundled chest CT and write a report",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DemoConfig()
    p.add_argument("--out", default=d.out, help=f"output folder (default {d.out})")
    p.add_argument("--slices", dest="n_slices", type=int, default=d.n_slices, help="number of slices (1-32)")
    p.add_argument("--views", dest="n_views", type=int, default=d.n_views, help="CT projection angles")
    p.add_argument("--noise", dest="noise_sigma", type=float, default=d.noise_sigma, help="measurement noise sigma")
    p.add_argument("--cg-iters", type=int, default=d.cg_iters, help="CG steps of the least-squares baseline")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")


def _train_parser(sub: argparse._SubParsersAction) -> None:
    from ddip.priors.train import TrainConfig
    from ddip.priors.unet import UNetConfig

    u, t = UNetConfig(), TrainConfig(out="")
    p = sub.add_parser("train-prior", help="train a diffusion prior on ELLIPSES phantoms made on the fly",
                       description="Train (or resume, if OUT holds a checkpoint) an ADM-style prior on ELLIPSES.")
    p.add_argument("--out", required=True, help="run folder (checkpoint, EMA weights, config, loss log)")
    p.add_argument("--size", type=int, default=u.image_size, help="image size in pixels")
    p.add_argument("--channels", type=int, default=u.model_channels, help="base channel count (multiple of 32)")
    p.add_argument("--mult", type=lambda s: tuple(int(v) for v in s.split(",")), default=u.channel_mult,
                   help="channel multipliers per level, e.g. 1,2,2,4")
    p.add_argument("--res-blocks", type=int, default=u.num_res_blocks, help="residual blocks per level")
    p.add_argument("--attn", type=lambda s: tuple(int(v) for v in s.split(",") if v), default=u.attention_resolutions,
                   help="feature-map sizes with attention, e.g. 16")
    p.add_argument("--head-channels", type=int, default=u.num_head_channels)
    p.add_argument("--batch", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--ema", type=float, default=t.ema_decay)
    p.add_argument("--max-images", type=int, default=t.max_images)
    p.add_argument("--max-hours", type=float, default=t.max_hours, help="stop (after a checkpoint) after this long")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on the CPU (faster; weights stay fp32)")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--checkpoint-minutes", type=float, default=t.checkpoint_minutes)
    p.add_argument("--snapshot-every", type=int, default=t.snapshot_every, help="EMA snapshot every N images")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")


def _run_train(args: argparse.Namespace) -> None:
    from ddip.priors.train import TrainConfig, train_prior
    from ddip.priors.unet import UNetConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    unet = UNetConfig(image_size=args.size, model_channels=args.channels, channel_mult=args.mult,
                      num_res_blocks=args.res_blocks, attention_resolutions=args.attn,
                      num_head_channels=args.head_channels)
    cfg = TrainConfig(out=args.out, unet=unet, batch_size=args.batch, lr=args.lr, ema_decay=args.ema,
                      max_images=args.max_images, max_hours=args.max_hours, bf16=args.bf16, seed=args.seed,
                      checkpoint_minutes=args.checkpoint_minutes, snapshot_every=args.snapshot_every)
    summary = train_prior(cfg)
    print(f"trained to {summary['images']} images ({summary['step']} steps); weights in {summary['out']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ddip", description="Diffusion priors adapted to 3D volumes (DDIP/D3IP)")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo_parser(sub)
    _train_parser(sub)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            cfg = DemoConfig(**{k: v for k, v in vars(args).items() if k != "command"})
            metrics = run_demo(cfg)
            for name, m in metrics.items():
                print(f"{name:>14}: PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  "
                      f"LPIPS {m['lpips'] if m['lpips'] is None else round(m['lpips'], 3)}  ({m['wall_time_s']:.2f} s)")
            print(f"results in {cfg.out}")
        elif args.command == "train-prior":
            _run_train(args)
    except DdipError as exc:
        print(f"ddip: error: {exc}", file=sys.stderr)
        return 2
    return 0

