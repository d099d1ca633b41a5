"""Numerical guards and malformed input: one clear DdipError, never a NaN result or a foreign exception."""

import json
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ddip.adapt.adapter as adapter_module
from ddip.adapt import AdaptConfig, VolumeAdapter, inject_lora, snapshot
from ddip.data.volumes import prepare_volume, read_volume
from ddip.errors import DdipError
from ddip.physics import MultiCoilMRI, SingleCoilMRI, sparse_view_ct
from ddip.priors import DiffusionPrior, UNetConfig, build_unet
from ddip.solvers import DDS, solve
from ddip.tasks import TaskConfig, simulate

TINY = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=())


def test_non_finite_adaptation_loss_rolls_back_and_halves_the_learning_rate(monkeypatch, caplog):
    prior = DiffusionPrior(build_unet(TINY))
    inject_lora(prior.net, generator=torch.Generator().manual_seed(0))
    op = sparse_view_ct(16, 4)
    y = op.A(torch.rand(2, 1, 16, 16))
    real_fit = adapter_module.adaptation_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real_fit(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(adapter_module, "adaptation_loss", flaky)
    adapter = VolumeAdapter(prior, DDS(), y, op, AdaptConfig(n_iters=3, k=2, lr=1e-3, zeta=0))
    before = snapshot(prior.net)
    adapter(0, 500, torch.randn(2, 1, 16, 16), {})
    assert adapter._optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    assert caplog.text.count("rolled back") == 1
    after = snapshot(prior.net)
    assert all(bool(torch.isfinite(v).all()) for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the two good iterations still adapted
    assert len(adapter.losses) == 2


def test_an_estimate_leaving_the_range_undoes_the_step_that_led_there_and_halves_lr_for_the_run(monkeypatch,
                                                                                                 caplog):
    """The range guard: the data-consistent estimate is in range on the first two optimiser steps and leaves it on
    the third, so the second step is undone, this timestep stops, and the next one starts at half the rate."""
    real_fit = adapter_module.adaptation_loss
    calls = {"n": 0}

    def drifting(step, x0, y, physics, extent=None):
        calls["n"] += 1
        loss = real_fit(step, x0, y, physics)
        if extent is not None:  # the adapter asks for the extent only with the guard on
            extent.append((0.0, 0.9) if calls["n"] in (1, 2) else (-0.1, 3.0))  # in range, in range, out
        return loss

    def run(guard: bool):
        calls["n"] = 0
        prior = DiffusionPrior(build_unet(TINY, seed=0))
        inject_lora(prior.net, generator=torch.Generator().manual_seed(0))
        op = sparse_view_ct(16, 4)
        y = op.A(torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1)))
        adapter = VolumeAdapter(prior, DDS(), y, op, AdaptConfig(n_iters=4, k=2, lr=1e-3, zeta=0,
                                                                 range_guard=guard))
        states = []
        real_step = torch.optim.AdamW.step

        def spy(opt, *a, **k):
            states.append(snapshot(prior.net))  # the state each optimiser step starts from
            return real_step(opt, *a, **k)

        monkeypatch.setattr(torch.optim.AdamW, "step", spy)
        x_t = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
        adapter(0, 500, x_t, {})
        after_first = snapshot(prior.net)
        adapter(1, 480, x_t, {})
        monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
        return adapter, states, after_first

    monkeypatch.setattr(adapter_module, "adaptation_loss", drifting)
    adapter, states, after_first = run(guard=True)
    # steps 1 and 2 were taken; the third estimate (after step 2) was out: step 2 is undone
    assert all(torch.equal(after_first[k], states[1][k]) for k in after_first)
    assert [why for _, _, why in adapter.rollbacks] == ["its data-consistent estimate left the prior's range"] * 2
    assert adapter.rollbacks[0][:2] == (0, 500) and adapter._lr_scale == 0.25
    assert adapter._optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)  # halved at 500, again at 480
    assert len(adapter.losses) == 2  # the out-of-range evaluations are not counted as adaptation steps
    assert "left the prior's range" in caplog.text
    # without the guard all four steps of each timestep are taken
    adapter, states, _ = run(guard=False)
    assert len(states) == 8 and not adapter.rollbacks and adapter._lr_scale == 1.0
    # an estimate never in range (an untrained network) does not arm the guard
    monkeypatch.setattr(adapter_module, "adaptation_loss",
                        lambda step, x0, y, physics, extent=None: extent.append((-9.0, 9.0)) or real_fit(
                            step, x0, y, physics))
    adapter, states, _ = run(guard=True)
    assert len(states) == 8 and not adapter.rollbacks


