"""Training a prior on a folder of the user's own volumes (ddip.data.slices, train-prior --data FOLDER)."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ddip.cli import main
from ddip.data import prepare_volume, read_volume
from ddip.data.slices import VolumeSlices
from ddip.errors import DdipError
from ddip.priors.train import TrainConfig, train_prior
from ddip.priors.unet import UNetConfig

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=(8,))


def _volume(path, seed: int, depth: int = 5, blank: int = 0):
    """A CT-like volume in HU: a bright disc of random radius per slice, ``blank`` air-only slices on top."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:24, :24]
    data = np.full((24, 24, depth + blank), -1000.0, dtype=np.float32)
    for z in range(depth):
        data[..., z][(yy - 12) ** 2 + (xx - 12) ** 2 < rng.uniform(20, 90)] = rng.uniform(0, 400)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "volumes"
    root.mkdir()
    _volume(root / "a.nii.gz", 0, blank=2)
    _volume(root / "b.nii", 1, depth=3)
    (root / "notes.txt").write_text("not a volume")
    return root


def test_the_slices_are_the_volumes_prepared_as_for_reconstruction_without_blank_ones(folder):
    bank = VolumeSlices(folder, modality="ct", size=16)
    assert bank.describe() == {"slices": 8, "per_volume": {"a.nii.gz": 5, "b.nii": 3}}
    expected = torch.cat([prepare_volume(read_volume(folder / "a.nii.gz"), modality="ct", size=16).slices[:5],
                          prepare_volume(read_volume(folder / "b.nii"), modality="ct", size=16).slices])
    assert torch.equal(bank.slices, expected)
    batch = bank.sample(32, generator=torch.Generator().manual_seed(0))
    assert batch.shape == (32, 1, 16, 16)
    nearest = [int((bank.slices - image).flatten(1).abs().sum(1).argmin()) for image in batch]
    assert all(torch.equal(image, bank.slices[j]) for image, j in zip(batch, nearest))  # every image is a slice
    assert len(set(nearest)) > 4  # uniform over 8 slices: 32 draws reach most of them


def test_training_on_volumes_logs_resumes_exactly_and_refuses_changed_data(folder, tmp_path):
    common = dict(unet=TINY, batch_size=4, max_images=4 * 6, snapshot_every=0, log_every=2, data="volumes",
                  volumes=str(folder), modality="ct")
    train_prior(TrainConfig(out=str(tmp_path / "straight"), **common), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "max_images": 4 * 2}), progress=False)
    train_prior(TrainConfig(out=str(tmp_path / "resumed"), **common), progress=False)
    a = load_file(str(tmp_path / "straight" / "ema.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "resumed" / "data.json").read_text())["slices"] == 8
    _volume(folder / "c.nii.gz", 2)
    with pytest.raises(DdipError, match="other slices than the run was started on"):
        train_prior(TrainConfig(out=str(tmp_path / "resumed"), **{**common, "max_images": 4 * 8}), progress=False)


def test_the_command_line_trains_on_a_folder_and_names_what_is_missing(folder, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train-prior", "--data", str(folder), "--modality", "mri", "--out", str(out), "--size", "16",
                 "--channels", "32", "--mult", "1,1", "--attn", "8", "--batch", "2", "--max-images", "4"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["data"], saved["volumes"], saved["modality"]) == ("volumes", str(folder), "mri")
    assert (out / "ema.safetensors").exists()
    assert main(["train-prior", "--data", str(folder), "--out", str(tmp_path / "r2")]) == 2
    assert "needs --modality ct or mri" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train-prior", "--data", str(empty), "--modality", "ct", "--out", str(tmp_path / "r3")]) == 2
    assert "holds no volume" in capsys.readouterr().err
    assert main(["train-prior", "--data", str(tmp_path / "nowhere"), "--modality", "ct", "--out",
                 str(tmp_path / "r4")]) == 2
    assert "not a folder of volumes" in capsys.readouterr().err
