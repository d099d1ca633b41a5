"""Two ddip runs on one machine: how much each slows the other, with OpenMP threads that sleep or spin while waiting.

    python benchmarks/threads.py [--steps 10] [--configs passive,active,passive-x2,active-x2,threads1-x2]

Each configuration runs ``ddip demo --samples 1`` (ADMM-TV, DDS and D3IP on the demo's 8 chest-CT slices) alone or
as two copies at once, and times each process from start to exit:

- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, which the CLI sets when the machine is busy at start-up,
  torch's default thread count (one per core);
- ``active``: ``OMP_WAIT_POLICY=ACTIVE``, threads that spin while waiting (what torch alone does on this runtime);
- ``threads1``: ``--threads 1`` with ddip's default wait policy;
- ``spin``: threads that spin briefly (``GOMP_SPINCOUNT=10000``) and then sleep;
- ``-x2``: two copies started together.

Writes ``benchmarks/results/threads.json``: per configuration the wall time of each copy and its ratio to the same
policy alone (``passive`` for ``threads1``). Run it on an otherwise idle machine; the numbers are for its core count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
# name: (environment added, extra demo arguments, copies)
CONFIGS = {
    "passive": ({}, [], 1),
    "active": ({"OMP_WAIT_POLICY": "ACTIVE"}, [], 1),
    "passive-x2": ({}, [], 2),
    "active-x2": ({"OMP_WAIT_POLICY": "ACTIVE"}, [], 2),
    "threads1-x2": ({}, ["--threads", "1"], 2),
    # libgomp spins GOMP_SPINCOUNT iterations before sleeping (PASSIVE: 0, ACTIVE: 3e10): a short spin in between
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000"}, [], 1),
    "spin-x2": ({"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000"}, [], 2),
}
ALONE = {"passive": "passive", "active": "active", "passive-x2": "passive", "active-x2": "active",
         "threads1-x2": "passive", "spin": "spin", "spin-x2": "spin"}


def run_copies(env_extra: dict, extra: list[str], copies: int, steps: int, workdir: Path) -> list[float]:
    """Start ``copies`` demos at once; each one's wall time in seconds."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(env_extra)
    procs = []
    for i in range(copies):
        out = workdir / f"run{time.monotonic_ns()}-{i}"
        cmd = [sys.executable, "-m", "ddip", "demo", "--samples", "1", "--steps", str(steps), "--quiet",
               "--out", str(out), *extra]
        procs.append((time.perf_counter(), subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)))
    walls = []
    for start, proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"ddip demo failed ({proc.returncode}): {proc.args}")
        walls.append(time.perf_counter() - start)
    return walls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps of DDS and D3IP in each demo")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=str(RESULTS / "threads.json"))
    args = parser.parse_args()
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configuration(s) {unknown}: choose from {', '.join(CONFIGS)}")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            env_extra, extra, copies = CONFIGS[name]
            walls = run_copies(env_extra, extra, copies, args.steps, Path(tmp))
            rows[name] = {"wall_s": walls, "copies": copies, "environment": env_extra, "arguments": extra}
            alone = rows.get(ALONE[name])
            if alone is not None:
                rows[name]["slowdown_vs_alone"] = max(walls) / alone["wall_s"][0]
            print(json.dumps({name: rows[name]}), flush=True)
    Path(args.out).write_text(json.dumps({"date": date.today().isoformat(), "cpus": os.cpu_count(),
                                          "command": " ".join(sys.argv), "steps": args.steps, "rows": rows},
                                         indent=1) + "\n")


if __name__ == "__main__":
    main()
