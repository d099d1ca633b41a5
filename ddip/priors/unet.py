"""The denoiser network: ``diffusers.UNet2DModel`` configured as guided-diffusion's ADM UNet.

ADM settings expressed in diffusers' terms: scale-shift normalisation of the time embedding
(``resnet_time_scale_shift="scale_shift"``), residual blocks for down/up-sampling (``downsample_type="resnet"``),
attention at chosen resolutions (``AttnDownBlock2D`` / ``AttnUpBlock2D``, plus the middle block), GroupNorm with 32
groups, sinusoidal time embedding of the raw integer t with cos first (``flip_sin_to_cos=True``, ``freq_shift=0``),
and ``num_res_blocks`` residual blocks per level on the way down (``layers_per_block``; diffusers, like ADM, uses one
more on the way up).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ddip.errors import DdipError


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of the ADM-style UNet (names follow guided-diffusion where they exist)."""

    image_size: int = 64
    in_channels: int = 1
    out_channels: int = 1
    model_channels: int = 32
    channel_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] = (16,)  # feature-map sizes (pixels) that get attention
    num_head_channels: int = 32
    # two more input channels holding each pixel's position in the whole image, x and y in [-1, 1] (Patch Diffusion,
    # Wang et al. 2023): a network trained on crops then knows where a crop lies (DiffusionPrior.eps adds them)
    position_channels: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.position_channels, bool):
            raise DdipError(f"network setting position_channels must be true or false, got {self.position_channels!r}")
        for name in ("image_size", "in_channels", "out_channels", "model_channels", "num_res_blocks",
                     "num_head_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DdipError(f"network setting {name} must be a positive integer, got {value!r}")
        for name in ("channel_mult", "attention_resolutions"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int)
                                                           for v in value):
                raise DdipError(f"network setting {name} must be a list of integers, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        levels = len(self.channel_mult)
        if levels == 0 or min(self.channel_mult) < 1:
            raise DdipError(f"channel_mult needs one positive multiplier per level, got {self.channel_mult}")
        if self.image_size % (2 ** (levels - 1)):
            raise DdipError(f"image_size {self.image_size} is not divisible by 2^{levels - 1} for {levels} levels")
        for c in self.block_out_channels:
            if c % 32:
                raise DdipError(f"channel count {c} is not a multiple of 32 (GroupNorm groups)")
        sizes = self.feature_sizes
        if not set(self.attention_resolutions) <= set(sizes):
            raise DdipError(f"attention_resolutions {self.attention_resolutions} must be feature-map sizes of this "
                            f"network: {', '.join(map(str, sizes))}")
        attended = [c for c, s in zip(self.block_out_channels, sizes) if s in self.attention_resolutions]
        for c in (*attended, self.block_out_channels[-1]):  # the middle block always has attention
            if c % self.num_head_channels:
                raise DdipError(f"num_head_channels {self.num_head_channels} does not divide the {c} channels of an "
                                f"attention layer")

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """The side of the feature maps at each level, from the input's down."""
        return tuple(self.image_size // 2**i for i in range(len(self.channel_mult)))

    @property
    def block_out_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_mult)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def build_unet(cfg: UNetConfig, *, seed: int = 0):
    """An ADM-style ``diffusers.UNet2DModel`` for ``cfg``, its initial weights drawn from ``seed``.

    diffusers initialises from torch's global generator; it is forked here, so the caller's global RNG state is left
    untouched and the same seed always gives the same network.
    """
    import torch
    from diffusers import UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _unet2d(UNet2DModel, cfg)


def _unet2d(UNet2DModel, cfg: UNetConfig):
    attn = [size in cfg.attention_resolutions for size in cfg.feature_sizes]
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=cfg.in_channels + 2 * cfg.position_channels,
        out_channels=cfg.out_channels,
        block_out_channels=cfg.block_out_channels,
        layers_per_block=cfg.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "ResnetDownsampleBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "ResnetUpsampleBlock2D" for a in reversed(attn)),
        attention_head_dim=cfg.num_head_channels,
        resnet_time_scale_shift="scale_shift",
        downsample_type="resnet",
        upsample_type="resnet",
        norm_num_groups=32,
        attn_norm_num_groups=32,  # diffusers drops the mid-block attention's GroupNorm with scale-shift unless told
        flip_sin_to_cos=True,
        freq_shift=0,
        time_embedding_type="positional",
        dropout=0.0,
    )
