"""Export a `ddip train-prior` run as a shipped prior: weights, config, training log, gate curve, sample grid.

    python scripts/ship_prior.py RUN_DIR NAME [--command "the train-prior command that made RUN_DIR"]
                                 [--continues]

``--continues``: RUN_DIR was warm-started (``--init-weights``) from the shipped NAME itself, whose full training state
was lost; its loss log and gate curve are then continued (images counted on from the shipped prior's) instead of
replaced.

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

from ddip.evaluation import _plot_curve, gate_curve, quality_gate, sample_grid  # noqa: E402
from ddip.priors import load_prior  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("name")
    parser.add_argument("--command", default="")
    parser.add_argument("--continues", action="store_true")
    args = parser.parse_args()
    run, dest = Path(args.run), ROOT / "ddip" / "priors" / "weights"
    dest.mkdir(parents=True, exist_ok=True)
    previous = json.loads((dest / f"{args.name}.json").read_text()) if args.continues else None
    offset = int(previous["images_seen"]) if previous else 0
    old_steps = 0
    loss_lines = (run / "loss_log.csv").read_text().splitlines()
    if previous:
        old = (dest / f"{args.name}-loss.csv").read_text().splitlines()
        old_steps = int(old[-1].split(",")[0])
        shifted = []
        for line in loss_lines[1:]:
            step, images, *rest = line.split(",")
            shifted.append(",".join([str(int(step) + old_steps), str(int(images) + offset), *rest]))
        loss_lines = old + shifted
    curve = gate_curve(run)
    if previous:
        curve = json.loads((dest / f"{args.name}-gate.json").read_text()) + [
            {**row, "images": row["images"] + offset} for row in curve]
    shutil.copyfile(run / "ema.safetensors", dest / f"{args.name}.safetensors")
    (dest / f"{args.name}-loss.csv").write_text("\n".join(loss_lines) + "\n")
    if curve:
        _plot_curve(curve, dest / f"{args.name}-gate.png")
        (dest / f"{args.name}-gate.json").write_text(json.dumps(curve, indent=1) + "\n")
    prior = load_prior(dest / f"{args.name}.safetensors")
    gate = quality_gate(prior)
    sample_grid(prior, dest / f"{args.name}.png", n=16)
    train_cfg = json.loads((run / "config.json").read_text())
    train_cfg["out"] = "RUN"  # no machine paths in shipped records
    if train_cfg.get("init_weights"):
        train_cfg["init_weights"] = Path(train_cfg["init_weights"]).name
    images = int(loss_lines[-1].split(",")[1])
    if previous:
        train_cfg["continues"] = {"from": f"{args.name} as shipped on {previous['date']}",
                                  "images_before": offset, "command_before": previous["command"]}
    record = {"name": args.name, "date": date.today().isoformat(), "command": args.command,
              "training": train_cfg, "images_seen": images,
              "parameters": sum(p.numel() for p in prior.net.parameters()), "gate": gate,
              "status": "passes the quality gate" if gate["passed"] else "interim: does not pass the quality gate"}
    (dest / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("images_seen", "parameters", "status")}), json.dumps(gate))


if __name__ == "__main__":
    main()
