"""Training levers of a prior compared per image and per CPU-hour: one gate curve per lever, on one figure.

    python benchmarks/prior_levers.py LABEL=RUN [LABEL=RUN ...] [--n-images 8] [--threads 1] [--out NAME]

Each RUN is a ``ddip train-prior`` folder; runs that differ in one setting (``--min-snr-gamma``,
``--pure-noise-density``, ...) from the same seed are that setting's lever. Every EMA snapshot of every run, main EMA
and each ``--ema-lengths`` power-function EMA, is scored with the quality gate on the validation phantoms
(``ddip.evaluation.VALIDATION_SEED``: training settings are chosen there, the gate's own phantoms stay held out) by
``ddip.evaluation.gate_curve``, which keeps its rows in the run folder, so a rerun scores only new snapshots. The CPU
time of a snapshot is the run's elapsed time at that image count (``loss_log.csv``). Writes
``benchmarks/results/NAME.json`` (every point) and ``NAME.png`` (margin against images seen and against hours).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from ddip.devices import DEVICE_HELP
from ddip.evaluation import GATE_MARGIN_DB, VALIDATION_SEED, gate_curve
from ddip.io import pyplot, save_figure, write_json

RESULTS = Path(__file__).parent / "results"


def loss_log(run: Path) -> list[dict]:
    """The run's ``loss_log.csv`` rows (step, images, elapsed seconds), in order."""
    with open(run / "loss_log.csv") as fh:
        return [{"step": int(r["step"]), "images": int(r["images"]), "elapsed_s": float(r["elapsed_s"])}
                for r in csv.DictReader(fh)]


def elapsed_hours(log: list[dict], images: int) -> float:
    """Hours the run had trained when it had seen ``images`` (the log's first line at or past it; NaN before the
    log's first line)."""
    if not log:
        return float("nan")
    i = min(int(np.searchsorted(np.array([r["images"] for r in log]), images)), len(log) - 1)
    return log[i]["elapsed_s"] / 3600


def lever_points(label: str, run: Path, n_images: int, device: str = "cpu") -> list[dict]:
    """Gate points on the validation phantoms of every EMA the run kept: the main one (``ema`` is its rate) and each
    power-function EMA (``ema`` is ``len<σ_rel>``)."""
    config = json.loads((run / "config.json").read_text())
    log = loss_log(run)
    points = []
    for length in (None, *config.get("ema_lengths", ())):
        for row in gate_curve(run, n_images=n_images, ema_length=length, seed=VALIDATION_SEED,
                              device=device):
            points.append({"lever": label, "ema": f"{config['ema_decay']:g}" if length is None else f"len{length:g}",
                           "images": row["images"], "hours": round(elapsed_hours(log, row["images"]), 3),
                           "margin_db": round(row["margin_db"], 3), "dds_psnr": round(row["dds_psnr"], 3),
                           "paper_margin_db": round(row.get("paper_margin_db", float("nan")), 3)})
    return points


def plot(points: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    curves = sorted({(p["lever"], p["ema"]) for p in points})
    for lever, ema in curves:
        pts = sorted((p for p in points if (p["lever"], p["ema"]) == (lever, ema)), key=lambda p: p["images"])
        for ax, key, scale in ((axes[0], "images", 1e-3), (axes[1], "hours", 1)):
            ax.plot([p[key] * scale for p in pts], [p["margin_db"] for p in pts], "o-", ms=3,
                    label=f"{lever}, EMA {ema}")
    axes[0].set_xlabel("training images seen (thousands)")
    axes[1].set_xlabel("CPU hours (wall time of the run)")
    axes[0].set_ylabel("gate margin on validation phantoms (dB)")
    for ax in axes:
        ax.axhline(GATE_MARGIN_DB, color="grey", ls=":", lw=1)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="LABEL=RUN: a lever's name and its train-prior folder")
    parser.add_argument("--n-images", type=int, default=8, help="validation phantoms per gate point")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--device", default="cpu", help=f"where the gate runs: {DEVICE_HELP}")
    parser.add_argument("--out", default="prior-levers", help="name of the JSON and figure in benchmarks/results")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = dict(item.split("=", 1) for item in args.runs)
    points = [p for label, run in runs.items()
              for p in lever_points(label, Path(run).expanduser(), args.n_images, args.device)]
    for p in points:
        print(json.dumps(p))
    write_json(RESULTS / f"{args.out}.json", {"runs": runs, "seed": VALIDATION_SEED, "points": points})
    plot(points, RESULTS / f"{args.out}.png")


if __name__ == "__main__":
    main()
