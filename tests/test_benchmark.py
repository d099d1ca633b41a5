"""The benchmark's plumbing with a tiny prior (its numbers are only meaningful with a shipped prior)."""

import json
import math

import pytest

from ddip.benchmark import BenchConfig, run_benchmark
from ddip.errors import DdipError


def test_benchmark_writes_tables_markdown_and_plot(tiny_prior, tmp_path):
    cfg = BenchConfig(prior=tiny_prior, n_slices=2, n_steps=2, dps_slices=1, quick=True)
    results = run_benchmark(cfg, tables=("table3", "scaling"), out=tmp_path)
    assert [r["variant"] for r in results["table3"]] == ["baseline", "+ horizon", "+ init"]
    assert sorted({r["N"] for r in results["scaling"]}) == [2, 4]
    saved = json.loads((tmp_path / "scaling-quick.json").read_text())
    assert saved["command"].startswith("ddip benchmark --quick") and saved["machine"]["cpus"] >= 1
    for row in saved["rows"]:
        assert math.isfinite(row["psnr"]) and row["wall_time_s"] > 0 and row["adapt_passes"] > 0
    assert (tmp_path / "scaling-quick.png").stat().st_size > 0
    assert "### table3" in (tmp_path / "results-quick.md").read_text()


def test_default_prior_is_chosen_per_task_and_size(monkeypatch):
    from ddip.priors import registry

    monkeypatch.setattr(registry, "shipped_priors", lambda: ["ellipses-64"])
    assert registry.default_prior("csmri", 64) == "ellipses-64"  # real prior on real and imaginary parts
    monkeypatch.setattr(registry, "shipped_priors", lambda: ["ellipses-64", "ellipses-complex-64"])
    assert registry.default_prior("csmri", 64) == "ellipses-complex-64"
    assert registry.default_prior("sv-ct", 64) == "ellipses-64"
    with pytest.raises(DdipError, match="no shipped prior for sv-ct at 128 px.*--resize"):
        registry.default_prior("sv-ct", 128)
