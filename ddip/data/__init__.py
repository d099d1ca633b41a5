"""Phantoms for training priors, and real volumes for reconstruction."""

from ddip.data.dev import DEV_VOLUMES, dev_volume_path
from ddip.data.fixtures import load_fixture
from ddip.data.phantoms import ellipse_phantom, random_ellipse_parameters, random_ellipses
from ddip.data.volumes import CT_WINDOW_HU, PreparedVolume, RawVolume, prepare_volume, read_volume

__all__ = [
    "CT_WINDOW_HU",
    "DEV_VOLUMES",
    "PreparedVolume",
    "RawVolume",
    "dev_volume_path",
    "ellipse_phantom",
    "load_fixture",
    "prepare_volume",
    "random_ellipse_parameters",
    "random_ellipses",
    "read_volume",
]
