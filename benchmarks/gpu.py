"""Where the time goes on a GPU, and how close ddip's network paths come to the hardware's limit.

    python benchmarks/gpu.py --out benchmarks/results/gpu             # one H100: about 6 minutes
    python benchmarks/gpu.py --tiny --device cpu --out /tmp/gpu-tiny   # the same code paths at toy sizes (tests)

Sections (each variant against today's path in the same run, so before and after come from one machine):

1. **Network throughput** at 64/128/256 px (the shipped 64 and 128 px priors' networks, the paper's 374 M-parameter
   ELLIPSES-256 ADM network with random weights): FLOPs per image counted by ``torch.utils.flop_counter``, images/s
   and % of the GPU's dense bf16 peak for the forward pass, the LoRA forward+backward of adaptation and a full
   training step, per :class:`~ddip.priors.prior.NetworkSpeed` (precision, channels_last, compile), with each
   variant's deviation from the eager float32 ε.
2. **Training step breakdown** of ``ddip train-prior`` at 64 px (phantoms, noise, forward+backward, AdamW, EMA), then
   ``train_prior`` itself for a few seconds with today's flags and with the fast ones.
3. **Reconstruction**: DDS and D3IP on an N-slice 256² sparse-view CT volume (ELLIPSES slices, 60 views) with today's
   bf16 autocast and with the fast path: wall time, its breakdown, peak memory, the difference between the two
   volumes, and the time D3IP would take on a 256 × 256 × 256 volume at the paper's 50 steps (projected from the
   measured per-forward and per-adaptation-pass costs; the adaptation cost does not grow with the slice count).

Writes ``gpu.json`` and ``gpu.md`` (device name, versions, the command) into ``--out``. Sections stop being started
once ``--budget-s`` is spent, and what was skipped is said in the report.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import platform
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddip.adapt import AdaptConfig, LoRAConfig, inject_lora, trainable_parameters
from ddip.data.phantoms import random_ellipses
from ddip.devices import resolve_device
from ddip.io import write_json
from ddip.priors.adm import ADM_PRESETS, unet_config_from_adm
from ddip.priors.prior import DiffusionPrior, NetworkSpeed
from ddip.priors.schedule import VPSchedule
from ddip.priors.train import TrainConfig, train_prior
from ddip.priors.unet import UNetConfig, build_unet
from ddip.methods import TABLE5
from ddip.reconstruct import ReconstructConfig, reconstruct
from ddip.tasks import TaskConfig, paper_views, simulate

# Dense bf16 tensor-core peaks (FLOP/s, no sparsity), by a substring of the device name.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "RTX 4090": 165e12, "RTX 3090": 71e12}

TODAY = NetworkSpeed("bfloat16")  # the path of main before this benchmark: bf16 autocast, NCHW, eager
# channels_last was slower than NCHW in every pass and size of the first H100 run (benchmarks/results/gpu), so one
# channels_last variant is kept as evidence and the others were dropped to save the budget
INFERENCE = {"fp32": NetworkSpeed(), "bf16-autocast": TODAY, "bf16-weights": NetworkSpeed("bfloat16-weights"),
             "bf16-weights+cl": NetworkSpeed("bfloat16-weights", channels_last=True)}
FAST = INFERENCE["bf16-weights"]
TRAINING = {"fp32": NetworkSpeed(), "bf16-autocast": TODAY}


def networks(tiny: bool) -> dict[str, UNetConfig]:
    if tiny:
        return {"16": UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,))}
    return {"64": UNetConfig(), "128": UNetConfig(image_size=128, attention_resolutions=(32,)),
            "256": unet_config_from_adm(ADM_PRESETS["ellipses-256"])}


def batches(tiny: bool) -> dict[str, int]:
    return {"16": 4} if tiny else {"64": 256, "128": 64, "256": 16}


ERRORS: list[str] = []  # variants that failed: reported, and the others still run
ON_ROW: list = []  # called after every variant (the report is saved there)


@contextmanager
def guard(what: str):
    try:
        yield
        for fn in ON_ROW:
            fn()
    except Exception as exc:  # noqa: BLE001 (one failing variant must not lose the whole run's numbers)
        ERRORS.append(f"{what}: {type(exc).__name__}: {exc}"[:600])
        print(f"FAILED {ERRORS[-1]}", flush=True)


class Clock:
    """Seconds since the start, and whether the budget still allows a section of ``need`` seconds."""

    def __init__(self, budget: float):
        self.t0, self.budget, self.skipped = time.perf_counter(), budget, []

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def allows(self, what: str, need: float) -> bool:
        if self.left() >= need:
            return True
        self.skipped.append(what)
        print(f"skipped (budget): {what}", flush=True)
        return False


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_second(fn, items: int, device: torch.device, min_time: float) -> float:
    """Items per second of ``fn`` after two warm-up calls, timed over at least ``min_time`` s and 3 calls."""
    fn(), fn()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - t0 < min_time:
        fn()
        n += 1
        if n % 4 == 0:
            sync(device)
    sync(device)
    return n * items / (time.perf_counter() - t0)


def flops_of(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


# -- 1. network throughput ----------------------------------------------------------------------------------------
COMPILED = {"forward": {"bf16-weights+compile": NetworkSpeed("bfloat16-weights", compile=True)},
            "train_step": {"bf16-autocast+compile": NetworkSpeed("bfloat16", compile=True)}}


def network_rows(cfg: UNetConfig, size: str, batch: int, device: torch.device, peak: float | None, args,
                 clock: Clock, plan: dict[str, dict[str, NetworkSpeed]]) -> list[dict]:
    """Throughput rows for the passes and variants of ``plan`` (``{"forward"|"lora_fwd_bwd"|"train_step":
    {name: speed}}``); each forward variant's ε is compared with the eager float32 one."""
    base = DiffusionPrior(build_unet(cfg, seed=0).to(device).eval())
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    t = 500
    with torch.no_grad():
        reference = base.eps(x, t)
    rows = []

    def row(kind: str, variant: str, rate: float, flops_per_image: float, **extra) -> None:
        r = {"size": size, "kind": kind, "variant": variant, "batch": batch, "images_per_s": rate,
             "flop_per_image": flops_per_image, "tflop_s": rate * flops_per_image / 1e12,
             "percent_of_peak": None if peak is None else 100 * rate * flops_per_image / peak, **extra}
        rows.append(r)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}), flush=True)

    def need(speed: NetworkSpeed) -> float:
        return args.compile_need if speed.compile else 10

    forward_flops = flops_of(lambda: base.eps(x[:1], t))
    for name, speed in plan.get("forward", {}).items():
        if not clock.allows(f"forward {name} at {size} px", need(speed)):
            continue
        with guard(f"forward {name} at {size} px"):
            prior = base.with_speed(speed)
            t0 = time.perf_counter()
            with torch.no_grad():
                eps = prior.eps(x, t)
                sync(device)
                first_call = time.perf_counter() - t0
                dev = float((eps - reference).norm() / reference.norm())
                rate = per_second(lambda prior=prior: prior.eps(x, t), batch, device, args.min_time)
            row("forward", name, rate, forward_flops, relative_error_vs_fp32=dev, first_call_s=first_call)

    # LoRA forward + backward: the adaptation's network pass (gradients into LoRA only), K = 6 images at a time
    xb = x[: min(batch, 6)]
    lora_flops = None
    for name, speed in plan.get("lora_fwd_bwd", {}).items():
        if not clock.allows(f"lora {name} at {size} px", need(speed)):
            continue
        with guard(f"lora {name} at {size} px"):
            prior = copy.deepcopy(base.with_speed(speed))
            inject_lora(prior.net, LoRAConfig(), generator=torch.Generator().manual_seed(1))
            params = list(trainable_parameters(prior.net).values())

            def lora_pass(xb=xb, prior=prior, params=params):
                loss = prior.eps(xb, t).float().square().mean()
                loss.backward()
                for q in params:
                    q.grad = None

            lora_flops = lora_flops or flops_of(lambda: lora_pass(xb[:1]))
            row("lora_fwd_bwd", name, per_second(lora_pass, xb.shape[0], device, args.min_time), lora_flops,
                batch_used=xb.shape[0])

    # one training step: forward, backward into every weight, AdamW (fused on a GPU)
    train_flops = None
    for name, speed in plan.get("train_step", {}).items():
        if not clock.allows(f"train {name} at {size} px", need(speed) + 5):
            continue
        with guard(f"train {name} at {size} px"):
            net = build_unet(cfg, seed=0).to(device)
            if speed.channels_last:
                net = net.to(memory_format=torch.channels_last)
            prior = DiffusionPrior(net, channels_last=speed.channels_last, compile=speed.compile)
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
            gen = torch.Generator(device=device).manual_seed(0)
            x0 = torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)

            def train_step(x0=x0, prior=prior, opt=opt, gen=gen, bf16=speed.precision != "float32"):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    loss = prior.loss(x0, generator=gen).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            if train_flops is None:
                plain = DiffusionPrior(build_unet(cfg, seed=0).to(device))
                train_flops = flops_of(lambda: plain.loss(x0[:1], generator=gen).mean().backward())
            t0 = time.perf_counter()
            train_step()
            sync(device)
            first = time.perf_counter() - t0
            row("train_step", name, per_second(train_step, batch, device, args.min_time), train_flops,
                first_call_s=first)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


