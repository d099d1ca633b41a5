"""Diffusion priors: the VP schedule, the ADM-style network and the object that owns both."""

from ddip.priors.adm import load_adm_checkpoint
from ddip.priors.prior import DiffusionPrior
from ddip.priors.registry import default_prior, load_prior, shipped_priors
from ddip.priors.schedule import VPSchedule
from ddip.priors.unet import UNetConfig, build_unet

__all__ = ["DiffusionPrior", "UNetConfig", "VPSchedule", "build_unet", "default_prior", "load_adm_checkpoint",
           "load_prior", "shipped_priors"]
