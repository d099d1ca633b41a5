"""``ddip benchmark``: the paper's tables on the development volumes, at our scale.

Tables (each a list of rows in ``benchmarks/results/<table>.json``, a markdown table and, for the cost scaling, a
PNG plot):

* ``table2``: every method × {SV-CT (60 views and the paper's 60·size/256), 3D MRI, CS-MRI}: PSNR, SSIM, LPIPS, wall
  time, peak memory (DPS on fewer slices: its 1000 network evaluations per slice are the cost);
* ``table1``: DDIP with 1 (SCD), 3 and 5 CG steps inside the adaptation loss;
* ``table3``: D3IP baseline (no horizon, pure-noise init) → + horizon → + init;
* ``table4``: D3IP with K = 1, 2, 3, 6, 12;
* ``scaling``: wall time and peak memory of DDIP and D3IP for N = 8, 16, 32, 64 slices, with the network-pass counts
  T_a·L·K (+ T·N) and N·(T_a·L + T).

``--quick`` runs everything on 4 slices with 10 network evaluations: a smoke test of the pipeline, not results.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from ddip.checkpoint import Checkpointer
from ddip.data import dev_volume_path, prepare_volume, read_volume
from ddip.devices import resolve_device
from ddip.errors import DdipError
from ddip.io import atomic_path, pyplot, save_figure, write_json
from ddip.metrics import evaluate_volume
from ddip.priors import default_prior, load_prior
from ddip.methods import method_spec, names
from ddip.reconstruct import RESOLVED_FIELDS, ReconstructConfig, reconstruct, resolved_settings, with_preset
from ddip.signals import StopRequest
from ddip.tasks import TaskConfig, paper_views, simulate

TABLES = ("table2", "table1", "table3", "table4", "scaling")
QUICK = {"n_slices": 4, "n_steps": 10, "dps_slices": 1, "scaling_sizes": (2, 4)}  # --quick: a smoke test's sizes


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    prior: str | None = None  # None: per task, the shipped prior for it (registry.default_prior)
    size: int = 64
    n_slices: int = 16
    n_steps: int | None = None
    dps_slices: int = 2
    seed: int = 0
    quick: bool = False
    scaling_steps: int | None = None  # None: n_steps
    table2_settings: tuple[str, ...] = ("sv-ct-60", "sv-ct-paper", "mri3d", "csmri")
    noise_mix: str | None = None  # None: the preset's, else each step's own
    preset: str | None = None  # named sampling settings (ddip.reconstruct.PRESETS) under the options given
    scaling_sizes: tuple[int, ...] = (8, 16, 32, 64)
    methods: tuple[str, ...] = names()  # table 2's methods (a subset for a costly size)
    # CG steps of DDS's data consistency, in DDS and the adapted methods on it (None: DDS's default; the paper's: 5);
    # DDNM and DiffusionMBIR keep their own (30, 5), so that --cg-iters 5 gives every table as the paper's settings do
    cg_iters: int | None = None
    lr: float | None = None  # the adapted methods' learning rate (None: Table 5 / ddip.methods.LR_TUNED)
    device: str = "auto"  # where every reconstruction runs (ddip.devices.resolve_device)
    precision: str = ReconstructConfig.precision  # the network's speed options (ddip.priors.prior.NetworkSpeed)
    channels_last: bool = ReconstructConfig.channels_last
    compile: bool = ReconstructConfig.compile

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in names()]
        if unknown or not self.methods:
            raise DdipError(f"benchmark: unknown or no method(s) {unknown}; choose from {', '.join(names())}")
        # a bad value fails before any run
        ReconstructConfig(**with_preset(self.preset, "d3ip", {"method": "d3ip", "cg_iters": self.cg_iters,
                                                              "lr": self.lr, "precision": self.precision,
                                                              "noise_mix": self.noise_mix}))
        resolve_device(self.device)
        counts = {"n_slices": self.n_slices, "dps_slices": self.dps_slices, "size": self.size // 8,
                  "n_steps": 1 if self.n_steps is None else self.n_steps,
                  "scaling_steps": 1 if self.scaling_steps is None else self.scaling_steps}
        bad = [k for k, v in counts.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1]
        if bad or not self.scaling_sizes or min(self.scaling_sizes) < 1:
            raise DdipError(f"benchmark: need size >= 8 and n_slices, dps_slices, n_steps, scaling_steps and every "
                            f"scaling size >= 1 (got {', '.join(f'{k}' for k in bad) or 'scaling_sizes'} out of range)")

    @classmethod
    def quick_config(cls, **given) -> "BenchConfig":
        """``--quick``: the smoke-test sizes, except where a setting is given explicitly."""
        return cls(**{**QUICK, **given, "quick": True})

    def command(self) -> str:
        """The ``ddip benchmark`` command line that gives this configuration (each flag is named after its field)."""
        base = BenchConfig.quick_config() if self.quick else BenchConfig()
        flags = ""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in ("quick", "seed") or value == getattr(base, f.name):  # --quick leads; the seed has no flag
                continue
            text = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
            flags += f" --{f.name.replace('_', '-')}" + ("" if value is True else f" {text}")
        return "ddip benchmark" + (" --quick" if self.quick else "") + flags


def _volume(task: str, cfg: BenchConfig, n_slices: int):
    name, modality = ("chest-ct", "ct") if task == "sv-ct" else ("mni-t1", "mri")
    prepared = prepare_volume(read_volume(dev_volume_path(name)), modality=modality, size=cfg.size,
                              n_slices=n_slices)
    return prepared.slices, prepared.record


def _measure(task: str, cfg: BenchConfig, n_slices: int, views: int = 60):
    volume, record = _volume(task, cfg, n_slices)
    return simulate(volume, TaskConfig(task=task, size=cfg.size, views=views, seed=cfg.seed), record=record)


def _rconfig(cfg: BenchConfig, **settings) -> ReconstructConfig:
    """A reconstruction's settings with the benchmark's seed, noise mixing and, where they apply, its CG steps and
    learning rate."""
    spec = method_spec(settings["method"])
    settings = with_preset(cfg.preset, settings["method"], settings)
    if cfg.cg_iters is not None and spec.on_dds:
        settings["cg_iters"] = cfg.cg_iters
    if cfg.lr is not None and spec.adapted:
        settings["lr"] = cfg.lr
    if spec.step is not None:  # a method with a network
        settings.update(precision=cfg.precision, channels_last=cfg.channels_last, compile=cfg.compile)
    if spec.mixes_noise and cfg.noise_mix is not None:
        settings["noise_mix"] = cfg.noise_mix
    return ReconstructConfig(seed=cfg.seed, **settings)


def table2_settings(size: int) -> dict[str, tuple[str, int]]:
    """Table 2's settings by name: (task, CT views; the MRI tasks ignore the views) at ``size`` px."""
    return {"sv-ct-60": ("sv-ct", 60), "sv-ct-paper": ("sv-ct", paper_views(size)), "mri3d": ("mri3d", 60),
            "csmri": ("csmri", 60)}


