"""Diffusion inverse solvers on volumes: one sampling loop (:func:`solve`) and a step per method."""

from ddip.solvers.admm_tv import admm_tv_reconstruct
from ddip.solvers.base import DataConsistencyStep, Step, StepOutput, initialise, predict_eps, solve
from ddip.solvers.dds import DDNM, DDS, dds_data_consistency
from ddip.solvers.dps import DPS
from ddip.solvers.mbir import DiffusionMBIR

__all__ = [
    "DDNM",
    "DDS",
    "DPS",
    "DataConsistencyStep",
    "DiffusionMBIR",
    "Step",
    "StepOutput",
    "admm_tv_reconstruct",
    "dds_data_consistency",
    "initialise",
    "predict_eps",
    "solve",
]
