"""Forward operators of the three tasks, with deepinv's interface (``A``, ``A_adjoint``, ``A_dagger``)."""

from ddip.physics.base import LinearOperator, adjointness_error, check_finite, operator_norm
from ddip.physics.cg import conjugate_gradient
from ddip.physics.ct import ParallelBeamCT, sparse_view_ct
from ddip.physics.masks import achieved_acceleration, n_acs_lines, poisson_mask, uniform1d_mask
from ddip.physics.mri import (
    MultiCoilMRI,
    SingleCoilMRI,
    estimate_coil_maps,
    fft2c,
    ifft2c,
    mri_multi_coil,
    mri_single_coil,
)
from ddip.physics.noise import add_noise
from ddip.physics.resample import Resampled, resample

__all__ = [
    "LinearOperator",
    "MultiCoilMRI",
    "ParallelBeamCT",
    "Resampled",
    "SingleCoilMRI",
    "achieved_acceleration",
    "add_noise",
    "adjointness_error",
    "check_finite",
    "conjugate_gradient",
    "estimate_coil_maps",
    "fft2c",
    "ifft2c",
    "mri_multi_coil",
    "mri_single_coil",
    "n_acs_lines",
    "operator_norm",
    "poisson_mask",
    "resample",
    "sparse_view_ct",
    "uniform1d_mask",
]
