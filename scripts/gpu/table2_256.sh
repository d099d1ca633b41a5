#!/usr/bin/env bash
# The paper's Table 2 at 256 px on one GPU (issue #17): SV-CT at 60 views and 3D MRI ×8 on 256² slabs of the
# development volumes, N slices, ADMM-TV, DDS, DiffusionMBIR, D3IP and D3IP-mbir, then DDIP and SCD on a few slices
# (their cost is per slice); PSNR / SSIM / LPIPS, wall time and peak memory per row. One call of the lent machine:
#
#   python scripts/gpu_assets.py                                   # here, once: the volumes and LPIPS weights
#   OUT=/some/dir bash scripts/gpu/table2_256.sh                   # on the GPU, carrying .whl and .gpu-assets
#   DEVICE=cpu TINY=1 OUT=/tmp/x bash scripts/gpu/table2_256.sh    # the same steps at toy sizes on a CPU
#
# PRIOR: a 256 px prior file. Default: ddip/priors/weights/ellipses-256.safetensors; where it does not exist yet, one
# is warm-started from ellipses-128 (the network is convolutional; attention moves from 32 to 64 px, the same level)
# and trained for TRAIN_SECS seconds first, and its EMA weights come back in OUT for shipping. Every row is printed
# as a JSON line when it is done (OUT/table2.log), so a run cut short still returns the rows it made.
set -u
T0=$SECONDS
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
TOTAL=${TOTAL:-530}          # seconds for the whole call
TRAIN_SECS=${TRAIN_SECS:-180}
N=${N:-32}
SIZE=256 STEPS=50 FEW=2 ATTN=64 BATCH=64
if [ "${TINY:-0}" = 1 ]; then SIZE=64 STEPS=3 N=2 FEW=1 ATTN=16 BATCH=2; fi
mkdir -p "$OUT"
source scripts/gpu/env.sh || exit 1
PRIOR=${PRIOR:-ddip/priors/weights/ellipses-$SIZE.safetensors}
if [ ! -f "$PRIOR" ]; then
    HOURS=$("$PY" -c "print($TRAIN_SECS / 3600)")
    "$PY" -m ddip train-prior --out /tmp/ddip-256 --size "$SIZE" --attn "$ATTN" --channels 32 --mult 1,2,2,4 \
        --init-weights ddip/priors/weights/ellipses-128.safetensors --device "$DEVICE" --bf16 --batch "$BATCH" \
        --lr 2e-4 --warmup-steps 100 --seed 5 --max-hours "$HOURS" --snapshot-every 0 --checkpoint-minutes 2 \
        > "$OUT/train.log" 2>&1
    echo "warm start exited with $? after $((SECONDS - T0)) s"; tail -n 2 /tmp/ddip-256/loss_log.csv
    cp /tmp/ddip-256/ema.safetensors "$OUT/ellipses-$SIZE.safetensors" || exit 1
    cp /tmp/ddip-256/loss_log.csv /tmp/ddip-256/config.json "$OUT/"
    PRIOR=$OUT/ellipses-$SIZE.safetensors
fi
COMMON="--size $SIZE --steps $STEPS --table2 sv-ct-60,mri3d --tables table2 --prior $PRIOR --device $DEVICE"
LEFT=$((TOTAL - (SECONDS - T0) - 20))
timeout -s TERM "$LEFT" "$PY" -m ddip benchmark $COMMON --n-slices "$N" \
    --methods admm-tv,dds,mbir,d3ip,d3ip-mbir --out "$OUT/table2" > "$OUT/table2.log" 2>&1
echo "table 2 exited with $? after $((SECONDS - T0)) s"
LEFT=$((TOTAL - (SECONDS - T0) - 10))
[ "$LEFT" -gt 30 ] && timeout -s TERM "$LEFT" "$PY" -m ddip benchmark $COMMON --n-slices "$FEW" \
    --methods ddip,scd --out "$OUT/table2-per-slice" > "$OUT/table2-per-slice.log" 2>&1
echo "per-slice rows exited with $? after $((SECONDS - T0)) s"
grep -h '^{' "$OUT"/table2*.log | cut -c1-200
