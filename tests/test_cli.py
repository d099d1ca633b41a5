"""The command line end to end: simulate -> reconstruct -> report, the demo, and its error messages."""

import json
import math

import nibabel as nib
import numpy as np
import pytest

from ddip.cli import main
from ddip.methods import method_spec
from ddip.solvers import DDS

METRIC_KEYS = {"psnr", "ssim", "lpips", "psnr_volume", "wall_time_s", "peak_memory_mb", "method", "per_slice"}




@pytest.mark.parametrize("method", ["admm-tv", "dds", "d3ip"])
def test_reconstruct_writes_volume_views_config_and_metrics(method, ct_measurement, tiny_prior, tmp_path):
    out = tmp_path / method
    args = ["reconstruct", str(ct_measurement), "--method", method, "--prior", tiny_prior, "--out", str(out), "--quiet"]
    extra = {"admm-tv": [], "dds": ["--steps", "4"], "d3ip": ["--steps", "4", "--iters", "1", "--k", "2", "--zeta", "0"]}[method]
    assert main(args + extra) == 0
    assert {"reconstruction.nii.gz", "views.png", "config.json", "metrics.json"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics) and metrics["method"] == method
    assert len(metrics["per_slice"]["psnr"]) == 3 and math.isfinite(metrics["psnr"])
    if method == "admm-tv":  # the tiny prior is untrained: only the prior-free method has a quality to check
        assert metrics["psnr"] > 25
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["task"]["views"] == 15
    if method == "d3ip":
        assert metrics["report"]["network_adapt_passes"] > 0


def test_simulate_every_task_from_a_real_volume(tmp_path):
    for task in ("sv-ct", "mri3d", "csmri"):
        volume = "fixture:chest-ct" if task == "sv-ct" else "fixture:mni-t1"
        out = tmp_path / f"{task}.safetensors"
        assert main(["simulate", "--task", task, "--volume", volume, "--n-slices", "2", "--out", str(out)]) == 0
        from ddip.tasks import load_measurement

        m = load_measurement(out)
        assert m.y.shape[0] == 2 and m.ground_truth.shape[0] == 2
        assert (m.y.is_complex()) == (task != "sv-ct")


