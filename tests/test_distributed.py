"""Prior training under torchrun (2 gloo processes on the CPU): DistributedDataParallel, one stream per rank."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddip.errors import DdipError
from ddip.priors.prior import DiffusionPrior
from ddip.priors.train import TrainConfig, train_prior
from ddip.priors.unet import UNetConfig, build_unet

UNET = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=())


def _torchrun(out: Path, max_images: int) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).with_name("torchrun")
    # --standalone: a free rendezvous port each time (a fixed port can still be held by the previous run)
    cmd = [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "ddip", "train-prior", "--out", str(out),
           "--size", "16", "--channels", "32", "--mult", "1,1", "--attn", "", "--batch", "2",
           "--max-images", str(max_images), "--snapshot-every", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun not installed")
def test_two_process_training_averages_the_gradients_of_both_phantom_streams(tmp_path):
    out = tmp_path / "ddp"
    run = _torchrun(out, max_images=4)  # one step: 2 images on each rank
    assert run.returncode == 0, run.stderr[-2000:]
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["world_size"] == 2 and state["images"] == 4 and state["step"] == 1
    assert len(state["data_rng"]) == 2

    # The same step by hand in one process: rank r draws from seeds (r, 1_000_003 + r); gradients are averaged.
    from ddip.data.phantoms import random_ellipses

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank (OMP_NUM_THREADS=1), so the reductions run in the same order

    net = build_unet(UNET, seed=0)
    prior = DiffusionPrior(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=0.0)
    for rank in (0, 1):
        x0 = random_ellipses(2, 16, generator=torch.Generator().manual_seed(rank))
        loss = prior.loss(x0, generator=torch.Generator().manual_seed(1_000_003 + rank)).mean() / 2
        loss.backward()
    opt.step()
    torch.set_num_threads(threads)
    for k, v in net.state_dict().items():
        assert torch.allclose(state["model"][k], v, atol=1e-6), k

    # resuming needs the same number of processes (each rank's stream is in the checkpoint)
    with pytest.raises(DdipError, match="trained by 2 process"):
        train_prior(TrainConfig(out=str(out), unet=UNET, batch_size=2, max_images=8, snapshot_every=0),
                    progress=False)
    run = _torchrun(out, max_images=8)
    assert run.returncode == 0, run.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["images"] == 8
