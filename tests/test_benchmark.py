"""The benchmark's plumbing with a tiny prior (its numbers are only meaningful with a shipped prior)."""

import json
import math

import pytest
import torch

from ddip.benchmark import BenchConfig, _rconfig, run_benchmark
from ddip.errors import DdipError


def test_benchmark_writes_tables_markdown_and_plot(tiny_prior, tmp_path):
    cfg = BenchConfig(prior=tiny_prior, n_slices=2, n_steps=3, dps_slices=1, quick=True, scaling_sizes=(2, 4))
    results = run_benchmark(cfg, tables=("table3", "scaling"), out=tmp_path)
    assert [r["variant"] for r in results["table3"]] == ["baseline", "+ horizon", "+ init"]
    assert sorted({r["N"] for r in results["scaling"]}) == [2, 4]
    saved = json.loads((tmp_path / "scaling-quick.json").read_text())
    assert saved["command"].startswith("ddip benchmark --quick") and saved["machine"]["cpus"] >= 1
    for row in saved["rows"]:
        assert math.isfinite(row["psnr"]) and row["wall_time_s"] > 0 and row["adapt_passes"] > 0
    assert (tmp_path / "scaling-quick.png").stat().st_size > 0
    d3ip_rows = [r for r in saved["rows"] if r["method"] == "d3ip"]
    assert all(r["count_ratio_vs_ddip"] > 0 and r["wall_ratio_vs_ddip"] > 0 for r in d3ip_rows)
    assert all(0 < r["network_share"] <= 1 for r in saved["rows"])
    assert "### table3" in (tmp_path / "results-quick.md").read_text()


def test_the_recorded_command_reproduces_the_configuration():
    assert BenchConfig(n_slices=8, n_steps=20, scaling_steps=10).command() == \
        "ddip benchmark --n-slices 8 --n-steps 20 --scaling-steps 10"
    assert BenchConfig().command() == "ddip benchmark"
    assert BenchConfig(size=128, methods=("dds", "d3ip")).command() == "ddip benchmark --size 128 --methods dds,d3ip"
    assert BenchConfig(cg_iters=5, lr=1e-3).command() == "ddip benchmark --cg-iters 5 --lr 0.001"
    assert BenchConfig(device="cpu", precision="bfloat16-weights", channels_last=True).command() == \
        "ddip benchmark --device cpu --precision bfloat16-weights --channels-last"


def test_cg_steps_and_learning_rate_reach_only_the_methods_they_apply_to():
    cfg = BenchConfig(cg_iters=5, lr=1e-3)
    settings = {m: _rconfig(cfg, method=m) for m in ("admm-tv", "dps", "ddnm", "dds", "mbir", "d3ip", "scd")}
    assert [settings[m].cg_iters for m in settings] == [None, None, None, 5, None, 5, 5]  # DDS's step only
    assert [settings[m].lr for m in settings] == [None, None, None, None, None, 1e-3, 1e-3]
    fast = BenchConfig(precision="bfloat16", channels_last=True)
    assert [_rconfig(fast, method=m).speed.channels_last for m in ("admm-tv", "dds", "d3ip")] == [False, True, True]
    assert _rconfig(fast, method="d3ip").precision == "bfloat16"
    with pytest.raises(DdipError, match="unknown device"):
        BenchConfig(device="gpu")
    for bad in ({"cg_iters": 0}, {"lr": -1.0}):
        with pytest.raises(DdipError, match="cg_iters must be >= 1|lr must be a positive"):
            BenchConfig(**bad)
    for bad, named in (({"scaling_sizes": ()}, "scaling_sizes"), ({"scaling_sizes": (0, 2)}, "scaling_sizes"),
                       ({"size": 7}, "size"), ({"n_slices": 0}, "n_slices"), ({"n_steps": 0}, "n_steps")):
        with pytest.raises(DdipError, match=f"got {named} out of range"):
            BenchConfig(**bad)


def test_the_paper_preset_gives_every_method_the_papers_sampling_under_the_options_given():
    from ddip.reconstruct import ReconstructConfig
    from ddip.solvers.dds import PAPER_CG_ITERS

    paper = BenchConfig(preset="paper")
    assert paper.command() == "ddip benchmark --preset paper"
    dds, ddnm, dps, tv = (_rconfig(paper, method=m) for m in ("dds", "ddnm", "dps", "admm-tv"))
    assert (dds.eta, dds.noise_mix, dds.cg_iters, dds.n_steps) == (0.85, "code", PAPER_CG_ITERS, 50)
    assert (ddnm.eta, ddnm.noise_mix, ddnm.cg_iters) == (0.85, "code", None)  # its own 30 CG steps
    mbir = _rconfig(paper, method="d3ip-mbir")
    assert (mbir.eta, mbir.noise_mix, mbir.carry_admm_state) == (0.85, "code", True)  # ADMM's z, u kept
    assert dps == _rconfig(BenchConfig(), method="dps") and tv == _rconfig(BenchConfig(), method="admm-tv")
    mine = _rconfig(BenchConfig(preset="paper", cg_iters=20, noise_mix="paper"), method="d3ip", n_steps=10)
    assert (mine.cg_iters, mine.noise_mix, mine.n_steps, mine.eta) == (20, "paper", 10, 0.85)  # options given win
    from ddip.adapt.adapter import PAPER_ZETA  # the paper's adaptation window; SCD adapts at every step
    assert mine.zeta == PAPER_ZETA and _rconfig(paper, method="d3ip-mbir").zeta == PAPER_ZETA
    assert _rconfig(paper, method="scd").zeta is None and _rconfig(BenchConfig(), method="d3ip").zeta is None
    plain = _rconfig(BenchConfig(), method="dds")
    assert (plain.eta, plain.noise_mix) == (None, ReconstructConfig.noise_mix)  # the step's own defaults
    with pytest.raises(DdipError, match="unknown preset"):
        BenchConfig(preset="fast")