def table2(cfg: BenchConfig, run: _Run) -> list[dict]:
    rows = []
    known = table2_settings(cfg.size)
    unknown = [k for k in cfg.table2_settings if k not in known]
    if unknown:
        raise DdipError(f"unknown table 2 setting(s) {unknown}; choose from {', '.join(known)}")
    settings = [known[k] for k in cfg.table2_settings]
    for task, views in settings:
        m_full = _measure(task, cfg, cfg.n_slices, views)
        m_dps = _measure(task, cfg, cfg.dps_slices, views)
        for method in cfg.methods:
            if task == "csmri" and method_spec(method).dc == "mbir":
                continue  # the paper runs no MBIR variant on CS-MRI (no 3D coupling in its knee data)
            m = m_dps if method == "dps" else m_full
            # DPS keeps its 1000 steps outside --quick; ADMM-TV takes none
            steps = None if method == "dps" and not cfg.quick or method_spec(method).step is None else cfg.n_steps
            rows.append(run.row(m, _rconfig(cfg, method=method, n_steps=steps), task,
                                {"task": task, "views": views if task == "sv-ct" else None,
                                 "prior": run.prior_name(task)}))
    return rows


def table1(cfg: BenchConfig, run: _Run) -> list[dict]:
    m = _measure("sv-ct", cfg, cfg.n_slices, paper_views(cfg.size))
    return [run.row(m, _rconfig(cfg, method="ddip", n_steps=cfg.n_steps, loss_cg_iters=k), "sv-ct",
                    {"table": "1", "loss_cg_iters": k}) for k in (1, 3, 5)]


def table3(cfg: BenchConfig, run: _Run) -> list[dict]:
    m = _measure("sv-ct", cfg, cfg.n_slices, paper_views(cfg.size))
    # the baseline adapts at every step (ζ 0); the horizon is the method's window (the preset's, else AdaptConfig's)
    variants = [("baseline", 0, "noise"), ("+ horizon", None, "noise"), ("+ init", None, "slerp")]
    return [run.row(m, _rconfig(cfg, method="d3ip", n_steps=cfg.n_steps, zeta=z, init=init), "sv-ct",
                    {"table": "3", "variant": name}) for name, z, init in variants]


