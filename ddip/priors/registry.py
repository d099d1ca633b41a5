"""Finding priors: the shipped ones by name, or a safetensors file written by ``ddip train-prior``."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch

from ddip.errors import DdipError
from ddip.io import read_safetensors
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
    for key, value in d.items():
        ok = (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
              if "tuple" in str(fields[key]) else isinstance(value, int) and not isinstance(value, bool))
        if not ok or (isinstance(value, int) and not isinstance(value, bool) and value < 1):
            raise DdipError(f"{path}: network setting {key!r} = {value!r} is not a positive integer (list)")
    return UNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def load_prior(name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu") -> DiffusionPrior:
    """A ready :class:`DiffusionPrior`: a shipped name (``ellipses-64``) or a ``.safetensors`` path."""
    name = str(name_or_path)
    path = WEIGHTS / f"{name}.safetensors" if name in shipped_priors() else Path(name)
    if not path.is_file():
        raise DdipError(f"prior {name!r}: not a shipped prior ({', '.join(shipped_priors()) or 'none'}) "
                        f"and no such file")
    if path.suffix != ".safetensors":
        raise DdipError(f"{path}: priors are read from safetensors files; for guided-diffusion .pt checkpoints use "
                        f"ddip.priors.load_adm_checkpoint(path, config)")
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
    return DiffusionPrior(net.to(device).eval())
