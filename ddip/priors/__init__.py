"""Diffusion priors: the VP schedule, the ADM-style network and the object that owns both."""

from ddip.priors.adm import ADM_PRESETS, adm_config, convert_adm_checkpoint, load_adm_checkpoint
from ddip.priors.prior import DiffusionPrior
from ddip.priors.registry import default_prior, load_prior, save_prior, shipped_priors
from ddip.priors.schedule import VPSchedule
from ddip.priors.unet import UNetConfig, build_unet

__all__ = ["ADM_PRESETS", "DiffusionPrior", "UNetConfig", "VPSchedule", "adm_config", "build_unet",
           "convert_adm_checkpoint", "default_prior", "load_adm_checkpoint", "load_prior", "save_prior",
           "shipped_priors"]