def table4(cfg: BenchConfig, run: _Run) -> list[dict]:
    m = _measure("sv-ct", cfg, max(cfg.n_slices, 12), paper_views(cfg.size))
    return [run.row(m, _rconfig(cfg, method="d3ip", n_steps=cfg.n_steps, k=k), "sv-ct", {"table": "4", "K": k})
            for k in (1, 2, 3, 6, 12)]


def scaling(cfg: BenchConfig, run: _Run) -> list[dict]:
    rows = []
    steps = cfg.scaling_steps or cfg.n_steps
    for n in cfg.scaling_sizes:
        m = _measure("sv-ct", cfg, n, paper_views(cfg.size))
        pair = {}
        for method in ("ddip", "d3ip"):
            row = run.row(m, _rconfig(cfg, method=method, n_steps=steps), "sv-ct",
                       {"table": "scaling", "N": n})
            # network-pass count in forward-equivalents: a forward+backward costs about 3 forwards
            row["pass_count"] = 3 * (row["adapt_passes"] or 0) + (row["forward_passes"] or 0)
            pair[method] = row
            rows.append(row)
        count_ratio = pair["d3ip"]["pass_count"] / pair["ddip"]["pass_count"]
        wall_ratio = pair["d3ip"]["wall_time_s"] / pair["ddip"]["wall_time_s"]
        pair["d3ip"].update(count_ratio_vs_ddip=count_ratio, wall_ratio_vs_ddip=wall_ratio)
    return rows


def network_share(breakdown: dict | None) -> float | None:
    """Fraction of a run's wall time spent in the network (forward and backward)."""
    if not breakdown:
        return None
    total = sum(breakdown.values())
    return (breakdown.get("network_forward", 0.0) + breakdown.get("network_backward", 0.0)) / total if total else None


def _markdown(name: str, rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in ("psnr_volume", "time_breakdown_s")))
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else ("–" if v is None else str(v))  # noqa: E731
    lines = [f"### {name}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _scaling_plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method in ("ddip", "d3ip"):
        rs = [r for r in rows if r["method"] == method]
        ns = [r["N"] for r in rs]
        a.plot(ns, [r["wall_time_s"] for r in rs], "o-", label=f"{method} wall time")
        a.plot(ns, [(r["adapt_passes"] * 3 + r["forward_passes"]) * rs[0]["wall_time_s"] /
                    (rs[0]["adapt_passes"] * 3 + rs[0]["forward_passes"]) for r in rs], "--",
               label=f"{method} pass count (scaled)")
        b.plot(ns, [r["peak_memory_mb"] for r in rs], "o-", label=method)
    a.set_xlabel("slices N"), a.set_ylabel("s"), a.set_xscale("log", base=2), a.set_yscale("log"), a.legend(fontsize=7)
    b.set_xlabel("slices N"), b.set_ylabel("peak memory (MB)"), b.set_xscale("log", base=2), b.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def _non_default(config) -> dict:
    """The fields of a config dataclass that differ from their defaults (every field without one)."""
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if getattr(config, f.name) != f.default}


