#!/usr/bin/env bash
# Continue training the three shipped priors on one GPU, side by side, for SECS seconds of training each.
#
#   SECS=470 OUT=/some/dir bash scripts/train_priors_gpu.sh
#
# Each run warm-starts from the shipped weights (fresh AdamW, new phantom seed) and trains with `ddip train-prior
# --device cuda` (phantoms rasterised on the GPU, bf16 autocast, fused AdamW) plus FAST (default: the random
# streams on the GPU, docs/gpu.md); a run that fails within its first minute with FAST is started again
# without it. The three processes share the GPU, which also hides each one's kernel-launch gaps. What comes back in
# OUT: each run's final EMA weights, with MIDPOINT=1 the snapshot nearest half-way (for the gate curve), and logs.tar
# (loss logs, configs, stdout). Nothing is downloaded: where diffusers is missing, wheels in .whl/ are installed to
# /tmp/site first. The three final weight files come to ~43 MB (the lent device returns 64 MiB per call).
set -u
SECS=${SECS:-470}
DEVICE=${DEVICE:-cuda}  # cpu: a dry run of this script on a machine without a GPU
OUT=${OUT:-/tmp/ddip-gpu-out}
FAST=${FAST---rng device}
MIDPOINT=${MIDPOINT:-0}
RUNS=${RUNS:-/tmp/ddip-runs}
mkdir -p "$OUT" "$RUNS"
source scripts/gpu/env.sh || exit 1
HOURS=$("$PY" -c "print($SECS / 3600)")
COMMON="--channels 32 --mult 1,2,2,4 --bf16 --device $DEVICE --threads 4 --max-images 1000000000 --max-hours $HOURS
        --checkpoint-minutes 3 --warmup-steps 100 --lr 2e-4"
W=ddip/priors/weights
train() {  # name, then flags
    local name=$1; shift
    local t0=$SECONDS rc
    timeout -s TERM $((SECS + 120)) "$PY" -m ddip train-prior --out "$RUNS/$name" $COMMON $FAST "$@" \
        > "$RUNS/$name.log" 2>&1
    rc=$?
    if [ $rc -ne 0 ] && [ -n "$FAST" ] && [ $((SECONDS - t0)) -lt 60 ]; then
        echo "$name failed with FAST ($FAST), exit $rc; again without it" >> "$RUNS/$name.log"
        rm -rf "$RUNS/$name"
        COMMON=${COMMON/--max-hours $HOURS/--max-hours $("$PY" -c "print(max(0.01, $SECS - 60) / 3600)")}
        timeout -s TERM $((SECS + 60)) "$PY" -m ddip train-prior --out "$RUNS/$name" $COMMON "$@" \
            >> "$RUNS/$name.log" 2>&1
        rc=$?
    fi
    echo "$name exited with $rc" >> "$RUNS/$name.log"
}
train ellipses-64 --size 64 --attn 16 --batch 256 --seed 2 --snapshot-every 200000 --init-weights $W/ellipses-64.safetensors &
train ellipses-128 --size 128 --attn 32 --batch 128 --seed 4 --snapshot-every 50000 --init-weights $W/ellipses-128.safetensors &
train ellipses-complex-64 --size 64 --attn 16 --batch 256 --seed 3 --data ellipses-complex --snapshot-every 200000 \
    --init-weights $W/ellipses-complex-64.safetensors &
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null; tail -n 2 "$RUNS"/*/loss_log.csv
wait
MIDPOINT=$MIDPOINT "$PY" - "$RUNS" "$OUT" <<'PY'
import os, shutil, sys
from pathlib import Path
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
midpoint = os.environ.get("MIDPOINT", "0") == "1"
for run in sorted(p for p in runs.iterdir() if p.is_dir()):
    if (run / "ema.safetensors").exists():
        shutil.copy(run / "ema.safetensors", out / f"{run.name}.safetensors")
    snaps = sorted((run / "snapshots").glob("ema_*.safetensors"))
    lines = (run / "loss_log.csv").read_text().strip().splitlines() if (run / "loss_log.csv").exists() else []
    if midpoint and snaps and len(lines) > 1:
        total = int(lines[-1].split(",")[1])
        mid = min(snaps, key=lambda p: abs(int(p.stem.split("_")[1]) - total / 2))
        shutil.copy(mid, out / f"{run.name}.{mid.stem}.safetensors")
    print(run.name, lines[-1] if lines else "no log", len(snaps), "snapshots")
PY
tar -C "$RUNS" -cf "$OUT/logs.tar" --exclude='*.safetensors' --exclude='*.pt' .
ls -la "$OUT"
