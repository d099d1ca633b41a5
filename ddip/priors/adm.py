"""Loading guided-diffusion (ADM) checkpoints, the authors' priors, into our ``diffusers.UNet2DModel``.

The ADM ``UNetModel`` and the ADM-style ``UNet2DModel`` of :mod:`ddip.priors.unet` compute the same function: the same
blocks in the same order (channel change in the first residual block of each level, residual blocks for
down/up-sampling, attention after each residual block at the chosen resolutions, scale-shift time conditioning,
GroupNorm(32), cos-first sinusoidal embedding of the raw timestep). Only names and two layouts differ:

* ADM's attention has one ``qkv`` 1×1 Conv1d whose output rows are grouped per head as (q, k, v) ("legacy" order);
  diffusers has separate ``to_q``, ``to_k``, ``to_v`` Linear layers whose rows are grouped per head;
* ``proj_out`` is a 1×1 Conv1d, ``to_out.0`` a Linear (the same matrix without the trailing kernel axis).

Two file formats are read, both with ``torch.load(..., weights_only=True)`` only (nothing else is unpickled):

* a plain ``state_dict`` with ADM names (``input_blocks.1.0.in_layers.2.weight`` ...);
* a score_sde EMA file ``{"decay", "num_updates", "shadow_params": [Tensor, ...]}`` whose tensors follow
  ``UNetModel.parameters()`` order: names are recovered positionally from :func:`adm_parameters`.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ddip.errors import DdipError, first_line
from ddip.priors.prior import DiffusionPrior
from ddip.priors.registry import save_prior
from ddip.priors.unet import UNetConfig, build_unet

# guided-diffusion hyper-parameters of the authors' priors (reference-notes.md §1): the 256 px ELLIPSES network of the
# paper's CT and MRI experiments (374 M parameters, 1.5 TFLOP per forward; ELLIPSES2AAPM.yml, ELLIPSES2HCP_MRI.yml)
# and DDS's complex fastMRI brain network (FASTMRI_BRAIN2KNEE.yml: 2 channels in, 4 out with learned σ, 320 px).
_ADM_256 = dict(image_size=256, model_channels=256, channel_mult=[1, 1, 2, 2, 4, 4], num_res_blocks=1,
                attention_resolutions=[16], num_head_channels=64, use_scale_shift_norm=True, resblock_updown=True,
                in_channels=1, out_channels=1)
ADM_PRESETS = {
    "ellipses-256": _ADM_256,
    "fastmri-brain-320": {**_ADM_256, "image_size": 320, "in_channels": 2, "out_channels": 4},
}

_ADM_KEYS = ("image_size", "model_channels", "channel_mult", "num_res_blocks", "attention_resolutions",
             "num_head_channels", "use_scale_shift_norm", "resblock_updown", "in_channels", "out_channels")


@dataclass(frozen=True)
class _Module:
    """One ADM module with parameters: its name prefix, kind and channel counts, and our module's prefix."""

    adm: str
    ours: str
    kind: str  # "linear", "conv", "norm", "res", "attn"
    c_in: int
    c_out: int