# -- 2. training ---------------------------------------------------------------------------------------------------
def training_breakdown(device: torch.device, args) -> dict:
    """Seconds per step of each part of a train-prior step at 64 px (today's settings), each timed on its own."""
    size, batch = (16, 8) if args.tiny else (64, 256)
    cfg = UNetConfig(image_size=size, model_channels=32, channel_mult=(1, 2) if args.tiny else (1, 2, 2, 4),
                     attention_resolutions=(8,) if args.tiny else (16,))
    net = build_unet(cfg, seed=0).to(device)
    prior = DiffusionPrior(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    cpu_g, dev_g = torch.Generator().manual_seed(0), torch.Generator(device=device).manual_seed(0)
    x0 = random_ellipses(batch, size, generator=cpu_g, device=device)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items() if v.dtype.is_floating_point}
    params = net.state_dict()

    def fwd_bwd():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = prior.loss(x0, generator=dev_g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()

    parts = {
        "phantoms_cpu_rng": lambda: random_ellipses(batch, size, generator=cpu_g, device=device),
        "phantoms_device_rng": lambda: random_ellipses(batch, size, generator=dev_g, device=device),
        "noise_cpu_rng": lambda: (torch.randn(x0.shape, generator=cpu_g).to(device),
                                  torch.randint(0, 1000, (batch,), generator=cpu_g).to(device)),
        "noise_device_rng": lambda: (torch.randn(x0.shape, generator=dev_g, device=device),
                                     torch.randint(0, 1000, (batch,), generator=dev_g, device=device)),
        "forward_backward_bf16": fwd_bwd,
        "adamw": lambda: opt.step(),
        "ema": lambda: torch._foreach_lerp_(list(ema.values()), [params[k] for k in ema], 0.001),
    }
    fwd_bwd()
    out = {}
    for name, fn in parts.items():
        steps_per_s = per_second(fn, 1, device, args.min_time)
        out[name] = 1.0 / steps_per_s
    out["batch"] = batch
    print(json.dumps({"training_breakdown_s_per_step": out}), flush=True)
    return out


def training_runs(device: torch.device, args, clock: Clock, rows: list) -> None:
    """``train_prior`` itself for ``--train-secs`` seconds per setting; images/s from the loss log's later lines."""
    size = 16 if args.tiny else 64
    unet = UNetConfig(image_size=size, model_channels=32, channel_mult=(1, 2) if args.tiny else (1, 2, 2, 4),
                      attention_resolutions=(8,) if args.tiny else (16,))
    small = 8 if args.tiny else 256
    settings = {
        "today (bf16 autocast, batch 256, CPU random streams)": dict(batch_size=small, bf16=True),
        "bf16 + device rng, batch 256": dict(batch_size=small, bf16=True, rng="device"),
        "bf16 + device rng, batch 1024": dict(batch_size=4 * small, bf16=True, rng="device", lr=2e-4,
                                              warmup_steps=20),
    }
    if args.compile_train:
        settings["bf16 + device rng + compile, batch 1024"] = dict(
            batch_size=4 * small, bf16=True, rng="device", compile=True, lr=2e-4, warmup_steps=20)
    for name, kw in settings.items():
        need = args.train_secs + (args.compile_need if kw.get("compile") else 10)
        if not clock.allows(f"train_prior: {name}", need):
            continue
        with guard(f"train_prior: {name}"):
            tmp = Path(tempfile.mkdtemp(prefix="ddip-gpu-train-"))
            try:
                cfg = TrainConfig(out=str(tmp), unet=unet, device=str(device), max_hours=args.train_secs / 3600,
                                  log_every=5 if args.tiny else 20, snapshot_every=0, checkpoint_minutes=1e9, seed=0,
                                  max_images=10**12, **kw)
                summary = train_prior(cfg, progress=False)
                lines = (tmp / "loss_log.csv").read_text().strip().splitlines()[1:]
                logged = [[float(v) for v in line.split(",")] for line in lines]
                later = logged[len(logged) // 2:] or logged  # past compilation and cuDNN's autotuning
                rate = sum(r[3] for r in later) / len(later) if later else float("nan")
                row = {"setting": name, **{k: v for k, v in kw.items()}, "images": summary["images"],
                       "elapsed_s": summary["elapsed_s"], "images_per_s": rate,
                       "last_loss": logged[-1][2] if logged else None}
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            rows.append(row)
            print(json.dumps(row), flush=True)


# -- 3. reconstruction ---------------------------------------------------------------------------------------------
def reconstruction(device: torch.device, args, clock: Clock, out: dict) -> None:
    """Fills ``out`` (``runs``, ``relative_difference``, ``d3ip_256_cubed_projection``) as the runs finish."""
    ucfg = networks(args.tiny)["16" if args.tiny else "256"]
    size = ucfg.image_size
    prior = DiffusionPrior(build_unet(ucfg, seed=0).eval())  # random weights: the cost, not the quality
    volume = random_ellipses(args.slices, size, generator=torch.Generator().manual_seed(0))
    m = simulate(volume, TaskConfig(task="sv-ct", size=size, views=paper_views(size), seed=0))
    steps = args.recon_steps
    runs, volumes = out.setdefault("runs", []), {}
    plan = [("dds", "fp32", NetworkSpeed()), ("dds", "today", TODAY), ("dds", "fast", FAST),
            ("d3ip", "today", TODAY), ("d3ip", "fast", FAST)]
    for method, label, speed in plan:
        if not clock.allows(f"{method} {label}", 15 if method == "dds" else 30):
            continue
        with guard(f"{method} {label}"):
            cfg = ReconstructConfig(method=method, n_steps=steps, precision=speed.precision,
                                    channels_last=speed.channels_last, compile=speed.compile)
            # an untimed warm-up with the same shapes first: cuDNN's autotuning of every new convolution shape (and
            # a compilation) would otherwise be timed as sampling (the first H100 run of this section was)
            warm = dataclasses.replace(cfg, n_steps=1) if method == "dds" else dataclasses.replace(cfg, n_steps=4,
                                                                                                   n_iters=1)
            reconstruct(m, warm, prior, device=device)
            res = reconstruct(m, cfg, prior, device=device)
            volumes[(method, label)] = res.volume
            row = {"method": method, "speed": label, "slices": args.slices, "steps": steps, "size": size,
                   "wall_time_s": res.wall_time_s, "peak_memory_mb": res.peak_memory_mb,
                   "time_breakdown_s": res.report["time_breakdown_s"],
                   "forward_passes": res.report.get("network_forward_passes"),
                   "adapt_passes": res.report.get("network_adapt_passes")}
            runs.append(row)
            print(json.dumps(row), flush=True)
    ref = volumes.get(("dds", "fp32"))
    for (method, label), v in volumes.items():
        base = ref if method == "dds" else volumes.get((method, "today"))
        if base is not None and v is not base:
            out.setdefault("relative_difference", {})[f"{method} {label}"] = float((v - base).norm() / base.norm())
    # D3IP on a 256³ volume at the paper's 50 steps, from this run's costs per network pass
    by = {(r["method"], r["speed"]): r for r in runs}
    k, n_iters, _ = TABLE5["sv-ct"]["d3ip"]
    sched = prior.schedule.timesteps(50).tolist()
    adapted_50 = sum(AdaptConfig().adapts_at(t, sched[0]) for t in sched)
    projection = {}
    for label in ("today", "fast"):
        dds, d3 = by.get(("dds", label)), by.get(("d3ip", label))
        if dds is None or d3 is None or not d3["adapt_passes"]:
            continue
        per_forward = dds["wall_time_s"] / dds["forward_passes"]
        per_adapt_pass = max(0.0, d3["wall_time_s"] - dds["wall_time_s"]) / d3["adapt_passes"]
        total = per_forward * 256 * 50 + per_adapt_pass * adapted_50 * n_iters * k
        projection[label] = {"seconds_per_forward_image": per_forward, "seconds_per_adapt_pass": per_adapt_pass,
                             "d3ip_256cubed_50_steps_s": total}
    out["d3ip_256_cubed_projection"] = projection


def d3ip_work_256_cubed() -> tuple[int, int]:
    """Network images of D3IP on 256 slices at the paper's 50 steps: forward passes, LoRA forward+backward passes."""
    k, n_iters, _ = TABLE5["sv-ct"]["d3ip"]
    sched = VPSchedule.linear().timesteps(50).tolist()
    adapted = sum(AdaptConfig().adapts_at(t, sched[0]) for t in sched)
    return 256 * 50, adapted * n_iters * k


def projection_from_networks(rows: list[dict]) -> dict:
    """D3IP on 256³ from the 256 px network rows alone (the data-consistency steps, < 2 % of the measured runs'
    time, left out): forward images / forward rate + LoRA images / LoRA rate, per variant measured both ways."""
    forward_images, lora_images = d3ip_work_256_cubed()
    rate = {(r["kind"], r["variant"]): r["images_per_s"] for r in rows if r["size"] == "256"}
    out = {}
    for (kind, variant), fwd in rate.items():
        lora = rate.get(("lora_fwd_bwd", variant))
        if kind == "forward" and lora:
            out[variant] = {"forward_s": forward_images / fwd, "lora_s": lora_images / lora,
                            "total_s": forward_images / fwd + lora_images / lora}
    return out


# -- report --------------------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    env = report["environment"]
    peak = "n/a" if report["peak_tflops"] is None else f"{report['peak_tflops']:.0f} TFLOP/s (dense bf16)"
    lines = [f"# GPU benchmark: {env['device_name']}", "",
             f"`{report['command']}` — torch {env['torch']}, CUDA {env['cuda']}, {report['date']}, "
             f"{report['total_s']:.0f} s. Peak used for %: {peak}.",
             "", "## Network throughput", "",
             "| px | pass | variant | batch | GFLOP/img | img/s | TFLOP/s | % peak | rel. err. vs fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["networks"]:
        pct = "" if r["percent_of_peak"] is None else f"{r['percent_of_peak']:.1f}"
        err = r.get("relative_error_vs_fp32")
        lines.append(f"| {r['size']} | {r['kind']} | {r['variant']} | {r.get('batch_used', r['batch'])} | "
                     f"{r['flop_per_image'] / 1e9:.2f} | {r['images_per_s']:.1f} | {r['tflop_s']:.2f} | {pct} | "
                     f"{'' if err is None else f'{err:.1e}'} |")
    if report.get("training_breakdown"):
        b = report["training_breakdown"]
        lines += ["", f"## One training step at 64 px, batch {b['batch']}, each part alone (ms)", "",
                  "| part | ms |", "|---|---|"]
        lines += [f"| {k} | {1000 * v:.2f} |" for k, v in b.items() if k != "batch"]
    if report.get("training_runs"):
        lines += ["", "## `train_prior` end to end", "", "| setting | images/s | images | last loss |",
                  "|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['images_per_s']:.0f} | {r['images']} | {r['last_loss']} |"
                  for r in report["training_runs"]]
    rec = report.get("reconstruction") or {}
    if rec.get("runs"):
        lines += ["", "## Reconstruction (sparse-view CT, random-weight network: cost only)", "",
                  "| method | speed | slices × steps | px | wall s | network fwd s | network bwd s | DC s | other s | "
                  "peak MB |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rec["runs"]:
            b = r["time_breakdown_s"]
            lines.append(f"| {r['method']} | {r['speed']} | {r['slices']} × {r['steps']} | {r['size']} | "
                         f"{r['wall_time_s']:.2f} | {b.get('network_forward', 0):.2f} | "
                         f"{b.get('network_backward', 0):.2f} | "
                         f"{b.get('data_consistency', 0) + b.get('data_consistency_backward', 0):.2f} | "
                         f"{b.get('other', 0):.2f} | {r['peak_memory_mb']:.0f} |")
        for k, v in rec.get("relative_difference", {}).items():
            lines.append(f"\nrelative difference of the {k} volume from the reference (fp32 for DDS, today's path "
                         f"for D3IP): {v:.2e}")
        for label, p in rec.get("d3ip_256_cubed_projection", {}).items():
            lines.append(f"\nD3IP on 256³ at 50 steps, projected ({label}): {p['d3ip_256cubed_50_steps_s']:.0f} s "
                         f"({p['seconds_per_forward_image'] * 1e3:.1f} ms per forward image, "
                         f"{p['seconds_per_adapt_pass'] * 1e3:.1f} ms per adaptation pass); paper: 40 min on an "
                         "RTX 3090")
    projected = projection_from_networks(report["networks"])
    if projected:
        fwd, lora = d3ip_work_256_cubed()
        lines += ["", f"## D3IP on 256³ at 50 steps from the network rows ({fwd} forward + {lora} LoRA "
                  "forward+backward images; data consistency left out)", "",
                  "| variant | forward s | LoRA s | total s |", "|---|---|---|---|"]
        lines += [f"| {v} | {p['forward_s']:.0f} | {p['lora_s']:.0f} | {p['total_s']:.0f} |"
                  for v, p in projected.items()]
    if report["errors"]:
        lines += ["", "Failed: " + "; ".join(report["errors"])]
    if report["skipped"]:
        lines += ["", "Skipped for the time budget: " + "; ".join(report["skipped"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--tiny", action="store_true", help="toy sizes: the code paths, not the speed (tests, CPU)")
    p.add_argument("--budget-s", type=float, default=400.0, help="start no section after this many seconds")
    p.add_argument("--min-time", type=float, default=None, help="seconds per throughput measurement")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile (a minute or more each)")
    p.add_argument("--compile-train", action="store_true", help="also run train_prior with --compile")
    p.add_argument("--compile-need", type=float, default=120.0, help="seconds to reserve for one compilation")
    p.add_argument("--train-256", action="store_true", help="also time training steps of the 256 px network")
    p.add_argument("--train-secs", type=float, default=None, help="seconds per train_prior run")
    p.add_argument("--slices", type=int, default=None, help="slices of the reconstructed volume")
    p.add_argument("--recon-steps", type=int, default=None, help="sampling steps of the reconstructions")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, if not known")
    p.add_argument("--sections", default="networks,reconstruction,training,compile",
                   help="which sections, in this order of priority: networks, reconstruction, training, compile")
    p.add_argument("--batches", default="", help="batch per network size instead of the defaults, e.g. 64=1024")
    args = p.parse_args(argv)
    args.min_time = args.min_time if args.min_time is not None else (0.02 if args.tiny else 0.5)
    args.train_secs = args.train_secs if args.train_secs is not None else (2.0 if args.tiny else 20.0)
    args.slices = args.slices or (2 if args.tiny else 16)
    args.recon_steps = args.recon_steps or (4 if args.tiny else 10)  # 4: two adapted steps
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 here: the reference path
    clock = Clock(args.budget_s)
    peak = peak_flops(device, args.peak_tflops)
    sections = set(args.sections.split(","))
    report: dict = {"command": "python benchmarks/gpu.py " + " ".join(sys.argv[1:] if argv is None else argv),
                    "date": time.strftime("%Y-%m-%d"), "peak_tflops": None if peak is None else peak / 1e12,
                    "environment": {"device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
                                    else platform.processor() or platform.machine(),
                                    "torch": torch.__version__, "cuda": torch.version.cuda,
                                    "cpu_threads": torch.get_num_threads()},
                    "networks": [], "skipped": clock.skipped, "errors": ERRORS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        report["total_s"] = time.perf_counter() - clock.t0
        write_json(out / "gpu.json", report)
        (out / "gpu.md").write_text(markdown(report))

    nets, sizes = networks(args.tiny), batches(args.tiny)
    sizes.update({k: int(v) for k, v in (item.split("=") for item in args.batches.split(",") if item)})
    ON_ROW.append(save)  # every finished variant is written at once: a run stopped from outside keeps its rows
    # the most wanted numbers first; compilation (a minute or more each) last, while the budget lasts
    if "networks" in sections:
        for size, cfg in nets.items():
            plan = {"forward": INFERENCE, "lora_fwd_bwd": INFERENCE,
                    "train_step": TRAINING if size != "256" or args.train_256 else {}}
            report["networks"] += network_rows(cfg, size, sizes[size], device, peak, args, clock, plan)
    if "reconstruction" in sections:
        report["reconstruction"] = {}
        reconstruction(device, args, clock, report["reconstruction"])
    if "training" in sections:
        with guard("training breakdown"):
            report["training_breakdown"] = training_breakdown(device, args)
        report["training_runs"] = []
        training_runs(device, args, clock, report["training_runs"])
    if args.compile and "compile" in sections:
        largest, smallest = max(nets, key=int), min(nets, key=int)
        for size, plan in ((largest, {"forward": {"bf16-weights": INFERENCE["bf16-weights"], **COMPILED["forward"]}}),
                           (smallest, {"train_step": {"bf16-autocast": TODAY, **COMPILED["train_step"]}})):
            report["networks"] += network_rows(nets[size], size, sizes[size], device, peak, args, clock, plan)
    save()
    print(f"wrote {out / 'gpu.md'} ({report['total_s']:.0f} s)", flush=True)
    return report


if __name__ == "__main__":
    main()