def test_non_finite_sample_aborts_naming_the_step():
    class Broken(torch.nn.Module):
        def forward(self, x, t):
            return torch.where(t.view(-1, 1, 1, 1) < 500, torch.full_like(x, float("nan")), torch.zeros_like(x))

    op = sparse_view_ct(16, 4)
    with pytest.raises(DdipError, match=r"NaN or Inf at step \d+ \(t = 4\d0\)"):
        solve(DDS(), DiffusionPrior(Broken()), op.A(torch.rand(1, 1, 16, 16)), op, n_steps=50)


def test_nan_in_a_volume_or_measurement_is_rejected():
    vol = torch.rand(2, 1, 16, 16)
    vol[0, 0, 3, 3] = float("nan")
    with pytest.raises(DdipError, match="volume contains 1 NaN"):
        simulate(vol, TaskConfig(task="sv-ct", size=16))


def test_mask_and_coil_maps_of_the_wrong_shape_are_rejected():
    with pytest.raises(DdipError, match="mask must be 2D"):
        SingleCoilMRI(torch.ones(2, 16, 16))
    with pytest.raises(DdipError, match="samples no k-space"):
        SingleCoilMRI(torch.zeros(16, 16))
    with pytest.raises(DdipError, match="coil maps have shape"):
        MultiCoilMRI(torch.ones(16, 16), torch.ones(4, 16, 8, dtype=torch.complex64))
    nan_maps = torch.ones(4, 16, 16, dtype=torch.complex64)
    nan_maps[0, 0, 0] = float("nan")
    with pytest.raises(DdipError, match="NaN or Inf"):
        MultiCoilMRI(torch.ones(16, 16), nan_maps)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=arrays(dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.complex64, np.bool_]),
                  shape=st.lists(st.integers(0, 5), min_size=0, max_size=5).map(tuple),
                  elements=None))
def test_readers_raise_only_ddip_errors_on_arbitrary_arrays(arr, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "v.npy"
    np.save(path, arr)
    try:
        raw = read_volume(path)
        prepare_volume(raw, modality="mri", size=8)
    except DdipError:
        pass


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(arr=arrays(dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8]),
                  shape=st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 6)),
                  elements=st.integers(1, 100)),
       modality=st.sampled_from(["ct", "mri"]))
def test_readers_accept_every_valid_array(arr, modality, tmp_path_factory):
    """The other half of the fuzz test above: a finite, real, non-empty 3D array with a positive voxel is a volume."""
    path = tmp_path_factory.mktemp("valid") / "v.npy"
    np.save(path, arr)
    prepared = prepare_volume(read_volume(path), modality=modality, size=8)
    x = prepared.slices
    assert x.ndim == 4 and x.shape[1:] == (1, 8, 8) and x.shape[0] >= 1
    assert bool(torch.isfinite(x).all()) and float(x.min()) >= 0 and float(x.max()) <= 1


OPERATORS = {"ct": lambda: sparse_view_ct(8, 3), "mri": lambda: SingleCoilMRI(torch.ones(8, 8)),
             "mc": lambda: MultiCoilMRI(torch.ones(8, 8), torch.ones(2, 8, 8, dtype=torch.complex64))}


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(0, 20), min_size=0, max_size=5).map(tuple),
       complex_=st.booleans(), which=st.sampled_from(sorted(OPERATORS)))
def test_operators_raise_only_ddip_errors_on_malformed_tensors(shape, complex_, which):
    op = OPERATORS[which]()
    t = torch.zeros(shape, dtype=torch.complex64 if complex_ else torch.float32)
    for fn in (op.A, op.A_adjoint):
        try:
            fn(t)
        except DdipError:
            pass


