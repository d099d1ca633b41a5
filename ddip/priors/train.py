"""Training a prior on ELLIPSES phantoms made on the fly (or the slices of a folder of volumes), with EMA,
checkpoints and exact resume.

A run folder holds:

* ``checkpoint.pt``: everything needed to continue bit-exactly (network, EMA, optimiser, step, both RNG states),
  written atomically every few minutes and loadable with ``torch.load(..., weights_only=True)``;
* ``ema.safetensors`` + ``config.json``: the shippable prior (EMA weights) and its configuration;
* ``loss_log.csv``: step, images seen, mean loss since the last line, images/s, elapsed seconds;
* ``snapshots/ema_<images>.safetensors``: EMA weights every ``snapshot_every`` images, for tracking the quality gate
  against images seen;
* ``ema-len<σ>.safetensors`` and ``snapshots/ema-len<σ>_<images>.safetensors`` for each power-function EMA of relative
  length σ kept beside the main one (``ema_lengths``), to choose the EMA length after training;
* ``data.json`` (training on volumes): the slices per volume, checked again when the run resumes.

Crop training (``crop_sizes``): each step draws one crop size, makes full ``image_size`` images and trains on
``batch_size·(smallest crop / crop)²`` random square crops of them, so every step costs about the same pixels
(several crops per image where a crop is a sixteenth of it or less: rasterising the image costs more than training on
one crop). The network is fully convolutional, so a 256 px prior learns from 64 px crops of 256 px phantoms at about
1/16 of a whole image's cost (Patch Diffusion, Wang et al. 2023, trains on random patches with a share of whole
images in the same way). With ``UNetConfig.position_channels`` each crop carries its pixels' positions in the whole
image as two more input channels, as Patch Diffusion's do.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ddip import distributed
from ddip.data.phantoms import random_complex_ellipses, random_ellipses
from ddip.data.slices import VolumeSlices
from ddip.devices import resolve_device
from ddip.errors import DdipError, check_seed
from ddip.io import atomic_path, check_same_settings, write_json
from ddip.priors.prior import DiffusionPrior, position_grid
from ddip.priors.registry import save_prior
from ddip.priors.unet import UNetConfig, build_unet
from ddip.signals import StopRequest

PHANTOM_DATA = ("ellipses", "ellipses-complex")  # made on the fly; "volumes" is a folder of the user's


def data_channels(data: str) -> int:
    """Image channels of a training data kind: 2 (real, imaginary) for complex phantoms, else 1."""
    return 2 if data == "ellipses-complex" else 1


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``ddip train-prior`` (saved as ``config.json``; a resumed run must match them)."""

    out: str
    unet: UNetConfig = field(default_factory=UNetConfig)
    batch_size: int = 16
    lr: float = 1e-4
    ema_decay: float = 0.999
    # power-function EMAs of these relative lengths σ_rel kept beside the main EMA, to choose the EMA length after
    # training from their snapshots (EDM2, Karras et al. 2024; :func:`power_ema_gamma`); none by default
    ema_lengths: tuple[float, ...] = ()
    min_snr_gamma: float | None = None  # Min-SNR-γ loss weight (DiffusionPrior.loss); None: plain ε-MSE (shipped priors)
    # relative density of the t draws where the image is nearly pure noise (DiffusionPrior.loss); 1: uniform (shipped)
    pure_noise_density: float = 1.0
    max_images: int = 1_000_000
    max_hours: float = float("inf")
    bf16: bool = False
    seed: int = 0
    checkpoint_minutes: float = 5.0
    snapshot_every: int = 25_000
    log_every: int = 20
    init_weights: str | None = None  # warm start (network and EMA) from a safetensors file of the same network
    # ellipses-complex: magnitude x smooth phase, 2 channels; volumes: the slices of the volumes in the folder
    # ``volumes`` (ddip.data.slices), scaled as ``modality``'s reconstructions are, taken along ``slice_axis``
    data: Literal["ellipses", "ellipses-complex", "volumes"] = "ellipses"
    volumes: str | None = None
    modality: Literal["ct", "mri"] | None = None
    slice_axis: int = 2
    warmup_steps: int = 0  # learning rate rises linearly from 0 over this many steps (large batches, warm starts)
    # train on random square crops of these sizes (one size per step, drawn uniformly; () = whole images);
    # batch_size is the batch of the smallest, larger crops get batch_size·(smallest / size)², at least 1
    crop_sizes: tuple[int, ...] = ()
    device: str = "cpu"  # where the network trains and phantoms are rasterised
    rng: Literal["cpu", "device"] = "cpu"  # random streams on the CPU (same run on any device) or on the device
    channels_last: bool = False  # NHWC network and images (GPU tensor cores; docs/gpu.md)
    compile: bool = False  # torch.compile the network (docs/gpu.md)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or not self.lr > 0 or not 0 <= self.ema_decay < 1 or self.max_images < 1:
            raise DdipError("train-prior: need batch_size >= 1, lr > 0, 0 <= ema_decay < 1 and max_images >= 1")
        check_seed(self.seed, "train-prior")
        if any(not 0 < s <= MAX_EMA_LENGTH for s in self.ema_lengths) or len(set(self.ema_lengths)) < len(
                self.ema_lengths):
            raise DdipError(f"train-prior: ema_lengths must be distinct relative lengths in (0, {MAX_EMA_LENGTH:.4f}] "
                            f"(EDM2's best were 0.05-0.15; the main EMA's is about 0.09), got {self.ema_lengths}")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise DdipError(f"train-prior: min_snr_gamma must be > 0 (Min-SNR uses 5), got {self.min_snr_gamma}")
        if not 0 < self.pure_noise_density <= 1:
            raise DdipError(f"train-prior: pure_noise_density must lie in (0, 1] (1: uniform t), got "
                            f"{self.pure_noise_density}")
        if self.warmup_steps < 0:
            raise DdipError(f"train-prior: warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.max_hours > 0 or not self.checkpoint_minutes >= 0 or self.snapshot_every < 0 or self.log_every < 1:
            raise DdipError(f"train-prior: need max_hours > 0, checkpoint_minutes >= 0, snapshot_every >= 0 (0: none) "
                            f"and log_every >= 1, got {self.max_hours}, {self.checkpoint_minutes}, "
                            f"{self.snapshot_every} and {self.log_every}")
        channels = data_channels(self.data)
        if self.rng not in ("cpu", "device"):
            raise DdipError(f"train-prior: unknown rng {self.rng!r}; choose cpu or device")
        if self.data not in (*PHANTOM_DATA, "volumes"):
            raise DdipError(f"train-prior: unknown data {self.data!r}; choose ellipses, ellipses-complex or volumes")
        if (self.data == "volumes") != (self.volumes is not None):
            raise DdipError("train-prior: a folder of volumes goes with data='volumes', and only with it")
        if self.data == "volumes" and self.modality not in ("ct", "mri"):
            raise DdipError(f"train-prior: training on volumes needs modality 'ct' or 'mri' (the intensity window), "
                            f"got {self.modality!r}")
        object.__setattr__(self, "crop_sizes", tuple(sorted(set(int(c) for c in self.crop_sizes))))
        down = 2 ** (len(self.unet.channel_mult) - 1)
        bad = [c for c in self.crop_sizes if not 0 < c <= self.unet.image_size or c % down]
        if bad:
            raise DdipError(f"train-prior: crop sizes must lie in 1..{self.unet.image_size} (the image size) and be "
                            f"multiples of {down} (the network's downsampling), got {', '.join(map(str, bad))}")
        if (self.unet.in_channels, self.unet.out_channels) != (channels, channels):
            raise DdipError(f"train-prior: {self.data} needs a network with {channels} input and output channels")

    def batch_for(self, crop: int) -> int:
        """The batch of a step that trains on crops of side ``crop`` (the whole-image batch without crops)."""
        if not self.crop_sizes:
            return self.batch_size
        return max(1, round(self.batch_size * (self.crop_sizes[0] / crop) ** 2))

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # as JSON reads them back
        d["unet"] = self.unet.to_dict()
        return d


def ema_rate(decay: float, step: int) -> float:
    """The EMA rate used after optimiser step ``step``: ``decay`` capped by the warm-up (1 + step)/(10 + step), so
    the early average follows the weights. The cap reaches 0.999 only after about 9,000 steps: before that every
    rate above it is the same average (a power-function EMA whose profile spans about 9 % of the run)."""
    return min(decay, (1 + step) / (10 + step))


# σ_rel of the uniform average over the whole run (γ = 0), the longest power-function EMA
MAX_EMA_LENGTH = 1 / math.sqrt(12)


def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent γ of the power-function EMA of relative length ``sigma_rel`` (EDM2, Karras et al. 2024, Sec. 3.1).

    After t steps that EMA weights the weights of step k by k^γ (exactly: (k^(γ+1) − (k−1)^(γ+1)) / t^(γ+1),
    :func:`power_ema_rate`); σ_rel is the standard deviation of that profile over the run, in units of the run's
    length: σ_rel² = (γ+1) / ((γ+2)²(γ+3)). γ is the root ≥ 0 of that equation multiplied out,
    γ³ + 7γ² + (16 − 1/σ²)γ + 12 − 1/σ² = 0, which exists for 0 < σ_rel ≤ 1/√12 (γ = 0: the run's plain average).
    """
    if not 0 < sigma_rel <= MAX_EMA_LENGTH:
        raise DdipError(f"an EMA's relative length must lie in (0, {MAX_EMA_LENGTH:.4f}], got {sigma_rel}")
    inv = 1 / sigma_rel ** 2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_ema_rate(gamma: float, step: int) -> float:
    """The rate β of the power-function EMA with exponent γ after optimiser step ``step`` (from 1):
    β = (1 − 1/step)^(γ+1), so the first step's weights start it and the products telescope to the profile k^γ."""
    return (1 - 1 / step) ** (gamma + 1)


def random_crops(images: Tensor, size: int, *, generator: torch.Generator) -> Tensor:
    """One random ``size``×``size`` crop of each image of ``(B, C, H, W)``, its corner drawn from ``generator``."""
    h, w = images.shape[-2:]
    where = generator.device
    corners = torch.stack([torch.randint(0, h - size + 1, (images.shape[0],), generator=generator, device=where),
                           torch.randint(0, w - size + 1, (images.shape[0],), generator=generator, device=where)], 1)
    return torch.stack([img[:, i:i + size, j:j + size] for img, (i, j) in zip(images, corners.tolist())])


# Settings that may change between a run and its resumption without changing what is trained.
_OPERATIONAL = ("out", "max_images", "max_hours", "checkpoint_minutes", "snapshot_every", "log_every",
                "init_weights", "device", "channels_last", "compile",
                "volumes")  # the folder may move: what it holds is checked against data.json instead
# Settings ddip no longer has, with the value under which a run that saved them trained as it does today.
_RETIRED = {"extra_ema_decays": []}  # fixed-rate extra EMAs, replaced by ema_lengths


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _on(device: torch.device, state: dict, channels_last: bool) -> dict:
    """A checkpoint's EMA tensors on ``device``, in the parameters' layout (a checkpoint stores contiguous ones)."""
    state = {k: v.to(device) for k, v in state.items()}
    return {k: v.contiguous(memory_format=torch.channels_last) if v.ndim == 4 else v for k, v in state.items()} \
        if channels_last else state


def _save_weights(path: Path, state_dict: dict, metadata: dict) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in metadata.items()})


