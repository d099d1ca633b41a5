"""The ``ddip`` command line: simulate, import, reconstruct, demo, benchmark, train-prior, prior-gate, convert-prior.

Every command validates its settings once, prints one clear ``ddip: error: ...`` line and exits with status 2 on bad
input, and writes its outputs atomically with the resolved configuration beside them.
"""

from __future__ import annotations

import os

# How idle OpenMP threads wait, chosen by the machine's load at start-up unless the user set OMP_WAIT_POLICY. It
# must be set before torch loads its OpenMP runtime: the imports below come after it on purpose. On a busy machine
# threads that spin collapse both jobs (two 2-thread runs on 2 cores: 4.05x their lone time) and sleeping threads
# (PASSIVE) do not (1.03x); on an idle one PASSIVE costs up to 2x in small-batch passes (docs/usage.md, "Threads"),
# so it is set only when the 1-minute load average is already half the cores or more.
BUSY_LOAD_PER_CORE = 0.5


def busy(load: float, cores: int) -> bool:
    """Whether a machine with this 1-minute load average already runs work enough to make spinning threads harmful."""
    return load >= BUSY_LOAD_PER_CORE * cores


def _load_average() -> float:
    """The 1-minute load average; where the system has none, infinity (then threads sleep: the safe policy)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return float("inf")


if "OMP_WAIT_POLICY" not in os.environ and busy(_load_average(), os.cpu_count() or 1):
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import argparse
import json
import logging
import math
import platform
import signal
import sys
import dataclasses
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ddip import __version__, distributed
from ddip.benchmark import QUICK, TABLES, BenchConfig, run_benchmark
from ddip.checkpoint import CHECKPOINT_EVERY, Checkpointer
from ddip.data import DEV_VOLUMES, dev_volume_path, prepare_volume, read_volume
from ddip.data.fastmri import parse_slices
from ddip.data.fixtures import FIXTURES, load_fixture
from ddip.data.volumes import MU_WATER_PER_MM, parse_slab, spread_to_source_units, to_source_units
from ddip.devices import DEVICE_HELP
from ddip.errors import DdipError, first_line
from ddip.evaluation import GATE_IMAGES, GATE_MARGIN_DB, GATE_SEED, VALIDATION_SEED, gate_curve
from ddip.io import write_json, write_png_views
from ddip.outputs import DISPLAY_WINDOWS, UNITS, display, scores, write_result
from ddip.priors import ADM_PRESETS, adm_config, convert_adm_checkpoint, default_prior, load_prior
from ddip.priors.adm import adm_parameters
from ddip.priors.prior import PRECISIONS, PURE_NOISE_ALPHA_BAR
from ddip.priors.schedule import T_DEFAULT, VPSchedule
from ddip.priors.train import PHANTOM_DATA, TrainConfig, data_channels, train_prior
from ddip.priors.unet import UNetConfig
from ddip.methods import LR_TUNED, REGISTRY, T_START_PLAIN, ZETA_LOW_START, names
from ddip.adapt import AdaptConfig
from ddip.adapt.adapter import PAPER_ZETA
from ddip.reconstruct import (INTENSITY_RANGE, NORMALISE, PRESETS, ReconstructConfig, reconstruct_samples,
                             resolved_settings, with_preset)
from ddip.signals import Interrupted, StopRequest
from ddip.solvers import DDNM, DDS, DPS, DiffusionMBIR
from ddip.solvers.base import INITS, NOISE_MIXES, DataConsistencyStep
from ddip.solvers.dds import DC_VARIANTS, PAPER_CG_ITERS
from ddip.tasks import (
    TASKS,
    TaskConfig,
    open_measurement,
    paper_views,
    parse_angles,
    save_measurement,
    simulate,
    sinogram_measurement,
)

LOG_LEVELS = ("debug", "info", "warning", "error")
DEMO_PRIOR = "ellipses-64"
# The demo's D3IP budget: K = 3 slices, L = 3 optimiser steps per adapted timestep. With the default sampler and
# window, L = 3 gave the same PSNR as L = 7 and 5 (means of seeds 0/1 on chest CT, phantoms, MNI T1: 30.85 / 30.49 /
# 28.41 dB against 30.73 / 30.44 / 28.48 for L = 7) in under half the time (docs/results.md, "The demo").
DEMO_K, DEMO_ITERS = 3, 3
# Posterior samples per diffusion method in the demo: the mean of 4 DDS samples gained 2.6 dB over one on the demo's
# data, D3IP's (one adaptation, 3 replays) 1.2 dB (benchmarks/results/samples.json), for about 30 s more per method.
DEMO_SAMPLES = 4


# Which method to use: the README's table (measured on 8 slices, 64 px, one CPU thread; commands in docs/results.md).
METHOD_ADVICE = """which method (measured on 8 slices, 64 px, one CPU thread; commands in docs/results.md):
  CT, 15 views   dds --samples 4 (32.07 dB; one sample 31.51) or mbir (31.96, one sample); admm-tv 30.78
  CT, 60 views   admm-tv (44.61 dB), then dds (42.25)
  3D MRI x8      dds (29.08 dB); ddnm 28.88; admm-tv 27.82
  CS-MRI x4      dds (24.61 dB); admm-tv 21.00
