import pytest
import torch

from ddip.errors import DdipError
from ddip.evaluation import GATE_SEED, VALIDATION_SEED, least_squares_psnr, quality_gate, sample_grid
from ddip.priors import load_prior


def test_load_prior_from_a_training_run(tiny_prior):
    prior = load_prior(tiny_prior)
    assert prior.net.config.sample_size == 64 and not prior.net.training
    x = torch.rand(2, 1, 64, 64)
    assert prior.tweedie(x, 500).shape == x.shape


def test_load_prior_errors_name_the_problem(tmp_path, tiny_prior):
    with pytest.raises(DdipError, match="not a shipped prior"):
        load_prior(tmp_path / "nothing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(DdipError, match="not a readable safetensors prior file"):
        load_prior(bad)
    pt = tmp_path / "adm.pt"
    pt.write_bytes(b"x")
    with pytest.raises(DdipError, match="ddip convert-prior"):
        load_prior(pt)
    from safetensors.torch import load_file, save_file

    state = load_file(tiny_prior)
    state.pop(next(iter(state)))
    cut = tmp_path / "cut.safetensors"
    import json

    save_file(state, str(cut), metadata={"unet": json.dumps({"image_size": 64, "model_channels": 32,
                                                            "channel_mult": [1, 1], "attention_resolutions": []})})
    with pytest.raises(DdipError, match="missing"):
        load_prior(cut)


def test_gate_reports_dds_against_the_best_least_squares(tiny_prior, tmp_path):
    report = quality_gate(load_prior(tiny_prior), n_images=1, n_steps=2, eta=0.5, paper_settings=False)
    assert report["least_squares_psnr"] == max(report["least_squares_by_iters"].values())
    assert report["sampler"] == {"method": "dds", "n_steps": 2, "eta": 0.5} and "dds_paper_psnr" not in report
    assert report["passed"] == (report["margin_db"] >= 3.0) and report["n_views"] == 15
    samples = sample_grid(load_prior(tiny_prior), tmp_path / "grid.png", n=2, n_steps=2)
    assert samples.shape == (2, 1, 64, 64) and (tmp_path / "grid.png").stat().st_size > 0


def test_least_squares_improves_then_reports_each_iteration_count():
    from ddip.data import random_ellipses
    from ddip.physics import sparse_view_ct

    g = torch.Generator().manual_seed(0)
    x = random_ellipses(2, 32, generator=g)
    op = sparse_view_ct(32, 15)
    out = least_squares_psnr(op, op.A(x), x, iters=(2, 20))
    assert set(out) == {2, 20} and out[20] > out[2]


def test_gate_curve_evaluates_each_snapshot_once(tmp_path):
    from ddip.evaluation import gate_curve
    from ddip.priors.train import TrainConfig, train_prior
    from ddip.priors.unet import UNetConfig

    cfg = TrainConfig(out=str(tmp_path), unet=UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 1),
                                                          attention_resolutions=()),
                      batch_size=2, max_images=4, snapshot_every=2, ema_lengths=(0.05,))
    train_prior(cfg, progress=False)
    rows = gate_curve(tmp_path, n_images=1)
    assert [r["images"] for r in rows] == [2, 4] and (tmp_path / "gate_curve.png").is_file()
    assert gate_curve(tmp_path, n_images=1) == rows  # nothing re-evaluated
    # a power-function EMA's snapshots get their own curve, to choose the EMA length after training (its first
    # step replaces it by the weights, where the main EMA's warm-up keeps a share of the initial ones)
    extra = gate_curve(tmp_path, n_images=1, ema_length=0.05)
    assert [r["images"] for r in extra] == [2, 4] and (tmp_path / "gate_curve-len0.05.png").is_file()
    assert [r["dds_psnr"] for r in extra] != [r["dds_psnr"] for r in rows]
    with pytest.raises(DdipError, match="no EMA of relative length 0.25"):
        gate_curve(tmp_path, n_images=1, ema_length=0.25)
    # on the validation phantoms: a curve of its own, other phantoms than the gate's, the gate's rows untouched
    held_out = (tmp_path / "gate_curve.jsonl").read_text()
    validation = gate_curve(tmp_path, n_images=1, seed=VALIDATION_SEED)
    assert [r["seed"] for r in validation] == [VALIDATION_SEED] * 2 and [r["seed"] for r in rows] == [GATE_SEED] * 2
    assert (tmp_path / f"gate_curve-seed{VALIDATION_SEED}.jsonl").is_file()
    assert [r["least_squares_psnr"] for r in validation] != [r["least_squares_psnr"] for r in rows]
    assert (tmp_path / "gate_curve.jsonl").read_text() == held_out


def test_the_gate_evaluates_a_runs_last_weights_without_snapshots_and_prints_its_pass_mark(tmp_path, capsys):
    from ddip.cli import main
    from ddip.priors.train import TrainConfig, train_prior
    from ddip.priors.unet import UNetConfig

    cfg = TrainConfig(out=str(tmp_path), unet=UNetConfig(image_size=64, model_channels=32, channel_mult=(1, 1),
                                                          attention_resolutions=()),
                      batch_size=2, max_images=4, snapshot_every=0)
    train_prior(cfg, progress=False)
    assert main(["prior-gate", str(tmp_path), "--n-images", "1"]) == 0
    out = capsys.readouterr().out
    assert "4 images: DDS" in out and "(pass mark +3)" in out


def test_a_complex_prior_is_gated_on_cs_mri(tmp_path):
    from ddip.priors.train import TrainConfig, train_prior
    from ddip.priors.unet import UNetConfig

    cfg = TrainConfig(out=str(tmp_path), unet=UNetConfig(image_size=64, in_channels=2, out_channels=2,
                                                          channel_mult=(1, 1), attention_resolutions=()),
                      data="ellipses-complex", batch_size=2, max_images=2, snapshot_every=0)
    train_prior(cfg, progress=False)
    report = quality_gate(load_prior(tmp_path / "ema.safetensors"), n_images=2, n_steps=2, paper_settings=False)
    assert report["task"] == "csmri" and report["size"] == 64
    assert report["least_squares_psnr"] == max(report["least_squares_by_iters"].values()) > 10


def test_the_gate_runs_where_the_prior_lives_and_gives_the_same_report(tiny_prior, monkeypatch):
    """The phantoms follow the prior's device (on a GPU they used to stay on the CPU and the network refused them).
    Here the 'other device' is a copy of the prior on the CPU; every network input is checked to be on the
    parameters' device."""
    import copy

    prior = load_prior(tiny_prior)
    moved = copy.deepcopy(prior).to("cpu")
    seen = []
    forward = moved.net.forward

    def spy(x, t, *args, **kwargs):
        seen.append(x.device == next(moved.net.parameters()).device)
        return forward(x, t, *args, **kwargs)

    monkeypatch.setattr(moved.net, "forward", spy)
    kwargs = dict(n_images=1, n_steps=2, paper_settings=False)
    assert quality_gate(moved, **kwargs) == quality_gate(prior, **kwargs)
    assert seen and all(seen)