def widen_channels(weights: dict[str, Tensor], target: dict[str, Tensor]) -> dict[str, Tensor]:
    """Fit a 1-channel prior's weights to a network with more input channels (the complex prior's 2, or position
    channels).

    Only the first and last convolutions depend on the channel count. The old weights go to channel 0 (the real
    part) and the new channels start at zero, so the widened network predicts exactly as the old one on real
    images and learns the imaginary channel from there. Every other tensor must match as it is.
    """
    out = dict(weights)
    for key, dim in (("conv_in.weight", 1), ("conv_out.weight", 0), ("conv_out.bias", 0)):
        if key in out and key in target and out[key].shape != target[key].shape:
            old, new = out[key], torch.zeros_like(target[key])
            if old.shape[dim] != 1 or old.shape[:dim] + old.shape[dim + 1:] != new.shape[:dim] + new.shape[dim + 1:]:
                raise DdipError(f"{key}: cannot widen shape {tuple(old.shape)} to {tuple(new.shape)}")
            new.narrow(dim, 0, 1).copy_(old)
            out[key] = new
    return out


def _image_source(cfg: TrainConfig, out: Path, *, resuming: bool, rank: int):
    """``make(n, size, generator=, device=)``: the training images, phantoms or the slices of ``cfg.volumes``."""
    if cfg.data != "volumes":
        return random_complex_ellipses if cfg.data == "ellipses-complex" else random_ellipses
    bank = VolumeSlices(cfg.volumes, modality=cfg.modality, size=cfg.unet.image_size, slice_axis=cfg.slice_axis)
    record, path = bank.describe(), out / "data.json"
    if resuming and path.exists() and json.loads(path.read_text()) != record:
        raise DdipError(f"{cfg.volumes}: holds other slices than the run was started on ({path}); resume with the "
                        "same volumes")
    if rank == 0:
        write_json(path, record)
    return lambda n, size, *, generator, device: bank.sample(n, generator=generator, device=device)


