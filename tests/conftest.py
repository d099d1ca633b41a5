import pytest
import torch

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