def test_table2_runs_only_the_chosen_methods(tiny_prior, tmp_path):
    cfg = BenchConfig(prior=tiny_prior, n_slices=2, n_steps=2, dps_slices=1, quick=True,
                      table2_settings=("mri3d",), methods=("dds", "admm-tv"))
    earlier = {"command": "ddip benchmark --tables table4", "date": "2026-01-01", "elapsed_s": 1.0, "machine": {},
               "rows": [{"method": "d3ip", "K": 1, "psnr": 20.0}]}
    (tmp_path / "table4-quick.json").write_text(json.dumps(earlier))
    rows = run_benchmark(cfg, tables=("table2",), out=tmp_path)["table2"]
    assert [r["method"] for r in rows] == ["dds", "admm-tv"]
    summary = (tmp_path / "results-quick.md").read_text()  # this run's table and the earlier one, each with its command
    assert "### table2" in summary and "### table4" in summary and "`ddip benchmark --tables table4`" in summary
    with pytest.raises(DdipError, match="unknown or no method.*'sdd'"):
        BenchConfig(methods=("dds", "sdd"))


def test_default_prior_is_chosen_per_task_and_size(monkeypatch):
    from ddip.priors import registry

    monkeypatch.setattr(registry, "shipped_priors", lambda: ["ellipses-64"])
    assert registry.default_prior("csmri", 64) == "ellipses-64"  # real prior on real and imaginary parts
    monkeypatch.setattr(registry, "shipped_priors", lambda: ["ellipses-64", "ellipses-complex-64"])
    assert registry.default_prior("csmri", 64) == "ellipses-complex-64"
    assert registry.default_prior("sv-ct", 64) == "ellipses-64"
    with pytest.raises(DdipError, match="no shipped prior for sv-ct at 128 px.*--resize"):
        registry.default_prior("sv-ct", 128)


def test_a_stopped_benchmark_resumes_keeping_finished_rows_and_the_checkpoint_of_the_one_in_progress(
        tiny_prior, tmp_path, monkeypatch):
    """SIGINT during the second reconstruction checkpoints it; --resume keeps the first row without running it again
    and finishes the second from its checkpoint, to the rows an uninterrupted run gives."""
    import os
    import signal

    import ddip.benchmark as benchmark
    from ddip.signals import Interrupted, StopRequest

    cfg = BenchConfig(prior=tiny_prior, n_slices=2, n_steps=6, quick=True)
    whole = run_benchmark(cfg, tables=("table3",), out=tmp_path / "whole")["table3"]
    calls, signalled, real = [], [], benchmark.reconstruct

    def stopped_on_the_second(m, rcfg, prior, **kw):
        calls.append(kw["checkpointer"].path)
        if len(calls) == 2 and not signalled:
            signalled.append(True)
            os.kill(os.getpid(), signal.SIGINT)  # caught by StopRequest: checkpoint after the step, then stop
        return real(m, rcfg, prior, **kw)

    monkeypatch.setattr(benchmark, "reconstruct", stopped_on_the_second)
    with StopRequest() as stop, pytest.raises(Interrupted, match="--resume"):
        run_benchmark(cfg, tables=("table3",), out=tmp_path / "run", stop=stop)
    assert calls[1].exists() and len((tmp_path / "run" / "rows-quick.jsonl").read_text().splitlines()) == 1
    calls.clear()
    resumed = run_benchmark(cfg, tables=("table3",), out=tmp_path / "run", resume=True)["table3"]
    assert len(calls) == 2  # the first row is kept; the second resumes, the third runs
    assert [r["psnr"] for r in resumed] == pytest.approx([r["psnr"] for r in whole], abs=1e-6)
    assert not any((tmp_path / "run" / "checkpoints-quick").glob("*.pt"))
    assert len(benchmark._Run(cfg, tmp_path / "run", "-quick", resume=True).done) == 3
    assert not benchmark._Run(cfg, tmp_path / "run", "-quick", resume=False).done  # without --resume: afresh
    assert not (tmp_path / "run" / "rows-quick.jsonl").exists()


def test_a_row_is_keyed_on_what_ran_not_on_how_the_config_spelled_it(tiny_prior, tmp_path):
    """A setting given at the value the method would choose anyway, or a config field left at its default, keeps the
    key (so rows and checkpoints survive new optional fields); a setting that changes what runs changes it."""
    import ddip.benchmark as benchmark
    from ddip.reconstruct import ReconstructConfig
    from ddip.solvers import DDS
    from ddip.tasks import TaskConfig, simulate

    run = benchmark._Run(BenchConfig(prior=tiny_prior), tmp_path, "", resume=False)
    gt = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    m = simulate(gt, TaskConfig(task="sv-ct", size=16, views=4))

    def key(**options):
        settings = run.settings(m, ReconstructConfig(method="dds", n_steps=3, **options), "sv-ct", {"task": "sv-ct"})
        return json.dumps(settings, sort_keys=True, default=str)

    assert key() == key(eta=DDS.eta, noise_mix=DDS.noise_mix, cg_iters=DDS.cg_iters)
    assert key() != key(eta=0.5) and key() != key(seed=1)
    assert "carry_admm_state" not in key() and '"eta": ' + str(DDS.eta) in key()