@settings(max_examples=20, deadline=None)
@given(depth=st.integers(1, 4), which=st.sampled_from(sorted(OPERATORS)))
def test_operators_accept_every_well_formed_tensor(depth, which):
    """The other half: a batch of the operator's own image and measurement shapes and dtypes always goes through."""
    op = OPERATORS[which]()
    x = torch.rand(depth, *op.img_shape, dtype=torch.complex64 if op.img_complex else torch.float32)
    y = torch.rand(depth, *op.meas_shape, dtype=torch.complex64 if op.meas_complex else torch.float32)
    assert op.A(x).shape == (depth, *op.meas_shape)
    assert op.A_adjoint(y).shape == (depth, *op.img_shape)


# -- bad input on the command line: one `ddip: error:` line each, and the valid neighbour goes through ------------
def _cli(args, capsys):
    from ddip.cli import main

    code = main(args)
    err = capsys.readouterr().err
    return code, err


def test_measurement_files_with_a_bad_y_are_refused(ct_measurement, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ddip.tasks import load_measurement

    with safe_open(str(ct_measurement), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(ct_measurement))
    for name, y, message in [("f16", tensors["y"].half(), "has dtype torch.float16"),
                             ("empty", tensors["y"][:0], "holds no slices")]:
        path = tmp_path / f"{name}.safetensors"
        save_file({**tensors, "y": y.contiguous(), "ground_truth": tensors["ground_truth"][: y.shape[0]].contiguous()},
                  str(path), metadata=meta)
        with pytest.raises(DdipError, match=message):
            load_measurement(path)
    assert load_measurement(ct_measurement).y.shape[0] == 3  # the file they were made from is fine


@pytest.mark.parametrize("args,message", [
    (["--seed", str(2**63)], "seed must be an integer in [0, 2**62)"),
    (["--lr", "nan"], "lr must be a positive finite number"),
    (["--k", "0"], "k and n_iters must be >= 1"),
    (["--lora-rank", "0"], "lora_rank must be a positive integer"),
    (["--loss-cg-iters", "0"], "loss_cg_iters must be a positive integer"),
])
def test_reconstruct_settings_out_of_range_are_one_error(args, message, ct_measurement, tiny_prior, tmp_path,
                                                          capsys):
    common = ["reconstruct", str(ct_measurement), "--method", "d3ip", "--prior", tiny_prior, "--steps", "1",
              "--iters", "1", "--quiet"]
    code, err = _cli([*common, *args, "--out", str(tmp_path / "bad")], capsys)
    assert code == 2 and err.startswith("ddip: error:") and message in err and err.count("\n") == 1
    good = {"--seed": "7", "--lr": "1e-3", "--k": "1", "--lora-rank": "2", "--loss-cg-iters": "1"}[args[0]]
    assert _cli([*common, args[0], good, "--out", str(tmp_path / "good")], capsys)[0] == 0


def test_simulate_refuses_a_folder_a_dangling_link_and_acceleration_below_one(tmp_path, capsys):
    common = ["simulate", "--volume", "fixture:chest-ct", "--n-slices", "1", "--size", "64"]
    (tmp_path / "folder").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere" / "m.safetensors")
    for out, extra, message in [(tmp_path / "folder", ["--task", "sv-ct"], "is a folder"),
                                (tmp_path / "dangling", ["--task", "sv-ct"], "which does not exist"),
                                (tmp_path / "m.safetensors", ["--task", "csmri", "--acceleration", "0"],
                                 "acceleration must be >= 1")]:
        code, err = _cli([*common, *extra, "--out", str(out)], capsys)
        assert code == 2 and message in err and err.count("\n") == 1, err
    assert _cli([*common, "--task", "mri3d", "--acceleration", "4", "--out", str(tmp_path / "m.safetensors")],
                capsys)[0] == 0


def test_probes_of_import_train_prior_prior_gate_and_convert_prior_end_in_one_line(tmp_path, capsys, caplog):
    np.save(tmp_path / "sino.npy", np.random.default_rng(0).random((2, 15, 64), dtype=np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((0, 15, 64), np.float32))
    (tmp_path / "bad.pt").write_bytes(b"\x80\x04garbage")
    (tmp_path / "no-volumes").mkdir()
    small = ["--size", "16", "--channels", "32", "--mult", "1,1", "--attn", "", "--max-images", "2", "--batch", "2"]
    imp = ["import", str(tmp_path / "sino.npy"), "--size", "64"]
    probes = [
        (imp[:2] + ["--size", "64", "--out", str(tmp_path / "e.safetensors")], "an empty sinogram"),
        ([*imp, "--angles", "30:30", "--out", str(tmp_path / "a.safetensors")], "has the angle 30 degrees"),
        ([*imp, "--angles", "nan:180", "--out", str(tmp_path / "n.safetensors")], "angles contains 15 NaN"),
        (["convert-prior", str(tmp_path / "bad.pt"), "--adm-config", "ellipses-256", "--out", str(tmp_path / "p.safetensors")],
         "cannot be loaded as a weights-only checkpoint (UnpicklingError"),
        (["prior-gate", str(tmp_path)], "not a train-prior run folder"),
        (["train-prior", "--out", str(tmp_path / "t1"), *small, "--res-blocks", "0"], "num_res_blocks must be"),
        (["train-prior", "--out", str(tmp_path / "t2"), *small, "--head-channels", "0"], "num_head_channels must"),
        (["train-prior", "--out", str(tmp_path / "t3"), *small, "--mult", ""], "one positive multiplier per level"),
        (["train-prior", "--out", str(tmp_path / "t4"), *small, "--attn", "7"], "must be feature-map sizes"),
        (["train-prior", "--out", str(tmp_path / "t5"), *small, "--max-hours", "-1"], "need max_hours > 0"),
        (["train-prior", "--out", str(tmp_path / "t6"), *small, "--threads", "-1"], "--threads must be >= 0"),
        (["train-prior", "--out", str(tmp_path / "t7"), *small, "--data", str(tmp_path / "no-volumes"),
          "--modality", "ct"], "holds no volume"),
    ]
    probes[0][0][1] = str(tmp_path / "empty.npy")
    for args, message in probes:
        code, err = _cli(args, capsys)
        assert code == 2 and err.startswith("ddip: error:") and message in err and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "t7" / "checkpoint.pt").exists()  # the data folder is checked before anything trains
    # a detector narrower than the grid is an interior problem: imported, with a warning that says so
    code, _ = _cli([*imp[:2], "--size", "128", "--out", str(tmp_path / "wide.safetensors")], capsys)
    assert code == 0 and "the detector spans 64 px of the 128 px grid" in caplog.text
    caplog.clear()
    assert _cli([*imp, "--out", str(tmp_path / "fine.safetensors")], capsys)[0] == 0 and "detector" not in caplog.text


def test_reconstruct_refuses_an_output_through_a_dangling_link(ct_measurement, tiny_prior, tmp_path, capsys):
    (tmp_path / "out").symlink_to(tmp_path / "missing")
    code, err = _cli(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--out", str(tmp_path / "out")],
                     capsys)
    assert code == 2 and "which does not exist" in err


@pytest.mark.parametrize("unet,message", [
    ("{not json", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
    ('{"image_size": 16, "colour": 3}', "unknown network setting(s) ['colour']"),
    ('{"image_size": "16"}', "image_size must be a positive integer, got '16'"),
    ('{"image_size": 16, "channel_mult": [1, 1.5]}', "channel_mult must be a list of integers"),
    ('{"image_size": 16, "position_channels": 1}', "position_channels must be true or false"),
    ('{"image_size": 16, "model_channels": 64, "channel_mult": [1, 1], "attention_resolutions": []}',
     "have the wrong shape"),
])
def test_a_prior_with_malformed_network_metadata_is_one_clear_error(unet, message, tmp_path):
    from safetensors.torch import save_file

    from ddip.priors import load_prior

    tiny = UNetConfig(image_size=16, model_channels=32, channel_mult=(1, 1), attention_resolutions=())
    weights = {k: v.contiguous() for k, v in build_unet(tiny).state_dict().items()}
    good = tmp_path / "good.safetensors"
    save_file(weights, str(good), metadata={"unet": json.dumps(tiny.to_dict())})
    assert load_prior(good).net.config.sample_size == 16
    bad = tmp_path / "bad.safetensors"
    save_file(weights, str(bad), metadata={"unet": unet})
    with pytest.raises(DdipError, match=re.escape(message)):
        load_prior(bad)


# -- fuzzing the config reader and the measurement loader ------------------------------------------------------------
JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True),
                        st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3))
