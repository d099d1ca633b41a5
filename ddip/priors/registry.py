"""Finding priors: the shipped ones by name, or a safetensors file written by ``ddip train-prior``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddip.errors import DdipError
from ddip.io import atomic_path, read_safetensors
from ddip.priors.prior import DiffusionPrior
from ddip.priors.unet import UNetConfig, build_unet

WEIGHTS = Path(__file__).parent / "weights"


def shipped_priors() -> list[str]:
    """Names of the priors that ship with the package."""
    return sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))


def default_prior(task: str, size: int) -> str:
    """The shipped prior for a task at an image size: the complex one for CS-MRI (complex images) where it ships,
    otherwise the real ELLIPSES prior of that size (applied to real and imaginary parts alike for complex data)."""
    shipped = shipped_priors()
    for name in ([f"ellipses-complex-{size}"] if task == "csmri" else []) + [f"ellipses-{size}"]:
        if name in shipped:
            return name
    raise DdipError(f"no shipped prior for {task} at {size} px (shipped: {', '.join(shipped) or 'none'}); pass "
                    f"--prior NAME|PATH (with --resize for another image size)")


def _unet_config(path: Path, metadata: dict) -> UNetConfig:
    raw = metadata.get("unet")
    if raw is None:
        side = path.with_suffix(".json")
        sibling = path.parent / "config.json"
        for candidate in (side, sibling):
            if candidate.is_file():
                cfg = json.loads(candidate.read_text())
                raw = json.dumps(cfg.get("unet", cfg))
                break
    if raw is None:
        raise DdipError(f"{path}: no network configuration (neither 'unet' metadata nor a config.json beside it)")
    try:
        d = json.loads(raw)
    except (json.JSONDecodeError, TypeError) as exc:
        raise DdipError(f"{path}: the network configuration is not valid JSON ({exc})") from exc
    if not isinstance(d, dict):
        raise DdipError(f"{path}: the network configuration must be a JSON object, got {type(d).__name__}")
    fields = {f.name: f.type for f in dataclasses.fields(UNetConfig)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise DdipError(f"{path}: unknown network setting(s) {unknown}; known: {', '.join(fields)}")
    try:  # UNetConfig checks each value's type and range: the one home of those rules
        return UNetConfig(**d)
    except DdipError as exc:
        raise DdipError(f"{path}: {exc}") from None


SCHEDULE = "vp-linear-1e-4-2e-2-T1000"  # the only schedule our priors use (VPSchedule.linear)


def save_prior(path: str | os.PathLike, state: dict[str, torch.Tensor], cfg: UNetConfig, **metadata) -> None:
    """Write a prior file :func:`load_prior` reads: the network's tensors, its configuration and ``metadata`` (JSON
    values), atomically."""
    meta = {"unet": cfg.to_dict(), "schedule": SCHEDULE, "data_range": "[0,1]", **metadata}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in meta.items()})


def _load_diffusers_folder(path: Path, device) -> DiffusionPrior:
    """A ``UNet2DModel.save_pretrained`` folder (config.json + weights), read from disk only."""
    from diffusers import UNet2DModel

    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DdipError(f"{path}: a prior folder must hold a diffusers config.json ({exc})") from exc
    if config.get("_class_name") != "UNet2DModel":
        raise DdipError(f"{path}: config.json describes a {config.get('_class_name')!r}; ddip reads UNet2DModel "
                        f"folders (or safetensors files from train-prior / convert-prior)")
    try:
        net = UNet2DModel.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # missing or mismatched weight files: diffusers raises several kinds
        raise DdipError(f"{path}: cannot load the UNet2DModel folder ({type(exc).__name__}: {exc})") from exc
    return DiffusionPrior(net.to(device).eval())


def load_prior(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> DiffusionPrior:
    """A ready :class:`DiffusionPrior`: a shipped name (``ellipses-64``), a ``.safetensors`` file (``train-prior``,
    ``convert-prior``) or a diffusers ``UNet2DModel`` folder (``save_pretrained``; its images in [0, 1] and the
    linear VP schedule with T = 1000 are assumed, as for every ddip prior)."""
    name = str(name_or_path)
    path = WEIGHTS / f"{name}.safetensors" if name in shipped_priors() else Path(name)
    if path.is_dir():
        return _load_diffusers_folder(path, device)
    if not path.is_file():
        raise DdipError(f"prior {name!r}: not a shipped prior ({', '.join(shipped_priors()) or 'none'}) "
                        f"and no such file or folder (a guided-diffusion checkpoint is read after "
                        f"'ddip convert-prior CHECKPOINT --adm-config CONFIG --out prior.safetensors')")
    if path.suffix != ".safetensors":
        raise DdipError(f"{path}: priors are read from safetensors files or diffusers folders; convert a "
                        f"guided-diffusion checkpoint first: ddip convert-prior {path} --adm-config "
                        f"ellipses-256|CONFIG.json --out prior.safetensors")
    state, metadata = read_safetensors(path, "prior")
    cfg = _unet_config(path, metadata)
    net = build_unet(cfg)
    own = net.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise DdipError(f"{path}: weights do not match the network: missing {missing[:5]}, unexpected "
                        f"{unexpected[:5]}")
    wrong = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise DdipError(f"{path}: {len(wrong)} weight(s) have the wrong shape for the network configuration, e.g. "
                        f"{k}: {tuple(state[k].shape)} instead of {tuple(own[k].shape)}")
    net.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return DiffusionPrior(net.to(device).eval(), position_channels=cfg.position_channels)
