"""ddip: 3D CT and MRI reconstruction with diffusion priors adapted during sampling (DDIP / D3IP).

Volumes are stored as a batch of slices ``(D, C, H, W)`` with intensities in [0, 1]; complex data are native
complex tensors. Operators follow deepinv's interface (``A``, ``A_adjoint``, ``A_dagger``).
"""

from ddip.errors import DdipError

__version__ = "0.1.0"
__all__ = ["DdipError", "__version__"]