RECONSTRUCT_KEYS = ["max_batch", "seed", "steps", "k", "iters", "lr", "zeta", "init", "noise_mix", "dc_variant",
                    "precision", "quiet", "resize", "device", "checkpoint_every", "method", "bogus"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(config=st.dictionaries(st.sampled_from(RECONSTRUCT_KEYS), JSON_VALUES, max_size=5))
def test_a_config_file_of_any_values_gives_a_valid_config_or_one_ddip_error(config, tmp_path_factory):
    from ddip.cli import build_parser, config_arguments, reconstruct_config

    path = tmp_path_factory.mktemp("cfg") / "c.json"
    path.write_text(json.dumps(config))
    parser = build_parser()
    try:
        tokens = config_arguments(parser.subcommands["reconstruct"], str(path))
        args = parser.parse_args(["reconstruct", "m.safetensors", "--method", "dds", "--out", "o", *tokens])
        cfg = reconstruct_config(args)
    except DdipError:
        return
    assert cfg.max_batch >= 1 and 0 <= cfg.seed < 2**62  # what it accepted is a usable configuration


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True),
       edit=st.dictionaries(st.sampled_from(["task", "size", "views", "acceleration", "noise", "seed", "n_coils",
                                             "center_fraction", "extra"]), JSON_VALUES, max_size=3))
