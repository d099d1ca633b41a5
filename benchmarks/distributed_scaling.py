"""D3IP on 1 and 2 processes (torchrun, gloo, CPU): wall time per sampling step and communication per step.

    python benchmarks/distributed_scaling.py [--slices 8,16,32] [--steps 10] [--prior ellipses-64]

For each volume size N (chest-CT fixture, 64 px, the paper's angular undersampling) it runs
``torchrun --nproc-per-node P -m ddip reconstruct ... --method d3ip`` for P = 1 and P = 2 with one thread per process,
and one process with 2 threads as the single-process reference on the same cores (``--configs``). From each run's
``metrics.json``:
wall time per step, and (P = 2) the bytes rank 0 put into collectives by kind (``report.communication_bytes``:
LoRA gradient, the K adaptation slices, CG inner products, the final gather), divided by the steps, beside the
volume's own size. Writes ``benchmarks/results/distributed.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", default="8,16,32")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--prior", default="ellipses-64")
    parser.add_argument("--configs", default="1x2,1x1,2x1", help="processes x threads per process, comma-separated")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "distributed.json"))
    args = parser.parse_args()
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in map(int, args.slices.split(",")):
            meas = Path(tmp) / f"ct{n}.safetensors"
            _run([sys.executable, "-m", "ddip", "simulate", "--task", "sv-ct", "--volume", "fixture:chest-ct",
                  "--n-slices", str(n), "--views", "15", "--out", str(meas)], 2)
            for procs, threads in (tuple(map(int, c.split("x"))) for c in args.configs.split(",")):
                out = Path(tmp) / f"n{n}p{procs}t{threads}"
                _run([torchrun, "--standalone", "--nproc-per-node", str(procs), "-m", "ddip", "reconstruct",
                      str(meas), "--method", "d3ip", "--prior", args.prior, "--steps", str(args.steps),
                      "--out", str(out), "--quiet"], threads)
                metrics = json.loads((out / "metrics.json").read_text())
                comm = metrics["report"].get("communication_bytes", {})
                row = {"N": n, "processes": procs, "threads_per_process": threads,
                       "wall_time_s": metrics["wall_time_s"], "s_per_step": metrics["wall_time_s"] / args.steps,
                       "psnr": metrics["psnr"], "volume_bytes": n * 64 * 64 * 4,
                       "comm_bytes_per_step": {k: v / args.steps for k, v in comm.items()},
                       "comm_bytes_per_step_total": sum(comm.values()) / args.steps,
                       "peak_memory_mb": metrics["peak_memory_mb"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    record = {"command": "python benchmarks/distributed_scaling.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"), "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "setting": f"chest-ct fixture, 64 px, 15 views, d3ip (K 6, L 10), {args.steps} steps, gloo", "rows": rows}
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    lines = ["| N | processes × threads | s/step | PSNR | volume (KiB) | sent per step by rank 0 (KiB) | of which LoRA "
             "gradient |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["comm_bytes_per_step"]
        lines.append(f"| {r['N']} | {r['processes']} × {r['threads_per_process']} | {r['s_per_step']:.2f} | "
                     f"{r['psnr']:.2f} | {r['volume_bytes'] / 1024:.0f} | "
                     f"{r['comm_bytes_per_step_total'] / 1024:.0f} | "
                     f"{c.get('lora_gradient', 0) / 1024:.0f} |")
    Path(args.out).with_suffix(".md").write_text(
        f"# Distributed D3IP scaling ({record['date']})\n\nCommand: `{record['command']}`\n\n{record['setting']}; "
        f"machine {record['machine']}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
