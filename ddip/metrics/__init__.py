"""Image-quality metrics: PSNR, SSIM (per slice and per volume) and offline LPIPS."""

from __future__ import annotations

import math

from torch import Tensor

from ddip.metrics.image import band_errors, psnr, psnr_volume, ssim
from ddip.metrics.perceptual import lpips


def _mean(values: list[float] | None) -> float | None:
    if not values:
        return None
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def evaluate_volume(x: Tensor, ref: Tensor, *, ssim_data_range: float | None = None,
                    with_lpips: bool = True) -> dict:
    """Per-slice PSNR / SSIM / LPIPS and their means, plus the volume PSNR, as JSON-able numbers.

    LPIPS is ``None`` (never 0) when its weights are not installed or ``with_lpips`` is False.
    """
    p = psnr(x, ref).tolist()
    s = ssim(x, ref, data_range=ssim_data_range).tolist()
    lp = lpips(x, ref) if with_lpips else None
    lp_list = None if lp is None else lp.tolist()
    return {
        "psnr": _mean(p),
        "ssim": _mean(s),
        "lpips": _mean(lp_list),
        "psnr_volume": psnr_volume(x, ref),
        "per_slice": {"psnr": p, "ssim": s, "lpips": lp_list},
    }


__all__ = ["band_errors", "evaluate_volume", "lpips", "psnr", "psnr_volume", "ssim"]
