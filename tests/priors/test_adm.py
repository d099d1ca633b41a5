"""ADM (guided-diffusion) checkpoints load into our UNet2DModel and reproduce the original network."""

import json
from pathlib import Path

import pytest
import torch

from ddip.cli import main
from ddip.errors import DdipError
from ddip.priors import load_prior
from ddip.priors.adm import (
    ADM_PRESETS,
    adm_config,
    adm_parameters,
    convert_adm_state_dict,
    load_adm_checkpoint,
    unet_config_from_adm,
)
from ddip.priors.unet import UNetConfig, build_unet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "adm"
CONFIG_256 = ADM_PRESETS["ellipses-256"]


def _tsv(name):
    rows = [line.split("\t") for line in (FIXTURES / name).read_text().splitlines()[1:]]
    return [(r[1], tuple(int(s) for s in r[2].split("x"))) for r in rows]


@pytest.fixture(scope="module")
def small_config():
    return json.loads((FIXTURES / "adm_small_config.json").read_text())


@pytest.fixture(scope="module")
def positional_ema(tmp_path_factory):
    """The score_sde EMA file of the same weights: the state_dict's tensors in guided-diffusion's parameter order
    (``adm_small_parameters.tsv``). Rebuilt here rather than shipped twice: the original fixture held exactly these
    tensors in this order (checked when the fixtures were copied into the repository)."""
    state = torch.load(FIXTURES / "adm_small_state_dict.pt", map_location="cpu", weights_only=True)
    path = tmp_path_factory.mktemp("adm") / "adm_small_ema_positional.pt"
    torch.save({"decay": 0.999, "num_updates": 1234,
                "shadow_params": [state[name] for name, _ in _tsv("adm_small_parameters.tsv")]}, path)
    return path


def test_parameter_order_matches_guided_diffusion(small_config):
    assert adm_parameters(small_config) == _tsv("adm_small_parameters.tsv")
    assert adm_parameters(CONFIG_256) == _tsv("adm_ellipses256_parameters.tsv")


@pytest.mark.parametrize("layout", ["state_dict", "positional_ema"])
def test_converted_network_reproduces_guided_diffusion(small_config, positional_ema, layout):
    io = torch.load(FIXTURES / "adm_small_io.pt", map_location="cpu", weights_only=True)
    path = FIXTURES / "adm_small_state_dict.pt" if layout == "state_dict" else positional_ema
    prior = load_adm_checkpoint(path, small_config)
    with torch.no_grad():
        eps = prior.eps(io["x"], io["t"].long())
    assert (eps - io["eps"]).abs().max() < 1e-5


def test_paper_ellipses_network_matches_name_for_name_after_conversion():
    adm = {name: torch.empty(shape, device="meta") for name, shape in _tsv("adm_ellipses256_parameters.tsv")}
    assert sum(t.numel() for t in adm.values()) == 374_020_353
    converted = convert_adm_state_dict(adm, CONFIG_256)
    with torch.device("meta"):
        net = build_unet(unet_config_from_adm(CONFIG_256))
    ours = net.state_dict()
    assert set(converted) == set(ours)
    assert all(converted[k].shape == ours[k].shape for k in ours)
    assert sum(p.numel() for p in net.parameters()) == 374_020_353


def test_truncated_file_is_reported(small_config, tmp_path):
    data = (FIXTURES / "adm_small_state_dict.pt").read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DdipError, match="truncated.pt: cannot be loaded"):
        load_adm_checkpoint(bad, small_config)


def test_mismatched_tensors_are_named(small_config, positional_ema, tmp_path):
    state = torch.load(FIXTURES / "adm_small_state_dict.pt", map_location="cpu", weights_only=True)
    del state["middle_block.1.qkv.weight"]
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "mismatch.pt"
    torch.save(state, path)
    with pytest.raises(DdipError, match=r"missing tensors \['middle_block.1.qkv.weight'\].*unexpected tensors "
                                        r"\['extra.weight'\]"):
        load_adm_checkpoint(path, small_config)
    ema = torch.load(positional_ema, map_location="cpu", weights_only=True)
    ema["shadow_params"] = ema["shadow_params"][:-3]
    torch.save(ema, path)
    with pytest.raises(DdipError, match="holds 141 tensors.*has 144"):
        load_adm_checkpoint(path, small_config)


def test_pickled_code_is_refused_without_running(small_config, tmp_path):
    import os
    import pickle

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"shadow_params": Exploit()}, fh)
    with pytest.raises(DdipError, match="cannot be loaded as a weights-only checkpoint"):
        load_adm_checkpoint(path, small_config)
    assert not (tmp_path / "pwned").exists()


def test_convert_prior_command_reproduces_guided_diffusion(tmp_path):
    """``ddip convert-prior`` writes a prior file that ``--prior`` loads and that reproduces the original network."""
    out = tmp_path / "adm.safetensors"
    config = FIXTURES / "adm_small_config.json"
    assert main(["convert-prior", str(FIXTURES / "adm_small_state_dict.pt"), "--adm-config", str(config),
                 "--out", str(out)]) == 0
    io = torch.load(FIXTURES / "adm_small_io.pt", map_location="cpu", weights_only=True)
    prior = load_prior(out)
    with torch.no_grad():
        eps = prior.eps(io["x"], io["t"].long())
    assert (eps - io["eps"]).abs().max() < 1e-5
    assert main(["convert-prior", str(FIXTURES / "adm_small_state_dict.pt"), "--adm-config", str(config),
                 "--out", str(out)]) == 2  # an existing file is kept without --overwrite


def test_adm_presets_and_their_errors(tmp_path, capsys):
    assert adm_config("ellipses-256") == CONFIG_256 and adm_config("ellipses-256") is not CONFIG_256
    assert unet_config_from_adm(ADM_PRESETS["fastmri-brain-320"]).in_channels == 2
    # ADM attends where 2**level == image_size // r: 16 px at 256 (rate 16), nowhere at 320 (rate 20 is no level's)
    assert unet_config_from_adm(ADM_PRESETS["ellipses-256"]).attention_resolutions == (16,)
    assert unet_config_from_adm(ADM_PRESETS["fastmri-brain-320"]).attention_resolutions == ()
    # the small checkpoint under the paper's preset: one line naming the mismatch, nothing written
    out = tmp_path / "p.safetensors"
    assert main(["convert-prior", str(FIXTURES / "adm_small_state_dict.pt"), "--adm-config", "ellipses-256",
                 "--out", str(out)]) == 2
    assert "does not match the config" in capsys.readouterr().err and not out.exists()
    with pytest.raises(DdipError, match="neither a preset"):
        adm_config("ellipses-512")
    bad = tmp_path / "bad.json"
    bad.write_text('{"image_size": 64}')
    with pytest.raises(DdipError, match="lacks"):
        adm_config(bad)


def test_a_diffusers_folder_is_a_prior(tmp_path):
    net = build_unet(UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 2), attention_resolutions=(8,)),
                     seed=5).eval()
    net.save_pretrained(tmp_path / "unet")
    prior = load_prior(tmp_path / "unet")
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(prior.eps(x, 400), net(x, torch.full((2,), 400)).sample)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(DdipError, match="AutoencoderKL"):
        load_prior(tmp_path / "other")
    with pytest.raises(DdipError, match="convert-prior"):
        load_prior(FIXTURES / "adm_small_state_dict.pt")