def test_corrupted_or_edited_measurement_files_raise_only_ddip_errors(cut, edit, ct_measurement, tmp_path_factory):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from ddip.tasks import load_measurement

    folder = tmp_path_factory.mktemp("meas")
    data = ct_measurement.read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: int(cut * len(data))])
    with safe_open(str(ct_measurement), framework="pt") as fh:
        meta = dict(fh.metadata())
    meta["config"] = json.dumps({**json.loads(meta["config"]), **edit})
    save_file(load_file(str(ct_measurement)), str(folder / "edited.safetensors"), metadata=meta)
    for name in ("cut", "edited"):
        try:
            m = load_measurement(folder / f"{name}.safetensors")
        except DdipError:
            continue
        assert name == "edited" and m.y.shape[0] == 3  # an edit that keeps the file valid still loads


def test_data_at_scanner_magnitudes_are_normalised_with_a_warning_and_scaled_back(caplog):
    """Multi-coil k-space at fastMRI-like magnitudes (x3e-5 of ours) gave a black image before; now the data are
    rescaled to the prior's range for the reconstruction, the result multiplied back, and a warning says so."""
    import dataclasses

    from ddip.data import load_fixture
    from ddip.metrics import psnr
    from ddip.reconstruct import ReconstructConfig, intensity_scale, reconstruct

    m = simulate(load_fixture("mni-t1").slices[14:16], TaskConfig(task="csmri", size=64))
    assert 0.1 <= intensity_scale(m.y, m.physics) <= 10  # simulated data are left alone
    c = 3e-5
    scanner = dataclasses.replace(m, y=m.y * c, ground_truth=m.ground_truth * c)
    cfg = ReconstructConfig(method="admm-tv")
    ours = reconstruct(m, cfg)
    assert ours.report["normalised_by"] == 1.0
    with caplog.at_level("WARNING", logger="ddip.reconstruct"):
        auto = reconstruct(scanner, cfg)
    assert "times the prior's range" in caplog.text and auto.report["normalised_by"] == pytest.approx(
        c * ours.report["intensity_scale"], rel=1e-4)
    off = reconstruct(scanner, dataclasses.replace(cfg, normalise="off"))
    quality = lambda r: float(psnr(r.volume.abs(), scanner.ground_truth.abs()).mean())  # noqa: E731
    reference = float(psnr(ours.volume.abs(), m.ground_truth.abs()).mean())
    # measured: 21.39 dB at our scale, 21.22 normalised, 16.09 left at the scanner's scale (ADMM-TV, 2 slices)
    assert abs(quality(auto) - reference) < 1.0 and quality(off) < reference - 3