def test_demo_compares_dds_and_d3ip(tiny_prior, tmp_path, capsys):
    out = tmp_path / "demo"  # the demo's settings, shortened: 4 network steps, 1 optimiser step on 2 slices
    assert main(["demo", "--out", str(out), "--prior", tiny_prior, "--n-slices", "2", "--steps", "4", "--k", "2",
                 "--iters", "1", "--samples", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["views"] == 15 and summary["slices"] == 2
    assert summary["psnr_gain_db"] == pytest.approx(summary["psnr_d3ip"] - summary["psnr_dds"])
    assert (out / "comparison.png").is_file() and (out / "d3ip" / "metrics.json").is_file()
    assert summary["psnr_admm_tv"] > 0 and (out / "admm-tv" / "metrics.json").is_file()  # the baseline beside them
    printed = capsys.readouterr().out
    assert "D3IP - DDS" in printed and "ranking by PSNR: " in printed and "mean of 2 samples" in printed
    assert sorted(summary["ranking"]) == ["admm-tv", "d3ip", "dds"] and summary["samples"] == 2
    assert (out / "d3ip" / "std.nii.gz").is_file() and not (out / "admm-tv" / "std.nii.gz").exists()
    for method in ("dds", "d3ip"):  # both sample with DDS's step, its settings recorded with the result
        sampler = json.loads((out / method / "metrics.json").read_text())["report"]["resolved"]["sampler"]
        start = {"t_start": method_spec(method).t_start} if method_spec(method).t_start else {}  # DDS's own T'
        assert sampler == {"n_steps": 4, "eta": DDS.eta, "noise_mix": DDS.noise_mix, "cg_iters": DDS.cg_iters, **start}


def test_reconstruct_config_names_a_bad_option():
    from ddip.errors import DdipError
    from ddip.reconstruct import ReconstructConfig

    with pytest.raises(DdipError, match="unknown precision 'float16'"):
        ReconstructConfig(method="dds", precision="float16")
    with pytest.raises(DdipError, match="unknown dc_variant 'exact'"):
        ReconstructConfig(method="ddnm", dc_variant="exact")


def test_dc_variant_cg_steps_and_precision_are_recorded_and_refused_where_they_do_not_apply(ct_measurement,
                                                                                             tiny_prior, tmp_path,
                                                                                             capsys):
    out = tmp_path / "ddnm"
    assert main(["reconstruct", str(ct_measurement), "--method", "ddnm", "--dc-variant", "proximal", "--prior",
                 tiny_prior, "--out", str(out), "--steps", "2", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["dc_variant"] == "proximal"
    out = tmp_path / "bf16"
    assert main(["reconstruct", str(ct_measurement), "--method", "d3ip", "--precision", "bfloat16", "--prior",
                 tiny_prior, "--out", str(out), "--steps", "2", "--iters", "1", "--k", "2", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["precision"] == "bfloat16"
    assert main(["reconstruct", str(ct_measurement), "--method", "mbir", "--dc-variant", "normal", "--prior",
                 tiny_prior, "--out", str(tmp_path / "mbir"), "--steps", "2", "--quiet"]) == 2
    assert "dc_variant applies to the CG samplers" in capsys.readouterr().err
    assert not (tmp_path / "mbir").exists()
    out = tmp_path / "paper-cg"
    assert main(["reconstruct", str(ct_measurement), "--method", "mbir", "--cg-iters", "5", "--prior", tiny_prior,
                 "--out", str(out), "--steps", "2", "--quiet"]) == 0
    assert json.loads((out / "config.json").read_text())["cg_iters"] == 5
    assert main(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--cg-iters", "5", "--out",
                 str(tmp_path / "tv"), "--quiet"]) == 2
    assert "cg_iters applies to the samplers with a CG" in capsys.readouterr().err


def test_tv_weight_and_penalty_reach_the_tv_methods_and_only_them(ct_measurement, capsys, tmp_path):
    from ddip.methods import ADMM_TV, mbir_parameters, tv_parameters
    from ddip.reconstruct import ReconstructConfig
    from ddip.tasks import load_measurement

    m = load_measurement(ct_measurement)
    assert tv_parameters(ReconstructConfig(method="admm-tv"), m.config) == ADMM_TV["sv-ct"]
    assert tv_parameters(ReconstructConfig(method="mbir", tv_lam=0.5), m.config) == \
        {"lam": 0.5, "rho": mbir_parameters(m.config)["rho"]}
    outs = {}
    for lam in ("0.02", "0.5"):  # the default and 25 times more: a smoother volume
        out = tmp_path / lam
        assert main(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--tv-lambda", lam, "--out", str(out),
                     "--units", "window", "--quiet"]) == 0
        outs[lam] = np.asarray(nib.load(str(out / "reconstruction.nii.gz")).dataobj)
    variation = {k: sum(float(np.abs(np.diff(v, axis=a)).mean()) for a in range(3)) for k, v in outs.items()}
    assert variation["0.5"] < 0.9 * variation["0.02"]
    for args, message in ((["--method", "dds", "--tv-lambda", "0.1"], "tv_lam applies to the methods with a TV"),
                          (["--method", "admm-tv", "--tv-rho", "-1"], "tv_rho must be a positive finite")):
        assert main(["reconstruct", str(ct_measurement), *args, "--out", str(tmp_path / "bad"), "--quiet"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "args,message",
    [
        (["reconstruct", "missing.safetensors", "--method", "dds", "--out", "{tmp}/o"], "no such measurement file"),
        (["simulate", "--task", "sv-ct", "--volume", "nowhere.nii.gz", "--out", "{tmp}/m.safetensors"],
         "no such file"),
        (["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--slices", "3-4",
          "--out", "{tmp}/m.safetensors"], "START:STOP"),
        (["demo", "--out", "{tmp}", "--prior", "no-such-prior"], "not a shipped prior"),
    ],
)
def test_bad_input_gives_one_clear_error(args, message, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    argv = [a.replace("{tmp}", str(tmp_path / "sub")) for a in args]
    if args[0] == "demo":
        argv = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddip: error:") and message in err
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_existing_output_is_refused_without_overwrite(ct_measurement, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_unknown_method_lists_the_valid_ones(ct_measurement, capsys):
    with pytest.raises(SystemExit) as info:
        main(["reconstruct", str(ct_measurement), "--method", "magic", "--out", "x"])
    assert info.value.code == 2 and "d3ip-meta" in capsys.readouterr().err


def test_prior_size_mismatch_is_refused_and_nothing_is_written(tiny_prior, tmp_path, capsys):
    import hashlib

    meas = tmp_path / "ct32.safetensors"
    assert main(["simulate", "--task", "sv-ct", "--volume", "chest-ct", "--n-slices", "2", "--size", "32",
                 "--out", str(meas)]) == 0
    digest = hashlib.sha256(meas.read_bytes()).hexdigest()
    out = tmp_path / "never"
    assert main(["reconstruct", str(meas), "--method", "dds", "--prior", tiny_prior, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "image size is 64 but the data are 32 px" in err and "--resize" in err and "--size 64" in err
    assert not out.exists()  # nothing written
    assert hashlib.sha256(meas.read_bytes()).hexdigest() == digest  # input untouched
    # --resize reconstructs on the prior's 64 px grid and reports on the data's 32 px grid
    assert main(["reconstruct", str(meas), "--method", "dds", "--prior", tiny_prior, "--out", str(out),
                 "--steps", "2", "--resize", "--quiet"]) == 0
    import nibabel as nib

    assert sorted(nib.load(out / "reconstruction.nii.gz").shape) == [2, 32, 32]
    config = json.loads((out / "config.json").read_text())
    assert config["resize"] is True and json.loads((out / "metrics.json").read_text())["psnr"] is not None
    assert hashlib.sha256(meas.read_bytes()).hexdigest() == digest


def test_a_config_file_goes_through_the_parser_and_the_command_line_wins(ct_measurement, tiny_prior, tmp_path,
                                                                         capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"method": "dds", "prior": tiny_prior, "out": str(out), "max_batch": "3", "seed": 7,
                               "steps": 2, "quiet": True, "zeta": None}))
    assert main(["reconstruct", str(ct_measurement), "--config", str(cfg), "--seed", "5"]) == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["max_batch"] == 3 and recorded["n_steps"] == 2 and recorded["seed"] == 5
    for bad, message in [({"max_batch": "x"}, "'max_batch': invalid value 'x'"), ({"seed": [1, 2]}, "'seed'"),
                         ({"bogus": 1}, "unknown option 'bogus'"), ({"quiet": "yes"}, "is a switch"),
                         ({"noise_mix": "eq7"}, "is not one of paper, code, ddim")]:
        cfg.write_text(json.dumps({"method": "dds", "out": str(tmp_path / "x"), **bad}))
        assert main(["reconstruct", str(ct_measurement), "--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ddip: error:") and message in err and "Traceback" not in err


def test_command_line_defaults_are_the_config_defaults():
    from ddip.benchmark import BenchConfig
    from ddip.cli import bench_config, build_parser, reconstruct_config
    from ddip.reconstruct import ReconstructConfig
    from ddip.tasks import TaskConfig

    commands = build_parser().subcommands
    for method in ("dds", "d3ip", "admm-tv", "scd", "dps"):  # no flag given: exactly the config's defaults
        args = commands["reconstruct"].parse_args(["m.safetensors", "--method", method, "--out", "o"])
        assert reconstruct_config(args) == ReconstructConfig(method=method)
    sim = vars(commands["simulate"].parse_args(["--task", "sv-ct", "--volume", "v", "--out", "o"]))
    task = TaskConfig(task="sv-ct")
    assert (sim["size"], sim["views"], sim["noise"], sim["seed"]) == (task.size, task.views, task.noise, task.seed)
    assert bench_config(commands["benchmark"].parse_args([])) == BenchConfig()


def test_benchmark_quick_keeps_what_is_given_explicitly():
    from ddip.benchmark import QUICK, BenchConfig
    from ddip.cli import bench_config, build_parser

    parse = build_parser().subcommands["benchmark"].parse_args
    assert bench_config(parse(["--quick"])) == BenchConfig.quick_config()
    cfg = bench_config(parse(["--quick", "--table2", "mri3d", "--methods", "dds,d3ip", "--n-slices", "2"]))
    assert cfg.quick and cfg.table2_settings == ("mri3d",) and cfg.methods == ("dds", "d3ip")
    assert cfg.n_slices == 2 and cfg.n_steps == QUICK["n_steps"]
    assert cfg.command() == "ddip benchmark --quick --n-slices 2 --table2-settings mri3d --methods dds,d3ip"


@pytest.mark.parametrize("device,message", [("bogus", "unknown device 'bogus'"), ("gpu", "unknown device 'gpu'"),
                                            ("meta", "device 'meta' is not supported"),
                                            pytest.param("cuda", "requested but", marks=pytest.mark.skipif(
                                                __import__("torch").cuda.is_available(), reason="a GPU is here"))])
def test_an_unusable_device_is_one_clear_error(device, message, ct_measurement, tiny_prior, tmp_path, capsys):
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "2",
                 "--device", device, "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ddip: error:") and message in err and err.count("\n") == 1


def test_device_auto_is_the_default_and_picks_what_is_there(ct_measurement, tiny_prior, tmp_path):
    import torch

    out = tmp_path / "o"
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["report"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")


def test_an_unexpected_error_is_one_line_and_its_traceback_is_behind_log_level_debug(monkeypatch, tmp_path,
                                                                                   capsys):
    import ddip.cli as cli

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "simulate", broken)
    args = ["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--n-slices", "1", "--out",
            str(tmp_path / "m.safetensors")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected KeyError" in err and "--log-level debug" in err
    with pytest.raises(KeyError, match="a bug"):
        main([*args, "--log-level", "debug"])


def test_out_of_memory_names_the_option_that_lowers_it(monkeypatch, ct_measurement, tmp_path, capsys):
    import ddip.cli as cli

    def oom(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(cli, "reconstruct_samples", oom)
    assert main(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--out", str(tmp_path / "o")]) == 2
    assert "out of memory (MemoryError); lower --max-batch" in capsys.readouterr().err


def test_adaptation_settings_given_to_a_method_that_does_not_adapt_are_refused(ct_measurement, tiny_prior, tmp_path,
                                                                               capsys):
    for extra in (["--k", "3"], ["--iters", "2"], ["--lr", "1e-3"], ["--zeta", "none"]):
        assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "2",
                     "--out", str(tmp_path / "o"), "--quiet", *extra]) == 2
        assert "set the adaptation, which dds does not do" in capsys.readouterr().err
    assert main(["reconstruct", str(ct_measurement), "--method", "scd", "--prior", tiny_prior, "--steps", "2",
                 "--iters", "1", "--lr", "1e-4", "--out", str(tmp_path / "ok"), "--quiet"]) == 0


def test_pictures_show_ct_in_a_soft_tissue_window_with_true_proportions():
    from ddip.outputs import display

    record = {"scaling": {"kind": "hu_window", "window_hu": [-1024.0, 2048.0]}, "spacing_mm": [0.7, 0.7, 2.5],
              "slice_axis": 2, "pixel_spacing_mm": {"rows": 1.25, "cols": 1.25}}
    shown = display(record)
    lo, hi = shown["window"]
    assert lo * 3072 - 1024 == pytest.approx(-160) and hi * 3072 - 1024 == pytest.approx(240)
    assert shown["slice_aspect"] == pytest.approx(2.0)  # 2.5 mm slices over 1.25 mm pixels
    assert display(record, "full")["window"] == (0.0, 1.0)
    assert display({"scaling": {"kind": "divide_by_max", "max": 3.0}})["window"] == (0.0, 1.0)  # MRI: as is


def test_version_and_threads_on_every_command_and_sleeping_openmp_threads(ct_measurement, tiny_prior, tmp_path,
                                                                         capsys):
    import subprocess
    import sys

    import torch

    from ddip import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ddip {__version__}"
    before = torch.get_num_threads()
    out = tmp_path / "r"
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "2",
                 "--threads", "1", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["environment"]["torch_threads"] == 1
    assert torch.get_num_threads() == before  # restored: main() may run inside a longer process
    for command in ("simulate", "import", "demo", "benchmark", "prior-gate", "convert-prior", "train-prior"):
        assert "--threads" in main.__globals__["build_parser"]().subcommands[command].format_help()
    # spinning OpenMP threads collapse a busy machine and sleeping ones slow an idle one (docs/usage.md): the CLI
    # sleeps them when the load average is half the cores or more, and leaves a user's choice alone
    busy = main.__globals__["busy"]
    assert busy(1.0, 2) and busy(4.2, 8) and not busy(0.3, 2) and not busy(3.0, 8)
    env = {k: v for k, v in __import__("os").environ.items() if k != "OMP_WAIT_POLICY"}
    kept = subprocess.run([sys.executable, "-c", "import os, ddip.cli; print(os.environ['OMP_WAIT_POLICY'])"],
                          env={**env, "OMP_WAIT_POLICY": "ACTIVE"}, capture_output=True, text=True, check=True)
    assert kept.stdout.strip() == "ACTIVE"  # the user's choice wins


def test_an_unknown_prior_name_points_to_convert_prior(ct_measurement, tmp_path, capsys):
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", "scd-ellipses", "--quiet",
                 "--out", str(tmp_path / "r")]) == 2
    assert "convert-prior" in capsys.readouterr().err


def test_an_array_is_read_slices_first_with_its_voxel_size_and_says_how(tmp_path, capsys):
    import nibabel as nib

    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((4, 50, 70)).astype(np.float32))
    out = tmp_path / "m.safetensors"
    assert main(["simulate", "--task", "mri3d", "--volume", str(tmp_path / "v.npy"), "--voxel-mm", "0.5,0.8,0.8",
                 "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "shape (4, 50, 70), slices along axis 0 (4 slices of 50 x 70), voxels 0.5 x 0.8 x 0.8 mm" in err
    from ddip.tasks import load_measurement

    m = load_measurement(out)
    assert m.y.shape[0] == 4 and m.record["spacing_mm"] == [0.5, 0.8, 0.8]
    assert main(["reconstruct", str(out), "--method", "admm-tv", "--quiet", "--out", str(tmp_path / "r")]) == 0
    zooms = nib.load(str(tmp_path / "r" / "reconstruction.nii.gz")).header.get_zooms()
    assert zooms[2] == pytest.approx(0.5)  # the slice spacing is the array's axis-0 voxel size
    assert main(["simulate", "--task", "mri3d", "--volume", str(tmp_path / "v.npy"), "--slice-axis", "2",
                 "--out", str(tmp_path / "m2.safetensors")]) == 0
    assert "(70 slices of 4 x 50)" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--n-slices", "40"], "has 32 slices"),
    (["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--n-slices", "4", "--out", "x.nii.gz"],
     "name it \\*.safetensors"),
])
def test_silently_accepted_inputs_are_refused(args, message, tmp_path, capsys):
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "m.safetensors")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(message, err), err


def test_ct_in_hounsfield_units_simulated_as_mri_is_warned_about(tmp_path, caplog):
    hu = np.full((4, 32, 32), -1000.0, dtype=np.float32)
    hu[:, 8:24, 8:24] = 40.0
    np.save(tmp_path / "ct.npy", hu)
    assert main(["simulate", "--task", "mri3d", "--volume", str(tmp_path / "ct.npy"), "--size", "32",
                 "--out", str(tmp_path / "m.safetensors")]) == 0
    assert "like air in Hounsfield units" in caplog.text and "--task sv-ct" in caplog.text


def test_k_is_reported_as_the_slices_it_can_draw(tmp_path, tiny_prior):
    out = tmp_path / "m.safetensors"
    assert main(["simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct", "--n-slices", "4", "--views", "15",
                 "--out", str(out)]) == 0
    assert main(["reconstruct", str(out), "--method", "d3ip", "--prior", tiny_prior, "--steps", "2", "--iters", "1",
                 "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["report"]["adapt"]["k"] == 4  # Table 5: 6
    resolved = json.loads((tmp_path / "r" / "config.json").read_text())["resolved"]["adaptation"]
    from ddip.adapt import AdaptConfig  # the K, L, Table 5's rate and the window that ran, not null
    assert resolved == {"k": 4, "n_iters": 1, "lr": 1e-3, "zeta": AdaptConfig.zeta}


def test_the_nifti_says_mm_and_its_units_and_a_volume_given_to_reconstruct_is_sent_to_simulate(ct_measurement,
                                                                                              tmp_path, capsys):
    import nibabel as nib

    out = tmp_path / "r"
    assert main(["reconstruct", str(ct_measurement), "--method", "admm-tv", "--quiet", "--out", str(out)]) == 0
    header = nib.load(str(out / "reconstruction.nii.gz")).header
    assert header.get_xyzt_units()[0] == "mm" and b"HU" in header["descrip"].tobytes()
    assert main(["reconstruct", str(out / "reconstruction.nii.gz"), "--method", "admm-tv", "--out",
                 str(tmp_path / "r2")]) == 2
    assert "simulate its measurements first" in capsys.readouterr().err


def test_a_runs_config_json_replays_it_and_every_option_survives_the_round_trip(ct_measurement, tiny_prior, tmp_path,
                                                                                 capsys):
    from ddip.cli import NOT_REPLAYED, build_parser, config_arguments, replay_options

    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["reconstruct", str(ct_measurement), "--method", "dds", "--prior", tiny_prior, "--steps", "3",
                 "--seed", "4", "--cg-iters", "3", "--quiet", "--out", str(first)]) == 0
    recorded = json.loads((first / "config.json").read_text())
    assert recorded["options"]["cg-iters"] == 3 and recorded["options"]["prior"] == tiny_prior
    from ddip.solvers import DDS  # what the method chose where the options left it (None) is recorded too
    assert recorded["resolved"] == {"sampler": {"n_steps": 3, "eta": DDS.eta, "noise_mix": DDS.noise_mix, "cg_iters": 3,
                                             "t_start": method_spec("dds").t_start}}
    assert main(["reconstruct", str(ct_measurement), "--config", str(first / "config.json"), "--quiet",
                 "--out", str(again)]) == 0
    assert np.array_equal(nib.load(first / "reconstruction.nii.gz").get_fdata(),
                          nib.load(again / "reconstruction.nii.gz").get_fdata())
    assert json.loads((again / "config.json").read_text())["options"] == recorded["options"]
    # every reconstruct option, away from its default, comes back as parsed
    parser = build_parser().subcommands["reconstruct"]
    argv = ["m.safetensors", "--out", "o", "--method", "d3ip-mbir", "--prior", "p.safetensors", "--device", "cpu",
            "--steps", "7", "--t-start", "600", "--seed", "3", "--samples", "2", "--max-batch", "5", "--init", "noise", "--noise-mix",
            "ddim", "--eta", "0.3", "--k", "2", "--iters", "3", "--lr", "2e-3", "--zeta", "0", "--dc-variant", "normal",
            "--cg-iters", "4", "--tv-lambda", "0.02", "--tv-rho", "0.4", "--precision", "bfloat16",
            "--channels-last", "--compile", "--resize", "--normalise", "off", "--units", "window",
            "--display-window", "full", "--checkpoint-every", "9", "--range-guard", "off", "--preset", "paper",
            "--carry-admm-state", "on", "--lora-rank", "8", "--loss-cg-iters", "2"]
    args = parser.parse_args(argv)
    replayable = {a.dest for a in parser._actions if a.option_strings} - NOT_REPLAYED - {"help"}
    assert set(replay_options(args)) == {d.replace("_", "-") for d in replayable}
    changed = {d for d in replayable if getattr(args, d) != parser.get_default(d)}
    assert changed == replayable  # the argv above moves every replayable option off its default
    (tmp_path / "run.json").write_text(json.dumps({"command": "reconstruct", "options": replay_options(args)}))
    replayed = parser.parse_args(["m.safetensors", "--out", "o", *config_arguments(parser, str(tmp_path / "run.json"))])
    assert {d: getattr(replayed, d) for d in replayable} == {d: getattr(args, d) for d in replayable}
    # another command's run is refused by name
    (tmp_path / "demo.json").write_text(json.dumps({"command": "demo", "options": {}}))
    assert main(["reconstruct", str(ct_measurement), "--config", str(tmp_path / "demo.json"), "--out", "x"]) == 2
    assert "the options of a 'ddip demo' run" in capsys.readouterr().err


def test_every_options_help_states_its_default_from_the_config_classes(capsys):
    from ddip.cli import build_parser
    from ddip.priors.train import TrainConfig

    for name, command in build_parser().subcommands.items():
        for action in command._actions:
            if action.option_strings and action.default is not None and action.default is not False \
                    and action.dest != "help":
                assert "default" in (action.help or ""), (name, action.dest)
    with pytest.raises(SystemExit):
        main(["train-prior", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"--batch-size BATCH_SIZE, --batch BATCH_SIZE default: {TrainConfig.batch_size}" in text
    assert f"default: {TrainConfig.lr}" in text


def test_every_flag_that_sets_a_config_field_is_named_after_it_and_fills_it():
    """Flag -> field is one rule (``--n-steps`` sets ``n_steps``, older short names stay as aliases), so the config
    builders are generic; what a command takes beside its config is listed here, and nothing else."""
    import dataclasses

    from ddip.benchmark import BenchConfig
    from ddip.cli import build_parser, config_fields
    from ddip.priors.train import TrainConfig
    from ddip.priors.unet import UNetConfig
    from ddip.reconstruct import ReconstructConfig

    common = {"help", "log_level", "config", "threads"}
    besides = {"reconstruct": {"measurement", "display_window", "units", "prior", "device", "out", "preset",
                               "overwrite", "resume", "checkpoint_every", "quiet"},
               "benchmark": {"out", "resume", "tables"},
               "train-prior": {"data"}}
    configs = {"reconstruct": (ReconstructConfig,), "benchmark": (BenchConfig,), "train-prior": (TrainConfig, UNetConfig)}
    for name, classes in configs.items():
        parser = build_parser().subcommands[name]
        fields = {f.name for cls in classes for f in dataclasses.fields(cls)}
        for action in parser._actions:
            if action.dest in fields:
                assert action.option_strings[0] == "--" + action.dest.replace("_", "-") or not action.option_strings
            else:
                assert action.dest in common | besides[name], (name, action.dest)
    args = build_parser().parse_args(["reconstruct", "m", "--out", "o", "--method", "d3ip", "--steps", "7",
                                      "--iters", "2", "--zeta", "none", "--range-guard", "off", "--lora-rank", "16",
                                      "--loss-cg-iters", "1"])
    given = config_fields(ReconstructConfig, args)
    assert given["n_steps"] == 7 and given["n_iters"] == 2 and given["zeta"] == 0 and given["range_guard"] is False
    assert given["lora_rank"] == 16 and given["loss_cg_iters"] == 1
    assert "eta" not in given  # not given: left to the config


def test_an_older_runs_config_json_with_the_short_flag_names_still_replays(tmp_path):
    from ddip.cli import build_parser, config_arguments

    parser = build_parser().subcommands["reconstruct"]
    (tmp_path / "old.json").write_text(json.dumps({"command": "reconstruct", "options": {
        "steps": 3, "iters": 2, "tv-lambda": 0.1, "range-guard": "off", "method": "d3ip-mbir"}}))
    args = parser.parse_args(["m", "--out", "o", *config_arguments(parser, str(tmp_path / "old.json"))])
    assert (args.n_steps, args.n_iters, args.tv_lam, args.range_guard) == (3, 2, 0.1, False)


def test_the_paper_preset_sets_the_papers_sampling_under_the_flags_given():
    from ddip.cli import build_parser, reconstruct_config
    from ddip.solvers.dds import PAPER_CG_ITERS

    def cfg(*flags):
        return reconstruct_config(build_parser().parse_args(["reconstruct", "m.safetensors", "--out", "o", *flags]))

    paper = cfg("--method", "d3ip", "--preset", "paper")
    assert (paper.n_steps, paper.eta, paper.noise_mix, paper.cg_iters) == (50, 0.85, "code", PAPER_CG_ITERS)
    mine = cfg("--method", "dds", "--preset", "paper", "--eta", "0.2", "--noise-mix", "paper", "--steps", "20")
    assert (mine.n_steps, mine.eta, mine.noise_mix, mine.cg_iters) == (20, 0.2, "paper", PAPER_CG_ITERS)
    ddnm = cfg("--method", "ddnm", "--preset", "paper")  # its own 30 CG steps are the paper's; eta and the mixing
    assert (ddnm.cg_iters, ddnm.eta, ddnm.noise_mix) == (None, 0.85, "code")
    assert cfg("--method", "dps", "--preset", "paper") == cfg("--method", "dps")  # all its own
    mbir = cfg("--method", "d3ip-mbir", "--preset", "paper")  # the paper keeps ADMM's z, u across timesteps
    assert (mbir.eta, mbir.noise_mix, mbir.carry_admm_state) == (0.85, "code", True)
    assert cfg("--method", "mbir", "--carry-admm-state", "off").carry_admm_state is False
    assert cfg("--method", "admm-tv", "--preset", "paper") == cfg("--method", "admm-tv")  # nothing to set
    plain = cfg("--method", "dds")
    assert (plain.n_steps, plain.eta, plain.cg_iters) == (None, None, None)