class _Run:
    """One benchmark run: the prior of each task, loaded once (``cfg.prior`` for every task, or the shipped default
    per task), and the rows measured so far.

    Each reconstruction's row is appended to ``OUT/rows<suffix>.jsonl`` when it finishes, keyed by everything that
    determines it (label, reconstruction settings, task, slices, prior); a reconstruction in progress checkpoints to
    ``OUT/checkpoints<suffix>/<key>.pt``. With ``resume`` the rows already there are kept and a stopped
    reconstruction continues from its checkpoint, so a run of hours survives being stopped; without it both start
    empty.
    """

    def __init__(self, cfg: BenchConfig, out: Path, suffix: str, *, resume: bool, stop: StopRequest | None = None):
        self.cfg, self._loaded, self.stop = cfg, {}, stop
        self.rows_path, self.checkpoints = out / f"rows{suffix}.jsonl", out / f"checkpoints{suffix}"
        if not resume:
            self.rows_path.unlink(missing_ok=True)
            shutil.rmtree(self.checkpoints, ignore_errors=True)
        lines = self.rows_path.read_text().splitlines() if self.rows_path.exists() else []
        self.done = {r["key"]: r["row"] for r in map(json.loads, filter(None, lines))}

    def prior_name(self, task: str) -> str:
        return self.cfg.prior or default_prior(task, self.cfg.size)

    def prior(self, task: str):
        name = self.prior_name(task)
        if name not in self._loaded:
            self._loaded[name] = load_prior(name)
        return self._loaded[name]

    def settings(self, m, rcfg: ReconstructConfig, task: str, label: dict) -> dict:
        """What determines a row, and so its key: the settings that ran (``resolved_settings``) and the options given
        away from their defaults. A config field added later with a default that keeps the old behaviour leaves the
        keys of the rows and checkpoints already made unchanged, so a run of hours survives an upgrade."""
        prior = None if method_spec(rcfg.method).step is None else self.prior_name(task)
        given = {k: v for k, v in _non_default(rcfg).items() if k not in RESOLVED_FIELDS}
        return {"label": label, "reconstruct": given, "resolved": resolved_settings(rcfg, m.config, m.y.shape[0]),
                "task": _non_default(m.config), "slices": int(m.y.shape[0]), "prior": prior,
                "device": self.cfg.device}

    def row(self, m, rcfg: ReconstructConfig, task: str, label: dict) -> dict:
        """``rcfg`` run on ``m`` (or the row kept from an earlier run with ``resume``), its metrics and costs."""
        settings = self.settings(m, rcfg, task, label)
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:20]
        prior = settings["prior"]
        if key in self.done:
            row = self.done[key]
        else:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            ckpt = Checkpointer(self.checkpoints / f"{key}.pt", settings, stop=self.stop)
            res = reconstruct(m, rcfg, None if prior is None else self.prior(task), device=self.cfg.device,
                              checkpointer=ckpt)
            metrics = evaluate_volume(res.volume, m.ground_truth)
            row = {**label, "method": rcfg.method, "slices": int(m.y.shape[0]), "psnr": metrics["psnr"],
                   "ssim": metrics["ssim"], "lpips": metrics["lpips"], "psnr_volume": metrics["psnr_volume"],
                   "wall_time_s": res.wall_time_s, "peak_memory_mb": res.peak_memory_mb,
                   "forward_passes": res.report.get("network_forward_passes"),
                   "adapt_passes": res.report.get("network_adapt_passes"),
                   "network_share": network_share(res.report.get("time_breakdown_s")),
                   "time_breakdown_s": res.report.get("time_breakdown_s")}
            with self.rows_path.open("a") as fh:
                fh.write(json.dumps({"key": key, "row": row, "settings": settings}, default=str) + "\n")
            ckpt.remove()
            self.done[key] = row
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        return dict(row)


def run_benchmark(cfg: BenchConfig, tables: tuple[str, ...] = TABLES, out: str | os.PathLike = "benchmarks/results",
                  *, resume: bool = False, stop: StopRequest | None = None) -> dict:
    """Run ``tables``, writing each one's JSON and the summary to ``out``; every row is kept as it finishes, and
    ``resume`` continues a stopped run (:class:`_Run`). ``stop`` (a signal caught) checkpoints the reconstruction in
    progress and ends the run with :class:`~ddip.signals.Interrupted`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if cfg.quick else ""
    run = _Run(cfg, out, suffix, resume=resume, stop=stop)
    header = {"command": cfg.command() + ("" if tables == TABLES else f" --tables {','.join(tables)}"),
              "date": date.today().isoformat(), "config": dataclasses.asdict(cfg),
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "device": str(resolve_device(cfg.device))}}
    results = {}
    fns = {"table2": table2, "table1": table1, "table3": table3, "table4": table4, "scaling": scaling}
    for name in tables:
        t0 = time.perf_counter()
        rows = fns[name](cfg, run)
        results[name] = rows
        write_json(out / f"{name}{suffix}.json", {**header, "elapsed_s": time.perf_counter() - t0, "rows": rows})
        if name == "scaling":
            _scaling_plot(rows, out / f"scaling{suffix}.png")
    _write_summary(out, suffix)
    return results


def _write_summary(out: Path, suffix: str) -> None:
    """``results.md``: every table recorded in ``out`` (this run's and earlier ones'), each with its own command,
    date and machine, so a run of one table does not drop the others from the summary."""
    md = ["# ddip benchmark", ""]
    for name in TABLES:
        path = out / f"{name}{suffix}.json"
        if path.exists():
            rec = json.loads(path.read_text())
            md += [f"Command: `{rec['command']}` ({rec['date']}, {rec['elapsed_s']:.0f} s)", "",
                   f"Machine: {rec['machine']}", "", _markdown(name, rec["rows"])]
    with atomic_path(out / f"results{suffix}.md") as tmp:
        tmp.write_text("\n".join(md))
