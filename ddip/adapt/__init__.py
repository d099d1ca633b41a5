"""Adapting the diffusion prior to the volume during sampling: LoRA, the adaptation hook and the paper's methods."""

from ddip.adapt.adapter import (
    AdaptConfig,
    Replay,
    VolumeAdapter,
    adaptation_backward,
    adaptation_loss,
    load_trajectory,
    network_estimate,
    save_trajectory,
)
from ddip.adapt.lora import (
    LoRAConfig,
    count_parameters,
    inject_lora,
    load_merged,
    lora_base_weights,
    merge_lora,
    restore,
    snapshot,
    trainable_parameters,
)
from ddip.adapt.methods import AdaptReport, d3ip, d3ip_mbir, d3ip_meta, ddip_slicewise, scd

__all__ = [
    "AdaptConfig",
    "AdaptReport",
    "LoRAConfig",
    "Replay",
    "VolumeAdapter",
    "adaptation_backward",
    "adaptation_loss",
    "count_parameters",
    "d3ip",
    "d3ip_mbir",
    "d3ip_meta",
    "ddip_slicewise",
    "inject_lora",
    "load_merged",
    "load_trajectory",
    "lora_base_weights",
    "merge_lora",
    "network_estimate",
    "restore",
    "save_trajectory",
    "scd",
    "snapshot",
    "trainable_parameters",
]