cost (one thread): dds 20-30 s, ddnm, mbir 45-65 s; d3ip and d3ip-mbir 3-6 min; ddip, scd, d3ip-meta longer;
dps 1000 steps per slice. At 64 px d3ip and d3ip-mbir trail dds (it samples from T' 150); at 256 px (CT, 60 views),
where they start at T' 150 too, d3ip-mbir leads: 40.88 dB, mbir 40.23, admm-tv 39.73, dds 39.01."""


# -- helpers ---------------------------------------------------------------------------------------------------------
def _load_config_file(path: str | None) -> dict:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise DdipError(f"{p}: no such config file")
    try:
        cfg = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DdipError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise DdipError(f"{p}: a config file holds one JSON object of option names and values")
    return cfg


def _refuse_dangling_link(out: Path) -> None:
    if out.is_symlink() and not out.exists():
        raise DdipError(f"{out}: is a link to {os.readlink(out)}, which does not exist")


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless told; the folder itself is created only when results are written."""
    _refuse_dangling_link(out)
    if out.exists() and not out.is_dir():
        raise DdipError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DdipError(f"{out}: output exists and is not empty (pass --overwrite to replace its files)")


def _check_out_file(out: Path, overwrite: bool, what: str) -> None:
    """Refuse to write a file over a folder, through a dangling link, or over an existing file unless told."""
    _refuse_dangling_link(out)
    if out.is_dir():
        raise DdipError(f"{out}: is a folder; --out names {what} to write (.safetensors)")
    if out.suffix.lower() != ".safetensors":
        raise DdipError(f"{out}: {what} is written as safetensors; name it *.safetensors")
    if out.exists() and not overwrite:
        raise DdipError(f"{out}: exists (pass --overwrite to replace it)")


def _volume(spec: str, modality: str, size: int, slab: tuple[int | None, int | None] | None, n_slices: int | None,
            *, slice_axis: int | None = None, voxel_mm: tuple[float, ...] | None = None):
    """A prepared volume from a path, a development volume name or a bundled fixture name.

    ``slice_axis`` defaults to 2 for NIfTI and DICOM (axial slices of the RAS+ volume) and to 0 for ``.npy`` arrays
    (slices first, as ddip's own arrays and the sinogram import); ``voxel_mm`` gives an array's voxel size."""
    if spec.startswith("fixture:"):
        name = spec.split(":", 1)[1]
        if name not in FIXTURES:
            raise DdipError(f"unknown fixture {name!r}; choose one of {sorted(FIXTURES)}")
        prepared = load_fixture(name)
        if size != prepared.slices.shape[-1]:
            raise DdipError(f"the bundled fixtures are 64 px; use --size 64 or the full volume {name!r}")
        x = prepared.slices
        if slab is not None:
            x = x[slab[0] : slab[1]]
        elif n_slices is not None:
            if not 1 <= n_slices <= x.shape[0]:
                raise DdipError(f"fixture {name!r} has {x.shape[0]} slices; --n-slices must lie in 1..{x.shape[0]}, "
                                f"got {n_slices}")
            start = (x.shape[0] - n_slices) // 2
            x = x[start : start + n_slices]
        if x.shape[0] == 0:
            raise DdipError(f"slab {slab} of fixture {name!r} is empty")
        return x, dict(prepared.record, fixture=name)
    path = dev_volume_path(spec) if spec in DEV_VOLUMES else Path(spec)
    raw = read_volume(path)
    array = raw.orientation == "array"
    if voxel_mm is not None:
        if not array:
            raise DdipError(f"{path}: --voxel-mm is for arrays without a header; this file gives its own "
                            f"({', '.join(f'{v:g}' for v in raw.spacing)} mm)")
        if len(voxel_mm) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_mm):
            raise DdipError(f"--voxel-mm needs three positive sizes in mm (one per array axis), got {voxel_mm}")
        raw = dataclasses.replace(raw, spacing=tuple(float(v) for v in voxel_mm))
    axis = (0 if array else 2) if slice_axis is None else slice_axis
    prepared = prepare_volume(raw, modality=modality, size=size, slab=slab, n_slices=n_slices, slice_axis=axis)
    shape = raw.data.shape
    plane = [shape[a] for a in range(3) if a != axis]
    print(f"read {path}: shape {tuple(shape)}, slices along axis {axis} ({shape[axis]} slices of {plane[0]} x "
          f"{plane[1]}), voxels {' x '.join(f'{v:g}' for v in raw.spacing)} mm"
          f"{' (assumed: give --voxel-mm)' if array and voxel_mm is None else ''}; "
          f"using slices {prepared.record['slab'][0]}:{prepared.record['slab'][1]}", file=sys.stderr)
    return prepared.slices, prepared.record


# -- commands ----------------------------------------------------------------------------------------------------------
def cmd_simulate(args: argparse.Namespace) -> None:
    cfg = TaskConfig(task=args.task, size=args.size, views=args.views, acceleration=args.acceleration,
                     noise=args.noise, seed=args.seed)
    out = Path(args.out)
    _check_out_file(out, args.overwrite, "the measurement file")
    modality = "ct" if args.task == "sv-ct" else "mri"
    volume, record = _volume(args.volume, modality, args.size, parse_slab(args.slices), args.n_slices,
                             slice_axis=args.slice_axis, voxel_mm=args.voxel_mm)
    m = simulate(volume, cfg, record=record)
    save_measurement(out, m)
    print(f"{args.task}: {volume.shape[0]} slices of {args.size} px -> {out}")


def cmd_reconstruct(args: argparse.Namespace) -> None:
    """One reconstruction; under ``torchrun`` every rank samples a block of slices and rank 0 writes the results."""
    with distributed.process_group():
        _reconstruct(args, distributed.world()[0])


def _reconstruct(args: argparse.Namespace, rank: int) -> None:
    m = open_measurement(args.measurement)  # a measurement file, or raw fastMRI k-space (.h5) imported as is
    cfg = reconstruct_config(args)
    out = Path(args.out)
    if rank == 0:
        _check_out(out, args.overwrite or args.resume)
    distributed.any_flag(False)  # every rank waits for rank 0's check of the output folder
    if args.prior is None and args.method != "admm-tv":
        args.prior = default_prior(m.config.task, m.config.size)
    prior = None if args.method == "admm-tv" else load_prior(args.prior)
    config = {"command": "reconstruct", "measurement": str(args.measurement), "prior": args.prior,
              "device": args.device, **asdict(cfg), "task": asdict(m.config), "volume_record": m.record}
    config["world_size"] = distributed.world()[1]
    config["resolved"] = resolved_settings(cfg, m.config, m.y.shape[0])
    config["options"] = replay_options(args)
    with StopRequest() as stop:  # SIGTERM / SIGINT: checkpoint after the current step, then stop
        ckpt = Checkpointer(out / "checkpoint.pt", config, every=args.checkpoint_every, stop=stop)
        if rank == 0 and not args.resume:
            ckpt.remove()
        elif rank == 0 and not any(out.glob("checkpoint*.pt")):
            print(f"ddip: no checkpoint in {out}; starting from the beginning", file=sys.stderr)
        distributed.any_flag(False)
        result = reconstruct_samples(m, cfg, prior, device=args.device,
                                     progress=not args.quiet and rank == 0, checkpointer=ckpt)
    if rank != 0:
        return
    metrics = write_result(out, result.volume, m.ground_truth, method=args.method, wall=result.wall_time_s,
                           record=m.record, units=args.units, display_window=args.display_window,
                           peak_mb=result.peak_memory_mb, report=result.report, std=result.std,
                           config={**config, "environment": environment()})
    ckpt.remove()
    _print_metrics(args.method, metrics)
    print(f"results in {out}")


def environment() -> dict:
    """What a bit-identical rerun needs besides the settings: the thread count and the library versions."""
    import diffusers
    import numpy
    import peft

    return {"torch_threads": torch.get_num_threads(), "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
            "ddip": __version__, "machine": platform.machine()}


def config_fields(cls, args: argparse.Namespace) -> dict:
    """The fields of the config dataclass ``cls`` that parsed options give: every flag is named after its field
    (``--n-steps`` sets ``n_steps``; older short names stay as aliases). An option left at None was not given and
    leaves the field to ``cls``."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}


def reconstruct_config(args: argparse.Namespace) -> ReconstructConfig:
    """The reconstruction settings of parsed ``ddip reconstruct`` arguments (validated by ReconstructConfig)."""
    given = config_fields(ReconstructConfig, args)
    return ReconstructConfig(**with_preset(args.preset, args.method, given))


def cmd_demo(args: argparse.Namespace) -> None:
    """DDS and D3IP on a slab of the bundled chest CT (64 px, the paper's angular undersampling)."""
    out = Path(args.out)
    _check_out(out, args.overwrite)
    volume, record = _volume("fixture:chest-ct", "ct", 64, None, args.n_slices)
    views = paper_views(64) if args.views is None else args.views
    m = simulate(volume, TaskConfig(task="sv-ct", size=64, views=views, noise=0.01, seed=args.seed), record=record)
    prior = load_prior(args.prior)
    results = {}
    for method in ("admm-tv", "dds", "d3ip"):
        speed = {} if method == "admm-tv" else dict(n_steps=args.n_steps, noise_mix=args.noise_mix,
                                                    cg_iters=args.cg_iters, precision=args.precision,
                                                    channels_last=args.channels_last, compile=args.compile)
        cfg = ReconstructConfig(method=method, seed=args.seed, **speed,
                                **({"samples": args.samples} if method != "admm-tv" else {}),
                                **({"k": args.k, "n_iters": args.n_iters} if method == "d3ip" else {}))
        res = reconstruct_samples(m, cfg, prior, progress=not args.quiet)
        config = {"command": "demo", "prior": args.prior, **asdict(cfg), "task": asdict(m.config),
                  "volume_record": record}
        results[method] = (res, write_result(out / method, res.volume, m.ground_truth, method=method,
                                             wall=res.wall_time_s, peak_mb=res.peak_memory_mb, report=res.report,
                                             config=config, record=record, std=res.std,
                                             display_window=args.display_window))
        _print_metrics(method, results[method][1])
    names = {"admm-tv": "ADMM-TV", "dds": "DDS", "d3ip": "D3IP"}
    truth, unit = to_source_units(m.ground_truth, record)
    d3ip_std = results["d3ip"][0].std
    maps = {} if d3ip_std is None else {
        f"D3IP: std of {args.samples} samples ({unit})": spread_to_source_units(d3ip_std, record)[0]}
    write_png_views(out / "comparison.png", {"ground truth": truth,
                                             **{names[k]: to_source_units(results[k][0].volume, record)[0]
                                                for k in names}},
                    error_of="D3IP", reference="ground truth", error_units=unit, maps=maps,
                    notes={names[k]: scores(results[k][1]) for k in names},
                    **display(record, args.display_window, shown=truth, units=unit))
    gain = results["d3ip"][1]["psnr"] - results["dds"][1]["psnr"]
    ranking = sorted(names, key=lambda k: -results[k][1]["psnr"])
    write_json(out / "summary.json", {"psnr_dds": results["dds"][1]["psnr"], "psnr_d3ip": results["d3ip"][1]["psnr"],
                                      "psnr_admm_tv": results["admm-tv"][1]["psnr"], "psnr_gain_db": gain,
                                      "ranking": ranking, "samples": args.samples,
                                      "views": views, "slices": int(volume.shape[0]), "prior": args.prior})
    print("ranking by PSNR: " + " > ".join(f"{names[k]} {results[k][1]['psnr']:.2f} dB" for k in ranking)
          + (f" (DDS and D3IP: mean of {args.samples} samples)" if args.samples > 1 else ""))
    print(f"D3IP - DDS: {gain:+.2f} dB PSNR; pictures in {out / 'comparison.png'}")


def _print_metrics(name: str, m: dict) -> None:
    fmt = lambda v, d: "n/a" if v is None else f"{v:.{d}f}"  # noqa: E731
    print(f"{name:>10}: PSNR {fmt(m['psnr'], 2)} dB  SSIM {fmt(m['ssim'], 3)}  LPIPS {fmt(m['lpips'], 3)}  "
          f"{m['wall_time_s']:.1f} s  {m['peak_memory_mb']:.0f} MB")


def cmd_benchmark(args: argparse.Namespace) -> None:
    tables = tuple(args.tables.split(",")) if args.tables else TABLES
    unknown = [t for t in tables if t not in TABLES]
    if unknown:
        raise DdipError(f"unknown table(s) {unknown}; choose from {', '.join(TABLES)}")
    cfg = bench_config(args)
    print(f"ddip: {cfg.command()}", file=sys.stderr)
    with StopRequest() as stop:  # SIGTERM / SIGINT: checkpoint the reconstruction in progress, then stop
        run_benchmark(cfg, tables, args.out, resume=args.resume, stop=stop)
    print(f"results in {args.out}")


def bench_config(args: argparse.Namespace) -> BenchConfig:
    """The benchmark's settings: the options given, the rest from BenchConfig (or ``--quick``'s sizes)."""
    given = config_fields(BenchConfig, args)
    return BenchConfig.quick_config(**given) if args.quick else BenchConfig(**given)


def cmd_gate(args: argparse.Namespace) -> None:
    rows = gate_curve(args.run, n_images=args.n_images, ema_length=args.ema_length,
                      seed=VALIDATION_SEED if args.validation else GATE_SEED, device=args.device)
    if not rows:
        print(f"{args.run}: no weights to evaluate (ema.safetensors without images_seen, no snapshots)")
    for r in rows:
        print(f"{r['images']:>9} images: DDS {r['dds_psnr']:.2f} dB, least squares {r['least_squares_psnr']:.2f} dB, "
              f"margin {r['margin_db']:+.2f} dB (pass mark {GATE_MARGIN_DB:+g}) {'PASS' if r['passed'] else 'fail'}")


def _sinogram(args: argparse.Namespace):
    """A parallel-beam sinogram (.npy) with its geometry as a measurement."""
    path = Path(args.source)
    if args.size is None:
        raise DdipError("a sinogram needs --size, the reconstruction grid (pixels across the field of view)")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DdipError(f"{path}: not a readable .npy array ({exc})") from exc
    real = np.issubdtype(data.dtype, np.number) and not np.iscomplexobj(data)
    sino = torch.as_tensor(data.astype(np.float32) if real else data)  # the rest is checked by sinogram_measurement
    if sino.ndim == 2:
        sino = sino.unsqueeze(0)  # one slice
    if sino.ndim == 3 and args.slices:
        sino = sino[parse_slices(args.slices, sino.shape[0])]
    views = sino.shape[-2] if sino.ndim == 3 else 0
    spacing = args.detector_spacing
    if args.detector_pitch_mm is not None:
        if args.pixel_mm is None or spacing != TaskConfig.detector_spacing:
            raise DdipError("--detector-pitch-mm needs --pixel-mm and replaces --detector-spacing (pitch / pixel)")
        spacing = args.detector_pitch_mm / args.pixel_mm
    return sinogram_measurement(sino, parse_angles(args.angles, views), size=args.size, detector_spacing=spacing,
                                center=args.center, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm,
                                mu_water_per_mm=args.mu_water,
                                record={"source": str(path), "format": "sinogram", "angles": args.angles})


def cmd_import(args: argparse.Namespace) -> None:
    """Measured data as a measurement file: fastMRI-layout k-space (.h5) or a parallel-beam sinogram (.npy)."""
    out = Path(args.out)
    _check_out_file(out, args.overwrite, "the measurement file")
    kind = "kspace" if Path(args.source).suffix.lower() in (".h5", ".hdf5") else "sinogram"
    misplaced = ([f for f, v in (("--size", args.size), ("--angles", args.angles),
                                 ("--detector-spacing", args.detector_spacing != 1.0),
                                 ("--center", args.center is not None), ("--pixel-mm", args.pixel_mm),
                                 ("--slice-mm", args.slice_mm), ("--detector-pitch-mm", args.detector_pitch_mm),
                                 ("--mu-water", args.mu_water != MU_WATER_PER_MM)) if v]
                 if kind == "kspace" else
                 [f for f, v in (("--acceleration", args.acceleration),) if v is not None])
    if misplaced:
        raise DdipError(f"{', '.join(misplaced)} do(es) not apply to {'k-space' if kind == 'kspace' else 'a sinogram'}")
    if kind == "kspace":
        m = open_measurement(args.source, slices=args.slices, acceleration=args.acceleration,
                             center_fraction=args.center_fraction, seed=args.seed)
    else:
        m = _sinogram(args)
    save_measurement(out, m)
    c = m.config
    what = (f"{c.n_coils} coil(s), {c.size} x {c.size}, acceleration {c.accel:.2f}, "
            f"{m.record['kspace']['acs_lines']} calibration lines" if kind == "kspace" else
            f"{c.views} views x {c.detector_bins} bins of {c.detector_spacing:g} px, rotation axis at bin "
            f"{m.physics.center:g}, onto {c.size} x {c.size}"
            + (f" pixels of {args.pixel_mm:g} mm (line integrals x {m.record['scaling']['line_integrals']['gain']:.4g}"
               f" to the priors' scale, results in HU)" if args.pixel_mm is not None else ""))
    print(f"wrote {out}: {m.y.shape[0]} slices, {what}; reconstruct with: ddip reconstruct {out} --method d3ip "
          f"--resize --out OUT")


def cmd_convert_prior(args: argparse.Namespace) -> None:
    """A guided-diffusion (ADM) checkpoint as a ddip prior file."""
    out = Path(args.out)
    _check_out_file(out, args.overwrite, "the prior file")
    config = adm_config(args.adm_config)
    ucfg = convert_adm_checkpoint(args.checkpoint, config, out)
    n = sum(math.prod(shape) for _, shape in adm_parameters(config))
    print(f"wrote {out}: {n:,} parameters, {ucfg.image_size} px, {ucfg.in_channels} channel(s) in; use it with "
          f"--prior {out}")


def cmd_train(args: argparse.Namespace) -> None:
    channels = data_channels(args.data)
    phantoms = args.data in PHANTOM_DATA
    if not phantoms and args.modality is None:
        raise DdipError(f"--data {args.data}: training on a folder of volumes needs --modality ct or mri (the "
                        "intensity window its slices are scaled with)")
    if phantoms and args.modality is not None:
        raise DdipError("--modality applies to --data FOLDER; phantoms have their own range")
    unet = UNetConfig(**{**config_fields(UNetConfig, args), "in_channels": channels, "out_channels": channels})
    cfg = TrainConfig(**{**config_fields(TrainConfig, args), "unet": unet,
                         "data": args.data if phantoms else "volumes", "volumes": None if phantoms else args.data})

    with distributed.process_group():  # under torchrun: DistributedDataParallel, one phantom stream per rank
        rank = distributed.world()[0]
        summary = train_prior(cfg, progress=True if sys.stderr.isatty() else "log")
    if summary["signal"] is not None:
        raise Interrupted(f"{signal.Signals(summary['signal']).name} received: stopped after {summary['images']} "
                          f"images with the whole state saved in {summary['out']}/checkpoint.pt; run the same command "
                          f"to continue", summary["signal"])
    if rank == 0:
        print(f"trained to {summary['images']} images ({summary['step']} steps); weights in {summary['out']}")


# -- parsers ---------------------------------------------------------------------------------------------------------
def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _strs(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def _low_start_lrs() -> str:
    """The learning rates the registry sets for a low start (T' < 2ζ), for the help texts."""
    return "; ".join(f"{name} on {task} from T' < {2 * AdaptConfig.zeta}: {lr:g}" for name, spec in REGISTRY.items()
                     for task, lr in spec.low_start_lr.items())


def _zeta(text: str) -> int:
    """The adaptation window ζ: an integer >= 0; 'none' (no window) is 0, adapting at every step."""
    return 0 if text.lower() == "none" else int(text)


def _on_off(text: str) -> bool:
    """A switch given as on/off (a run's config.json records it as true/false)."""
    value = {"on": True, "true": True, "off": False, "false": False}.get(str(text).lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"give on or off, got {text!r}")
    return value


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def _add_noise_mix(p: argparse.ArgumentParser, preset: bool = True) -> None:
    shown = ("the preset's, else " if preset else "") + f"{DataConsistencyStep.noise_mix}; DPS its own"
    p.add_argument("--noise-mix", choices=NOISE_MIXES,
                   help="DDIM noise mixing: paper, Eq. 7 as printed, eta*z + (1-eta)*eps (chosen by measurement, "
                        "docs/results.md); code, the authors' variance-preserving eta*z + sqrt(1-eta^2)*eps, with "
                        f"which the paper's tables were made (--preset paper); ddim, true DDIM (default: {shown})")


def _add_display(p: argparse.ArgumentParser) -> None:
    p.add_argument("--display-window", default="soft-tissue", choices=DISPLAY_WINDOWS,
                   help="CT pictures: the soft-tissue window W400/L40 (default) or the full [-1024, 2048] HU range")


def _add_cg_iters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cg-iters", type=int,
                   help="CG steps per data-consistency solve (default: the method's own, DDS and the adapted "
                        f"methods {DDS.cg_iters}, DDNM {DDNM.cg_iters}, MBIR {DiffusionMBIR.cg_iters} per ADMM "
                        f"iteration; the paper's DDS: {PAPER_CG_ITERS})")


def _add_speed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default=ReconstructConfig.precision, choices=PRECISIONS,
                   help="the network's arithmetic: bfloat16 autocasts it (faster where the CPU has AMX/AVX512-BF16 "
                        "or on a GPU; CG and the DDIM update stay float32); bfloat16-weights casts the weights once "
                        "and runs the whole network in bfloat16 (the fastest on a GPU, docs/gpu.md)")
    p.add_argument("--channels-last", action="store_true", default=ReconstructConfig.channels_last,
                   help="run the network in NHWC layout (faster convolutions on a GPU; docs/gpu.md)")
    p.add_argument("--compile", action="store_true", default=ReconstructConfig.compile,
                   help="torch.compile the network (pays a compilation of a minute or more on first use)")


def build_parser() -> argparse.ArgumentParser:
    r, b = ReconstructConfig(method="dds"), BenchConfig()
    parser = argparse.ArgumentParser(prog="ddip", description="Diffusion priors adapted to 3D volumes (DDIP/D3IP)")
    parser.add_argument("--version", action="version", version=f"ddip {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default="warning", choices=LOG_LEVELS,
                        help="messages to print; debug also shows the traceback of an unexpected error")
    common.add_argument("--config", help="JSON file of option values (command-line flags win)")
    common.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (default 0: torch's choice, one per core; give 1 beside other work)")
    parser.subcommands = sub.choices  # name -> subparser (the --config reader needs each one's options)

    p = sub.add_parser("simulate", parents=[common],
                       help="simulate measurements of a volume for one of the paper's tasks")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--volume", required=True,
                   help="NIfTI / DICOM folder / .npy path, a development volume (chest-ct, mni-t1) or fixture:NAME")
    p.add_argument("--slices", help="contiguous slab START:STOP along the slice axis")
    p.add_argument("--n-slices", type=int, help="the central N slices (instead of --slices)")
    p.add_argument("--slice-axis", type=int, choices=(0, 1, 2),
                   help="the array axis the slices are taken along (default: 2 for NIfTI and DICOM, the axial "
                        "slices of the RAS+ volume; 0 for .npy, slices first)")
    p.add_argument("--voxel-mm", type=_floats, help="a .npy array's voxel size in mm along its three axes, e.g. "
                                                    "0.7,0.7,2.5 (default 1,1,1)")
    p.add_argument("--size", type=int, default=TaskConfig.size, help="in-plane size (the prior's)")
    p.add_argument("--views", type=int, default=TaskConfig.views,
                   help="CT views (paper: 60; 60*size/256 keeps its undersampling)")
    p.add_argument("--acceleration", type=float, help="MRI acceleration (default x8 mri3d, x4 csmri)")
    p.add_argument("--noise", type=float, default=TaskConfig.noise, help="measurement noise sigma")
    p.add_argument("--seed", type=int, default=TaskConfig.seed)
    p.add_argument("--out", required=True, help="measurement file (.safetensors)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("reconstruct", parents=[common], help="reconstruct a measurement file with one method",
                       epilog=METHOD_ADVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("measurement", help="a measurement file (simulate, import) or raw fastMRI k-space (.h5)")
    _add_display(p)
    p.add_argument("--units", default="source", choices=UNITS,
                   help="the NIfTI's values: source (HU for CT, the MRI volume's scale; default) or window (the "
                        "[0, 1] range the prior works in)")
    p.add_argument("--method", required=True, choices=names())
    p.add_argument("--prior", help="a shipped prior name or a .safetensors path (default: the shipped prior for the "
                                   "task and size; ellipses-complex-64 for csmri where it ships)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n-steps", "--steps", dest="n_steps", type=int,
                   help=f"network evaluations (default {DataConsistencyStep.n_steps}; DPS {DPS.n_steps})")
    p.add_argument("--t-start", type=int,
                   help="T', the first timestep: the steps are spaced from it down to 0, the start noised from the "
                        f"data-consistent estimate (Eq. 16); {T_DEFAULT}: the full grid, from pure noise "
                        f"({VPSchedule.linear().timesteps(DataConsistencyStep.n_steps)[0]} at "
                        f"{DataConsistencyStep.n_steps} steps). Default: the method's own, " + ", ".join(
                            f"{n} {s.t_start}" for n, s in REGISTRY.items() if s.t_start is not None)
                        + f"; {T_START_PLAIN} also for " + ", ".join(
                            f"{n} ({', '.join(f'{t} from {px} px' for t, px in s.low_start.items())})"
                            for n, s in REGISTRY.items() if s.low_start)
                        + "; the full grid for the others")
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--samples", type=int, default=r.samples,
                   help="posterior samples (seeds SEED, SEED+1, ...): their mean is the result, their standard "
                        "deviation is written as std.nii.gz; D3IP and D3IP-mbir adapt once and replay the LoRA "
                        "trajectory for the other samples")
    p.add_argument("--max-batch", type=int, default=r.max_batch, help="network inputs per forward pass")
    p.add_argument("--init", default=r.init, choices=INITS,
                   help="x_T': slerp between two noises across the slices with A^dagger y (paper Eq. 16), "
                        "independent noise per slice (the authors' code), or pure noise")
    _add_noise_mix(p)
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="named sampling settings under the flags given: paper = 50 steps, eta 0.85, the code's noise "
                        f"mixing and {PAPER_CG_ITERS} CG steps for DDS and the adapted methods on it, eta 0.85 and the "
                        "code's mixing for DDNM and MBIR, MBIR's ADMM state kept (the settings of the paper's tables)")
    p.add_argument("--eta", type=float, help="DDIM stochasticity: 0 deterministic, 1 DDPM-like (default: "
                                             f"{DataConsistencyStep.eta}; DPS {DPS.eta:g})")
    p.add_argument("--k", type=int, help="adaptation slices per step (default: paper Table 5)")
    p.add_argument("--n-iters", "--iters", dest="n_iters", type=int,
                   help="adaptation optimiser steps per timestep (default: Table 5)")
    p.add_argument("--lr", type=float, help=f"adaptation learning rate (default: Table 5; CS-MRI "
                                            f"{LR_TUNED['csmri']:g}, tuned for 50 steps: with 10 steps 1e-3 is "
                                            f"better; {_low_start_lrs()})")
    p.add_argument("--zeta", type=_zeta,
                   help=f"adapt only for t in [zeta, T' - zeta]; 0 (or none) adapts at every step (default "
                        f"{AdaptConfig.zeta}, chosen by measurement; {ZETA_LOW_START} where T' < "
                        f"{2 * AdaptConfig.zeta}; the paper's {PAPER_ZETA} with --preset paper)")
    p.add_argument("--loss-cg-iters", type=int,
                   help="CG steps of the data consistency inside the adaptation loss (default: as in sampling; the "
                        "authors' D3IP code for CT and SCD: 1)")
    p.add_argument("--lora-rank", type=int, default=r.lora_rank,
                   help=f"rank of the adapted LoRA (default {r.lora_rank}, the paper's; its Fig. 6a finds D3IP's best "
                        "rank above DDIP's)")
    p.add_argument("--range-guard", type=_on_off, metavar="{on,off}", default=r.range_guard,
                   help="adapted methods: undo an adaptation step whose data-consistent estimate leaves the prior's "
                        "range (data the operator does not describe exactly make adaptation run away; not in the "
                        "paper)")
    p.add_argument("--carry-admm-state", type=_on_off, metavar="{on,off}",
                   help="mbir, d3ip-mbir: keep ADMM's z, u across timesteps, as the paper does (default: off, started "
                        "afresh each step; on with --preset paper)")
    p.add_argument("--dc-variant", choices=DC_VARIANTS,
                   help="CG data consistency: proximal (I + gamma A^H A) or normal equations A^H A (default: the "
                        "method's own, DDS proximal and DDNM normal; the authors' MRI code runs DDNM proximal)")
    _add_cg_iters(p)
    p.add_argument("--tv-lam", "--tv-lambda", dest="tv_lam", type=float,
                   help="TV weight of admm-tv, mbir and d3ip-mbir (default: tuned per task for data in [0, 1])")
    p.add_argument("--tv-rho", type=float, help="ADMM penalty of admm-tv, mbir and d3ip-mbir (default: per task)")
    _add_speed(p)
    p.add_argument("--resize", action="store_true",
                   help="if the prior's image size differs from the data's, reconstruct on the prior's grid "
                        "(operator composed with a resampling) and report the result on the data's grid")
    p.add_argument("--normalise", default=r.normalise, choices=NORMALISE,
                   help="auto: measurements whose intensity is far from the prior's [0, 1] range (more than "
                        f"{INTENSITY_RANGE[1]:g}x off) are rescaled for the reconstruction and the result scaled back")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUT/checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, help="save the whole state every N steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("demo", parents=[common],
                       help="ADMM-TV, DDS and D3IP on the bundled chest CT (the README's main job)")
    p.add_argument("--out", default="out/demo")
    p.add_argument("--prior", default=DEMO_PRIOR)
    p.add_argument("--n-slices", type=int, default=8, help="central slices of the bundled 32-slice slab")
    p.add_argument("--views", type=int,
                   help=f"CT views (default {paper_views(64)}: the paper's undersampling at 64 px)")
    p.add_argument("--n-steps", "--steps", dest="n_steps", type=int,
                   help=f"network evaluations (default {DataConsistencyStep.n_steps})")
    p.add_argument("--k", type=int, default=DEMO_K, help=f"D3IP slices per adaptation step (default {DEMO_K})")
    _add_cg_iters(p)
    p.add_argument("--n-iters", "--iters", dest="n_iters", type=int, default=DEMO_ITERS,
                   help=f"D3IP optimiser steps per timestep (default {DEMO_ITERS})")
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--samples", type=int, default=DEMO_SAMPLES,
                   help=f"posterior samples of DDS and D3IP, whose mean is shown with D3IP's std (default "
                        f"{DEMO_SAMPLES}; 1: single samples)")
    _add_noise_mix(p, preset=False)
    _add_speed(p)
    _add_display(p)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("benchmark", parents=[common], help="reproduce the paper's tables on the development volumes")
    # Defaults are BenchConfig's (or --quick's sizes), filled in by bench_config() for the options not given.
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke test: {QUICK['n_slices']} slices, {QUICK['n_steps']} network evaluations, unless "
                        "given explicitly")
    p.add_argument("--prior", help="one prior for every task (default: the shipped prior of each task and size)")
    p.add_argument("--size", type=int, help=f"image size (default {b.size})")
    p.add_argument("--n-slices", type=int, help=f"slices N of each test volume (default {b.n_slices})")
    p.add_argument("--n-steps", "--steps", dest="n_steps", type=int,
                   help=f"network evaluations of every method but DPS (default {DataConsistencyStep.n_steps})")
    p.add_argument("--dps-slices", type=int, help=f"slices DPS runs on, 1000 evaluations each (default {b.dps_slices})")
    p.add_argument("--scaling-steps", type=int, help="network evaluations in the cost-scaling runs (default: --steps)")
    p.add_argument("--scaling-sizes", type=_ints, help="slice counts N of the cost-scaling runs (default "
                                           f"{','.join(map(str, b.scaling_sizes))})")
    p.add_argument("--table2-settings", "--table2", dest="table2_settings", type=_strs, help="table 2 settings: sv-ct-60 (60 views), sv-ct-paper (60·size/256 views), mri3d, "
                                    "csmri (default: all)")
    _add_noise_mix(p)
    p.add_argument("--preset", choices=tuple(PRESETS),
                   help="named sampling settings under the flags given (see reconstruct --help); paper reproduces "
                        "the tables of docs/results.md made before 2026-12-04")
    p.add_argument("--tables", help="comma-separated subset of table2,table1,table3,table4,scaling")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows already measured in --out and continue a stopped reconstruction from its "
                        "checkpoint (without it the benchmark starts afresh)")
    p.add_argument("--methods", type=_strs, help="table 2's methods, comma-separated (default: all)")
    p.add_argument("--cg-iters", type=int,
                   help=f"CG steps of DDS's data consistency in DDS and the adapted methods on it (default "
                        f"{DDS.cg_iters}; the paper's: {PAPER_CG_ITERS}); DDNM and MBIR keep their own")
    p.add_argument("--lr", type=float,
                   help=f"the adapted methods' learning rate (default: Table 5, CS-MRI {LR_TUNED['csmri']:g}; "
                        f"{_low_start_lrs()})")
    p.add_argument("--device", default=b.device, help=DEVICE_HELP)
    _add_speed(p)
    p.add_argument("--out", default="out/benchmark", help="output folder (default out/benchmark)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("prior-gate", parents=[common],
                       help="evaluate the quality gate on every snapshot of a training run")
    p.add_argument("run", help="a train-prior run folder")
    p.add_argument("--n-images", type=int, default=GATE_IMAGES, help="in-distribution phantoms per evaluation")
    p.add_argument("--ema-length", type=float,
                   help="evaluate the snapshots of the run's power-function EMA of this relative length (train-prior "
                        "--ema-lengths) instead of its main EMA")
    p.add_argument("--validation", action="store_true",
                   help="on the validation phantoms and noise (ddip.evaluation.VALIDATION_SEED), on which training "
                        "settings are compared, instead of the gate's own (held out)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP)
    p.set_defaults(func=cmd_gate)

    p = sub.add_parser("import", parents=[common],
                       help="measured data as a measurement file: fastMRI-layout k-space (.h5) or a parallel-beam "
                            "sinogram (.npy)",
                       description="k-space: remove the readout oversampling, take the sampled lines as the mask (or "
                                   "undersample fully sampled data with --acceleration) and estimate coil maps from "
                                   "the calibration lines (`ddip reconstruct FILE.h5` does the same with the "
                                   "defaults). Sinogram (slices, views, bins): give --size, and --angles and "
                                   "--detector-spacing where they differ from uniform over 180 degrees and 1 pixel.")
    p.add_argument("source", help="a fastMRI .h5 file (dataset 'kspace', optional 'mask') or a sinogram .npy")
    p.add_argument("--out", required=True, help="the measurement file to write (.safetensors)")
    p.add_argument("--slices", help="START:STOP of the file's slices (default: all)")
    p.add_argument("--acceleration", type=float,
                   help="undersample fully sampled k-space with uniform 1D lines (default: the file's own sampling)")
    p.add_argument("--center-fraction", type=float, default=TaskConfig.center_fraction,
                   help="fully sampled central lines with --acceleration")
    p.add_argument("--seed", type=int, default=TaskConfig.seed, help="the undersampling mask's seed")
    p.add_argument("--size", type=int, help="sinogram: the reconstruction grid in pixels (e.g. the prior's)")
    p.add_argument("--angles", help="sinogram: START:STOP in degrees (views uniform, STOP excluded; default 0:180) "
                                    "or a .npy/text file of one angle per view")
    p.add_argument("--detector-spacing", type=float, default=TaskConfig.detector_spacing,
                   help="sinogram: detector bin width in reconstruction pixels")
    p.add_argument("--center", type=float,
                   help="sinogram: the detector bin (fractional, counted from 0) the rotation axis projects onto "
                        "(default bins // 2, ddip's own convention; (bins - 1) / 2 for a detector centred "
                        "between bins, as mbirjax's; tomopy's 'center')")
    p.add_argument("--pixel-mm", type=float,
                   help="sinogram: the grid's pixel size in mm; the sinogram is then physical line integrals (1/mm x "
                        "mm), taken to the priors' scale, and the result comes back in HU on voxels of this size "
                        "(default: units left as they are, 1 mm voxels)")
    p.add_argument("--slice-mm", type=float, help="sinogram: the slice spacing in mm (default: --pixel-mm)")
    p.add_argument("--detector-pitch-mm", type=float,
                   help="sinogram: the detector bin width in mm, with --pixel-mm (instead of --detector-spacing)")
    p.add_argument("--mu-water", type=float, default=MU_WATER_PER_MM,
                   help="sinogram: water's attenuation in 1/mm at the scan's energy, with --pixel-mm (default: "
                        "%(default)s, about 70 keV)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("convert-prior", parents=[common],
                       help="convert a guided-diffusion (ADM) checkpoint, e.g. the authors', into a ddip prior file")
    p.add_argument("checkpoint", help="an ADM state_dict (.pt) or a score_sde EMA file (weights-only loading)")
    p.add_argument("--adm-config", required=True,
                   help=f"the network's guided-diffusion hyper-parameters: a preset ({', '.join(ADM_PRESETS)}) or a "
                        "JSON file of them")
    p.add_argument("--out", required=True, help="the prior file to write (.safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=cmd_convert_prior)

    u, t = UNetConfig(), TrainConfig(out="")
    p = sub.add_parser("train-prior", parents=[common],
                       help="train a diffusion prior on ELLIPSES phantoms made on the fly, or on your own volumes",
                       description="Train (or resume, if OUT holds a checkpoint) an ADM-style prior on ELLIPSES or on "
                                   "the slices of a folder of volumes.")
    p.add_argument("--out", required=True, help="run folder (checkpoint, EMA weights, config, loss log)")
    p.add_argument("--image-size", "--size", dest="image_size", type=int, default=u.image_size,
                   help="image size in pixels")
    p.add_argument("--model-channels", "--channels", dest="model_channels", type=int, default=u.model_channels,
                   help="base channel count (multiple of 32)")
    p.add_argument("--channel-mult", "--mult", dest="channel_mult", type=_ints, default=u.channel_mult,
                   help="channel multipliers per level, e.g. 1,2,2,4")
    p.add_argument("--num-res-blocks", "--res-blocks", dest="num_res_blocks", type=int, default=u.num_res_blocks,
                   help="residual blocks per level")
    p.add_argument("--attention-resolutions", "--attn", dest="attention_resolutions", type=_ints,
                   default=u.attention_resolutions, help="feature-map sizes with attention")
    p.add_argument("--num-head-channels", "--head-channels", dest="num_head_channels", type=int,
                   default=u.num_head_channels)
    p.add_argument("--position-channels", action="store_true",
                   help="give the network each pixel's position in the whole image as two more input channels "
                        "(Patch Diffusion), so that it knows where a crop (--crop) lies")
    p.add_argument("--batch-size", "--batch", dest="batch_size", type=int, default=t.batch_size)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--ema-decay", "--ema", dest="ema_decay", type=float, default=t.ema_decay)
    p.add_argument("--ema-lengths", type=_floats, default=t.ema_lengths,
                   help="power-function EMAs of these relative lengths (EDM2's sigma_rel, e.g. 0.05,0.1,0.15; the "
                        "main EMA's is about 0.09) kept beside it, each snapshotted, to choose the EMA length after "
                        "training (ddip prior-gate RUN --ema-length S); default: none")
    p.add_argument("--min-snr-gamma", type=float,
                   help="weight the loss by min(SNR, gamma)/SNR (Min-SNR-gamma, Hang et al. 2023; 5 in the paper) "
                        "(default: the plain epsilon loss the shipped priors were trained with)")
    p.add_argument("--pure-noise-density", type=float, default=t.pure_noise_density,
                   help=f"draw the timesteps where the image is nearly pure noise (alpha-bar < {PURE_NOISE_ALPHA_BAR:g}) "
                        f"this many times as often as the others, e.g. 0.25; 1: uniform t, as the shipped priors")
    p.add_argument("--max-images", type=int, default=t.max_images)
    p.add_argument("--max-hours", type=float, default=t.max_hours, help="stop (after a checkpoint) after this long")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (faster; weights stay fp32)")
    p.add_argument("--crop-sizes", "--crop", dest="crop_sizes", type=_ints, default=t.crop_sizes,
                   help="train on random crops of these sizes of --size images, one size per step, e.g. 64,128,256 "
                        "(--batch-size is the smallest crop's; larger ones get fewer, at equal pixels); default: whole "
                        "images")
    p.add_argument("--warmup-steps", type=int, default=t.warmup_steps,
                   help="linear learning-rate warm-up over this many steps")
    p.add_argument("--device", default=t.device, help=f"{DEVICE_HELP} (phantoms are rasterised there too)")
    p.add_argument("--rng", default=t.rng, choices=("cpu", "device"),
                   help="where phantoms and noise are drawn: cpu (the same run on any device) or device (faster on a "
                        "GPU; reproducible on that device only)")
    p.add_argument("--channels-last", action="store_true", default=t.channels_last,
                   help="NHWC network and images (faster convolutions on a GPU)")
    p.add_argument("--compile", action="store_true", default=t.compile, help="torch.compile the network")
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--checkpoint-minutes", type=float, default=t.checkpoint_minutes)
    p.add_argument("--snapshot-every", type=int, default=t.snapshot_every, help="EMA snapshot every N images")
    p.add_argument("--init-weights", help="warm start a new run from these weights (e.g. a shipped prior)")
    p.add_argument("--data", default="ellipses",
                   help="ellipses (default), ellipses-complex (smooth random phase, 2 channels: the CS-MRI prior), "
                        "or a FOLDER of volumes (NIfTI, .npy, DICOM series folders) whose slices are trained on")
    p.add_argument("--modality", choices=("ct", "mri"),
                   help="with --data FOLDER: CT slices through the Hounsfield window, MRI divided by each volume's "
                        "maximum, as reconstruction prepares them")
    p.set_defaults(func=cmd_train)
    for command in parser.subcommands.values():
        _state_defaults(command)
    return parser


def _state_defaults(parser: argparse.ArgumentParser) -> None:
    """Every option's help ends with its default (taken from the parser, which takes it from the config classes),
    unless the help already says what the default is."""
    for action in parser._actions:
        if (not action.option_strings or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS or action.dest == "help"):
            continue
        if action.help is None:
            action.help = "default: %(default)s"
        elif "default" not in action.help:
            action.help += " (default: %(default)s)"


# Options that say where and how verbosely a run goes, not what it computes: a replayed run chooses its own.
NOT_REPLAYED = frozenset({"out", "overwrite", "resume", "config", "quiet", "log_level", "threads", "command", "func",
                          "measurement"})


def replay_options(args: argparse.Namespace) -> dict:
    """The options a run used, under their flags' names (prior and device as resolved), for its config.json:
    ``ddip COMMAND INPUT --config RUN/config.json --out NEW`` runs it again."""
    return {k.replace("_", "-"): v for k, v in sorted(vars(args).items()) if k not in NOT_REPLAYED}


def config_arguments(subparser: argparse.ArgumentParser, path: str) -> list[str]:
    """A ``--config`` JSON file as command-line tokens, so its values go through the same types and choices.

    Keys are option names (``max_batch`` or ``max-batch``); a list becomes the comma-separated form the flag takes;
    a boolean switches a flag on or leaves it off; null leaves the option at its default. A run's own config.json
    (it names its ``command`` and holds ``options``) gives that run's options.
    """
    actions = {a.dest: a for a in subparser._actions if a.option_strings}
    # a flag's other names (an older config.json's "steps" for --n-steps)
    actions.update({flag[2:].replace("-", "_"): a for a in subparser._actions for flag in a.option_strings
                    if flag.startswith("--") and flag[2:].replace("-", "_") not in actions})
    command = subparser.prog.split()[-1]
    values = _load_config_file(path)
    if isinstance(values.get("options"), dict) and "command" in values:
        if values["command"] != command:
            raise DdipError(f"{path}: the options of a 'ddip {values['command']}' run, not of 'ddip {command}'")
        values = values["options"]
    tokens: list[str] = []
    for key, value in values.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None or action.dest in ("config", "help"):
            raise DdipError(f"{path}: unknown option {key!r} for 'ddip {subparser.prog.split()[-1]}'")
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            if not isinstance(value, bool):
                raise DdipError(f"{path}: option {key!r} is a switch: give true or false, got {value!r}")
            tokens += [flag] if value else []
            continue
        if value is None:
            continue
        if isinstance(value, bool) and action.type is not _on_off or isinstance(value, dict):
            raise DdipError(f"{path}: option {key!r} takes a value, got {value!r}")
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        try:
            converted = action.type(text) if action.type is not None else text
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise DdipError(f"{path}: option {key!r}: invalid value {value!r} ({exc})") from exc
        if action.choices is not None and converted not in action.choices:
            raise DdipError(f"{path}: option {key!r}: {value!r} is not one of {', '.join(map(str, action.choices))}")
        tokens.append(f"{flag}={text}")  # one token: a value such as -1e-3 must not read as a flag
    return tokens


def _config_path(argv: list[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config F`` or ``--config=F``), if any."""
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


# What lowers the memory a command needs, named in the out-of-memory message.
MEMORY_HINT = {"reconstruct": "--max-batch (network inputs per pass) or the number of slices",
               "demo": "--n-slices", "benchmark": "--n-slices or --size", "train-prior": "--batch",
               "prior-gate": "--n-images"}


def main(argv: list[str] | None = None) -> int:
    """The command line; returns the exit status (0, 2 for bad input, 1 for a bug, 128 + N after signal N)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, threads = None, torch.get_num_threads()
    try:
        path = _config_path(argv)
        if path is not None and argv and argv[0] in parser.subcommands:
            # The file's options come first, so that flags given on the command line win.
            argv = [argv[0], *config_arguments(parser.subcommands[argv[0]], path), *argv[1:]]
        args = parser.parse_args(argv)
        logging.basicConfig(level=args.log_level.upper(), format="ddip: %(levelname)s: %(message)s")
        if args.threads < 0:
            raise DdipError(f"--threads must be >= 0 (0: torch's default), got {args.threads}")
        if args.threads:
            torch.set_num_threads(args.threads)  # restored below: main() may run inside a longer Python process
        args.func(args)
    except Interrupted as exc:
        print(f"ddip: {exc}", file=sys.stderr)
        return exc.exit_code
    except DdipError as exc:
        lines = str(exc).splitlines() or [""]
        if len(lines) > 1:  # every error one line; the rest for whoever asks
            logging.getLogger("ddip").debug("the whole message: %s", exc)
        print(f"ddip: error: {lines[0]}", file=sys.stderr)
        return 2
    except (torch.cuda.OutOfMemoryError, MemoryError) as exc:
        hint = MEMORY_HINT.get(getattr(args, "command", ""), "the problem size")
        print(f"ddip: error: out of memory ({type(exc).__name__}); lower {hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ddip: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception as exc:  # a bug: one line, the traceback behind --log-level debug
        if args is not None and args.log_level == "debug":
            raise
        print(f"ddip: error: unexpected {first_line(exc)} (a bug in ddip: rerun with --log-level debug "
              f"for the traceback, and report it)", file=sys.stderr)
        return 1
    finally:
        torch.set_num_threads(threads)
    return 0
