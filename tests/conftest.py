import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # scripts/run.sh runs two workers on the two cores: one thread each, in the tests and in the processes they start
    # (two torch processes with two spinning threads each slow each other about tenfold)
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(1234)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session converts LPIPS weights into its own cache folder, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "ddip-cache"
    monkeypatch.setenv("DDIP_CACHE", str(cache))


class Subsample:
    """An operator the library does not define: only A and A_adjoint (no normal, no A_dagger, no shapes)."""

    def A(self, x):
        return x[..., ::2, ::2]

    def A_adjoint(self, y):
        out = torch.zeros(*y.shape[:-2], 2 * y.shape[-2], 2 * y.shape[-1], dtype=y.dtype)
        out[..., ::2, ::2] = y
        return out


@pytest.fixture
def foreign_operator():
    """A user's own operator (2x subsampling), for the contracts that any object with A and A_adjoint must pass."""
    return Subsample()


@pytest.fixture(scope="session")
def tiny_prior(tmp_path_factory):
    """A barely trained 64 px prior written by our own training loop (enough to exercise pipelines, not quality)."""
    from ddip.priors.train import TrainConfig, train_prior
    from ddip.priors.unet import UNetConfig

    out = tmp_path_factory.mktemp("prior")
    cfg = TrainConfig(out=str(out), unet=UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 1),
                                                    attention_resolutions=()),
                      batch_size=2, max_images=4, snapshot_every=0)
    train_prior(cfg, progress=False)
    return str(out / "ema.safetensors")


@pytest.fixture(scope="session")
def ct_measurement(tmp_path_factory):
    """A 3-slice, 15-view sparse-view CT measurement file of the bundled chest CT."""
    from ddip.cli import main

    path = tmp_path_factory.mktemp("meas") / "ct.safetensors"
    assert main(["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--n-slices", "3", "--views", "15",
                 "--out", str(path)]) == 0
    return path


@pytest.fixture
def picture_gray_share():
    """The share of a PNG's pixels that are mid-grey (neither near-black nor near-white, R = G = B): what a figure of
    slices shows of them. A figure whose image panels came out black or white has almost none."""
    def share(path) -> float:
        import matplotlib.image

        rgb = matplotlib.image.imread(str(path))[..., :3]
        grey = (rgb.max(-1) - rgb.min(-1)) < 0.02
        level = rgb.mean(-1)
        return float((grey & (level > 0.08) & (level < 0.92)).mean())

    return share
