"""Export a `ddip train-prior` run as a shipped prior: weights, config, training log, gate curve, sample grid.

    python scripts/ship_prior.py RUN_DIR NAME [--command "the train-prior command that made RUN_DIR"]

Writes ddip/priors/weights/NAME.{safetensors,json,png} plus NAME-loss.csv, NAME-gate.png and NAME-gate.json, and
evaluates the quality gate on the final EMA weights (recorded in NAME.json whether it passes or not).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ddip.priors import load_prior  # noqa: E402
from ddip.priors.gate import gate_curve, quality_gate, sample_grid  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("name")
    parser.add_argument("--command", default="")
    args = parser.parse_args()
    run, dest = Path(args.run), ROOT / "ddip" / "priors" / "weights"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "ema.safetensors", dest / f"{args.name}.safetensors")
    shutil.copyfile(run / "loss_log.csv", dest / f"{args.name}-loss.csv")
    curve = gate_curve(run)
    if curve:
        shutil.copyfile(run / "gate_curve.png", dest / f"{args.name}-gate.png")
        (dest / f"{args.name}-gate.json").write_text(json.dumps(curve, indent=1) + "\n")
    prior = load_prior(dest / f"{args.name}.safetensors")
    gate = quality_gate(prior)
    sample_grid(prior, dest / f"{args.name}.png", n=16)
    train_cfg = json.loads((run / "config.json").read_text())
    train_cfg["out"] = "RUN"  # no machine paths in shipped records
    if train_cfg.get("init_weights"):
        train_cfg["init_weights"] = Path(train_cfg["init_weights"]).name
    images = int(open(run / "loss_log.csv").read().splitlines()[-1].split(",")[1])
    record = {"name": args.name, "date": date.today().isoformat(), "command": args.command,
              "training": train_cfg, "images_seen": images,
              "parameters": sum(p.numel() for p in prior.net.parameters()), "gate": gate,
              "status": "passes the quality gate" if gate["passed"] else "interim: does not pass the quality gate"}
    (dest / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("images_seen", "parameters", "status")}), json.dumps(gate))


if __name__ == "__main__":
    main()