def _adm_modules(cfg: dict) -> list[_Module]:
    """ADM's parametrised modules in ``UNetModel.__init__`` definition order, paired with our module names."""
    mc = int(cfg["model_channels"])
    mult = [int(m) for m in cfg["channel_mult"]]
    n_res = int(cfg["num_res_blocks"])
    size = int(cfg["image_size"])
    attn_ds = {size // int(r) for r in cfg["attention_resolutions"]}
    emb = 4 * mc
    mods = [_Module("time_embed.0", "time_embedding.linear_1", "linear", mc, emb),
            _Module("time_embed.2", "time_embedding.linear_2", "linear", emb, emb)]
    ch = mc * mult[0]
    mods.append(_Module("input_blocks.0.0", "conv_in", "conv", int(cfg["in_channels"]), ch))
    skip_chans, ds, k = [ch], 1, 1
    for level, m in enumerate(mult):
        for j in range(n_res):
            mods.append(_Module(f"input_blocks.{k}.0", f"down_blocks.{level}.resnets.{j}", "res", ch, mc * m))
            ch = mc * m
            if ds in attn_ds:
                mods.append(_Module(f"input_blocks.{k}.1", f"down_blocks.{level}.attentions.{j}", "attn", ch, ch))
            skip_chans.append(ch)
            k += 1
        if level != len(mult) - 1:
            mods.append(_Module(f"input_blocks.{k}.0", f"down_blocks.{level}.downsamplers.0", "res", ch, ch))
            skip_chans.append(ch)
            ds *= 2
            k += 1
    mods += [_Module("middle_block.0", "mid_block.resnets.0", "res", ch, ch),
             _Module("middle_block.1", "mid_block.attentions.0", "attn", ch, ch),
             _Module("middle_block.2", "mid_block.resnets.1", "res", ch, ch)]
    k = 0
    for up, (level, m) in enumerate(reversed(list(enumerate(mult)))):
        for i in range(n_res + 1):
            ich = skip_chans.pop()
            mods.append(_Module(f"output_blocks.{k}.0", f"up_blocks.{up}.resnets.{i}", "res", ch + ich, mc * m))
            ch = mc * m
            sub = 1
            if ds in attn_ds:
                mods.append(_Module(f"output_blocks.{k}.1", f"up_blocks.{up}.attentions.{i}", "attn", ch, ch))
                sub = 2
            if level and i == n_res:
                mods.append(_Module(f"output_blocks.{k}.{sub}", f"up_blocks.{up}.upsamplers.0", "res", ch, ch))
                ds //= 2
            k += 1
    mods += [_Module("out.0", "conv_norm_out", "norm", ch, ch),
             _Module("out.2", "conv_out", "conv", ch, int(cfg["out_channels"]))]
    return mods


def _check_config(cfg: dict) -> None:
    missing = [k for k in _ADM_KEYS if k not in cfg]
    if missing:
        raise DdipError(f"ADM config lacks {missing} (guided-diffusion hyper-parameter names)")
    if not cfg["use_scale_shift_norm"] or not cfg["resblock_updown"]:
        raise DdipError("only ADM networks with use_scale_shift_norm=True and resblock_updown=True are supported "
                        "(the settings of every prior the paper uses)")


def adm_parameters(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every parameter of guided-diffusion's ``UNetModel`` for ``cfg``, in ``parameters()`` order."""
    _check_config(cfg)
    emb = 4 * int(cfg["model_channels"])
    out: list[tuple[str, tuple[int, ...]]] = []
    for mod in _adm_modules(cfg):
        a, ci, co = mod.adm, mod.c_in, mod.c_out
        if mod.kind == "linear":
            out += [(f"{a}.weight", (co, ci)), (f"{a}.bias", (co,))]
        elif mod.kind == "conv":
            out += [(f"{a}.weight", (co, ci, 3, 3)), (f"{a}.bias", (co,))]
        elif mod.kind == "norm":
            out += [(f"{a}.weight", (ci,)), (f"{a}.bias", (ci,))]
        elif mod.kind == "res":
            out += [(f"{a}.in_layers.0.weight", (ci,)), (f"{a}.in_layers.0.bias", (ci,)),
                    (f"{a}.in_layers.2.weight", (co, ci, 3, 3)), (f"{a}.in_layers.2.bias", (co,)),
                    (f"{a}.emb_layers.1.weight", (2 * co, emb)), (f"{a}.emb_layers.1.bias", (2 * co,)),
                    (f"{a}.out_layers.0.weight", (co,)), (f"{a}.out_layers.0.bias", (co,)),
                    (f"{a}.out_layers.3.weight", (co, co, 3, 3)), (f"{a}.out_layers.3.bias", (co,))]
            if ci != co:
                out += [(f"{a}.skip_connection.weight", (co, ci, 1, 1)), (f"{a}.skip_connection.bias", (co,))]
        else:  # attention
            out += [(f"{a}.norm.weight", (ci,)), (f"{a}.norm.bias", (ci,)),
                    (f"{a}.qkv.weight", (3 * ci, ci, 1)), (f"{a}.qkv.bias", (3 * ci,)),
                    (f"{a}.proj_out.weight", (ci, ci, 1)), (f"{a}.proj_out.bias", (ci,))]
    return out


_RES_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
              "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}


def convert_adm_state_dict(adm: dict[str, Tensor], cfg: dict) -> dict[str, Tensor]:
    """ADM-named tensors -> our ``UNet2DModel`` state dict (qkv split per head, 1×1 Conv1d -> Linear)."""
    expected = dict(adm_parameters(cfg))
    missing = sorted(set(expected) - set(adm))
    unexpected = sorted(set(adm) - set(expected))
    if missing or unexpected:
        raise DdipError(f"ADM checkpoint does not match the config: missing tensors {missing[:8]}"
                        f"{' …' if len(missing) > 8 else ''}, unexpected tensors {unexpected[:8]}"
                        f"{' …' if len(unexpected) > 8 else ''}")
    wrong = [f"{k} {tuple(adm[k].shape)} != {v}" for k, v in expected.items() if tuple(adm[k].shape) != v]
    if wrong:
        raise DdipError(f"ADM checkpoint tensors have the wrong shape: {wrong[:5]}")
    head = int(cfg["num_head_channels"])
    ours: dict[str, Tensor] = {}
    for mod in _adm_modules(cfg):
        a, o = mod.adm, mod.ours
        if mod.kind in ("linear", "conv", "norm"):
            for p in ("weight", "bias"):
                ours[f"{o}.{p}"] = adm[f"{a}.{p}"]
        elif mod.kind == "res":
            for src, dst in _RES_NAMES.items():
                if f"{a}.{src}.weight" in adm:
                    for p in ("weight", "bias"):
                        ours[f"{o}.{dst}.{p}"] = adm[f"{a}.{src}.{p}"]
        else:
            c = mod.c_in
            n_heads = c // head
            for p in ("weight", "bias"):
                qkv = adm[f"{a}.qkv.{p}"].reshape(n_heads, 3, head, *([c] if p == "weight" else []))
                for idx, name in enumerate(("to_q", "to_k", "to_v")):
                    ours[f"{o}.{name}.{p}"] = qkv[:, idx].reshape(c, *([c] if p == "weight" else []))
            ours[f"{o}.group_norm.weight"] = adm[f"{a}.norm.weight"]
            ours[f"{o}.group_norm.bias"] = adm[f"{a}.norm.bias"]
            ours[f"{o}.to_out.0.weight"] = adm[f"{a}.proj_out.weight"][..., 0]
            ours[f"{o}.to_out.0.bias"] = adm[f"{a}.proj_out.bias"]
    return {k: v.contiguous() for k, v in ours.items()}


def unet_config_from_adm(cfg: dict) -> UNetConfig:
    """Our :class:`UNetConfig` for guided-diffusion hyper-parameters.

    ADM attends where the downsampling rate ``ds`` (1, 2, 4, …) equals ``image_size // r`` for an attention resolution
    ``r``; a rate that no level has (e.g. 16 at 320 px: 320 // 16 = 20) attends nowhere, and is dropped here too.
    """
    _check_config(cfg)
    size, levels = int(cfg["image_size"]), len(cfg["channel_mult"])
    rates = {size // int(r) for r in cfg["attention_resolutions"]}
    attention = tuple(size // 2**i for i in range(levels) if 2**i in rates)
    return UNetConfig(image_size=int(cfg["image_size"]), in_channels=int(cfg["in_channels"]),
                      out_channels=int(cfg["out_channels"]), model_channels=int(cfg["model_channels"]),
                      channel_mult=tuple(int(m) for m in cfg["channel_mult"]),
                      num_res_blocks=int(cfg["num_res_blocks"]),
                      attention_resolutions=attention,
                      num_head_channels=int(cfg["num_head_channels"]))


def read_adm_file(path: str | os.PathLike, cfg: dict) -> dict[str, Tensor]:
    """ADM-named tensors from a plain state_dict or a positional score_sde EMA file (``weights_only`` load)."""
    p = Path(path)
    if not p.is_file():
        raise DdipError(f"{p}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # a file it refuses is refused below, in one line
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupt, or holding objects a weights-only load refuses
        raise DdipError(f"{p}: cannot be loaded as a weights-only checkpoint ({first_line(exc)})") from exc
    if isinstance(obj, dict) and "shadow_params" in obj:
        names = adm_parameters(cfg)
        shadow = list(obj["shadow_params"])
        if len(shadow) != len(names):
            raise DdipError(f"{p}: EMA file holds {len(shadow)} tensors, the config's network has {len(names)} "
                            f"(first unmatched: {names[len(shadow)][0] if len(shadow) < len(names) else 'extra'})")
        return {name: t for (name, _), t in zip(names, shadow)}
    if isinstance(obj, dict) and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise DdipError(f"{p}: neither a state_dict nor a score_sde EMA file")


def adm_config(spec: str | os.PathLike) -> dict:
    """guided-diffusion hyper-parameters from a preset name (:data:`ADM_PRESETS`) or a JSON file of them."""
    if str(spec) in ADM_PRESETS:
        return dict(ADM_PRESETS[str(spec)])
    p = Path(spec)
    if not p.is_file():
        raise DdipError(f"ADM config {str(spec)!r}: neither a preset ({', '.join(ADM_PRESETS)}) nor a JSON file")
    try:
        cfg = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DdipError(f"{p}: not a JSON file of guided-diffusion hyper-parameters ({exc})") from exc
    if not isinstance(cfg, dict):
        raise DdipError(f"{p}: the ADM config must be a JSON object")
    _check_config(cfg)
    return cfg


def convert_adm_checkpoint(path: str | os.PathLike, config: dict, out: str | os.PathLike, *,
                           source: str | None = None) -> UNetConfig:
    """Write the ADM checkpoint at ``path`` as a ddip prior file (``--prior out``); returns its network config."""
    ucfg = unet_config_from_adm(config)
    state = convert_adm_state_dict(read_adm_file(path, config), config)
    net = build_unet(ucfg)
    net.load_state_dict(state, strict=True)  # the converted tensors fit the network before anything is written
    save_prior(out, net.state_dict(), ucfg, source=source or str(path), adm_config=config)
    return ucfg


def load_adm_checkpoint(path: str | os.PathLike, config: dict, *, device: torch.device | str = "cpu"
                        ) -> DiffusionPrior:
    """A :class:`DiffusionPrior` whose network reproduces the ADM checkpoint at ``path``.

    ``config`` uses guided-diffusion's names (``image_size, model_channels, channel_mult, num_res_blocks,
    attention_resolutions, num_head_channels, use_scale_shift_norm, resblock_updown, in_channels, out_channels``);
    with ``learn_sigma`` the extra output channels are kept in the network and ignored by ``DiffusionPrior.eps``.
    """
    ucfg = unet_config_from_adm(config)
    state = convert_adm_state_dict(read_adm_file(path, config), config)
    net = build_unet(ucfg)
    net.load_state_dict(state, strict=True)
    return DiffusionPrior(net.to(device).eval())