def train_prior(cfg: TrainConfig, *, progress: bool | Literal["log"] = True) -> dict:
    """Train (or resume) the run in ``cfg.out`` until ``max_images`` images or ``max_hours``; returns a summary
    (``signal``: the number of the SIGTERM / SIGINT that stopped it, else None).

    ``progress``: a progress bar on stderr; ``"log"`` redraws it once a minute, for output that goes to a log file.

    Under ``torchrun`` (a process group initialised, :func:`ddip.distributed.init_from_env`) every rank trains the same
    network wrapped in ``DistributedDataParallel`` on its own phantom stream (seeds ``seed + rank``; rank 0's stream is
    the single-process one), ``batch_size`` per rank, so one step sees ``batch_size × world`` images. Rank 0 writes
    the checkpoint (with every rank's RNG states), weights, snapshots and log; a run resumes only with the world size
    it was started with.
    """
    rank, n_ranks = distributed.world()
    out = Path(cfg.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoint.pt"
    cfg_path = out / "config.json"
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest convolution kernels
    net = build_unet(cfg.unet, seed=cfg.seed).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    # fused AdamW: one kernel for all parameters on a GPU (the same update; not available for CPU tensors here)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0, fused=device.type == "cuda" or None)
    rng_device = device if cfg.rng == "device" else torch.device("cpu")
    data_rng = torch.Generator(device=rng_device).manual_seed(cfg.seed + rank)
    noise_rng = torch.Generator(device=rng_device).manual_seed(cfg.seed + 1_000_003 + rank)
    step = images = 0
    resuming = ckpt_path.exists()
    if resuming:
        saved_cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else None
        mine = {k: v for k, v in cfg.to_dict().items() if k not in _OPERATIONAL}
        defaults = TrainConfig(out=cfg.out, unet=cfg.unet, data=cfg.data, volumes=cfg.volumes,
                               modality=cfg.modality).to_dict()  # settings added since the start
        theirs = {k: v for k, v in {**defaults, **(saved_cfg or {})}.items()
                  if k not in _OPERATIONAL and not (k in _RETIRED and v == _RETIRED[k])}
        if saved_cfg is not None:
            check_same_settings(theirs, mine, str(cfg_path))
        state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        saved_world = int(state.get("world_size", 1))
        if saved_world != n_ranks:
            raise DdipError(f"{ckpt_path}: the run was trained by {saved_world} process(es); resume it with "
                            f"{saved_world}, not {n_ranks} (each rank's phantom stream is in the checkpoint)")
        net.load_state_dict(state["model"])
        ema = _on(device, state["ema"], cfg.channels_last)
        power = {s: _on(device, state["power_ema"][f"{s:g}"], cfg.channels_last) for s in cfg.ema_lengths}
        opt.load_state_dict(state["optimizer"])
        data_rng.set_state(state["data_rng"] if n_ranks == 1 else state["data_rng"][rank])
        noise_rng.set_state(state["noise_rng"] if n_ranks == 1 else state["noise_rng"][rank])
        step, images = int(state["step"]), int(state["images"])
    elif cfg.init_weights is not None:
        try:
            net.load_state_dict(widen_channels(load_file(cfg.init_weights), net.state_dict()))
        except Exception as exc:
            raise DdipError(f"{cfg.init_weights}: cannot warm-start this network from it ({exc})") from exc
        ema = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if not resuming:  # every power EMA starts where the main one does (its first step replaces it)
        power = {s: {k: v.detach().clone() for k, v in ema.items()} for s in cfg.ema_lengths}
    gammas = {s: power_ema_gamma(s) for s in cfg.ema_lengths}
    ema_float = [k for k, v in ema.items() if v.dtype.is_floating_point]
    ema_other = [k for k in ema if k not in ema_float]  # integer buffers: copied, not averaged
    params = net.state_dict()
    if rank == 0:
        write_json(cfg_path, cfg.to_dict())
    model = net
    if n_ranks > 1:
        model = DistributedDataParallel(net)  # broadcasts rank 0's weights, averages gradients in backward
    prior = DiffusionPrior(model, channels_last=cfg.channels_last, compile=cfg.compile,
                           position_channels=cfg.unet.position_channels)

    def checkpoint() -> None:
        rngs = distributed.gather((data_rng.get_state(), noise_rng.get_state()))  # collective: every rank
        if rank != 0:
            return
        _save_checkpoint(ckpt_path, {"model": net.state_dict(), "ema": ema, "optimizer": opt.state_dict(),
                                     "data_rng": rngs[0][0] if n_ranks == 1 else [r[0] for r in rngs],
                                     "noise_rng": rngs[0][1] if n_ranks == 1 else [r[1] for r in rngs],
                                     "step": step, "images": images, "world_size": n_ranks,
                                     "power_ema": {f"{s:g}": e for s, e in power.items()}})
        save_prior(out / "ema.safetensors", ema, cfg.unet, images_seen=images)
        for s, e in power.items():
            save_prior(out / f"ema-len{s:g}.safetensors", e, cfg.unet, images_seen=images, ema_length=s)

    log_path = out / "loss_log.csv"
    if rank == 0 and not log_path.exists():
        log_path.write_text("step,images,loss,images_per_s,elapsed_s\n")
    t_start = t_ckpt = t_log = time.time()
    losses: list[Tensor] = []  # kept on the device: reading a loss each step would stall a GPU
    step_images: list[int] = []  # images of each step since the last log line (crop steps differ)
    make = _image_source(cfg, out, resuming=resuming, rank=rank)  # a bad data folder fails here, first
    bar = tqdm(total=cfg.max_images, initial=images, unit="img", disable=not progress or rank != 0,
               dynamic_ncols=True, mininterval=60 if progress == "log" else 0.1)
    net.train()
    with StopRequest() as stop:  # SIGTERM / SIGINT: leave the loop, then the final checkpoint below
        while images < cfg.max_images:
            # every rank takes the same decisions: stop (signal or time limit) and checkpoint (rank 0's clock)
            out_of_time = (time.time() - t_start) / 3600 >= cfg.max_hours
            ckpt_due = rank == 0 and (time.time() - t_ckpt) / 60 >= cfg.checkpoint_minutes
            halt, ckpt_due = distributed.any_flag(stop.requested or out_of_time, ckpt_due)
            if ckpt_due:
                checkpoint()
                t_ckpt = time.time()
            if halt:
                break
            crop, position = cfg.unet.image_size, None  # None: the whole image's positions
            if cfg.crop_sizes:
                pick = torch.randint(0, len(cfg.crop_sizes), (1,), generator=data_rng, device=data_rng.device)
                crop = cfg.crop_sizes[int(pick)]
            batch = cfg.batch_for(crop)
            if crop < cfg.unet.image_size:
                # a 256 px phantom costs more to rasterise than a training step on one 64 px crop: take several
                # crops of each (a quarter of the image's area in all), which still come from as many phantoms
                per = max(1, (cfg.unet.image_size // crop) ** 2 // 4)
                full = make(-(-batch // per), cfg.unet.image_size, generator=data_rng, device=device)
                if cfg.unet.position_channels:  # each crop keeps the positions of its pixels in the whole image
                    full = torch.cat([full, position_grid(full.shape[0], *full.shape[-2:], device=device)], 1)
                x0 = random_crops(full.repeat_interleave(per, dim=0)[:batch], crop, generator=data_rng)
                if cfg.unet.position_channels:
                    x0, position = x0[:, :-2], x0[:, -2:]
            else:
                x0 = make(batch, cfg.unet.image_size, generator=data_rng, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                loss = prior.loss(x0, generator=noise_rng, min_snr_gamma=cfg.min_snr_gamma,
                                  pure_noise_density=cfg.pure_noise_density, position=position).mean()
            if cfg.warmup_steps:
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss = loss.detach()
            step += 1
            images += batch * n_ranks
            step_images.append(batch * n_ranks)
            for target, decay in ((ema, ema_rate(cfg.ema_decay, step)),
                                  *((e, power_ema_rate(gammas[s], step)) for s, e in power.items())):
                with torch.no_grad():  # ema ← decay·ema + (1 − decay)·θ, all tensors in one call
                    torch._foreach_lerp_([target[k] for k in ema_float], [params[k] for k in ema_float], 1 - decay)
                    for k in ema_other:
                        target[k].copy_(params[k])
            losses.append(loss)
            bar.update(batch * n_ranks)
            if step % cfg.log_every == 0:
                now = time.time()
                rate = sum(step_images) / max(now - t_log, 1e-9)
                mean_loss = torch.stack(losses).mean().item()  # rank 0's own loss
                if rank == 0:
                    with open(log_path, "a") as fh:
                        fh.write(f"{step},{images},{mean_loss:.6f},{rate:.2f},{now - t_start:.1f}\n")
                bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.1f}")
                losses.clear()
                step_images.clear()
                t_log = now
            crossed = images // max(cfg.snapshot_every, 1) > (images - batch * n_ranks) // max(cfg.snapshot_every, 1)
            if rank == 0 and cfg.snapshot_every and crossed:
                _save_weights(out / "snapshots" / f"ema_{images:09d}.safetensors", ema, {"images_seen": images})
                for s, e in power.items():
                    _save_weights(out / "snapshots" / f"ema-len{s:g}_{images:09d}.safetensors", e,
                                  {"images_seen": images, "ema_length": s})
        bar.close()
    checkpoint()
    return {"step": step, "images": images, "out": str(out), "finished": images >= cfg.max_images,
            "signal": stop.signum,
            "elapsed_s": time.time() - t_start, "last_loss": math.nan if not losses else losses[-1].item()}
