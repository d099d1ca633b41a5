#!/usr/bin/env bash
# One call of a lent GPU for the measurements issues #26/#27 still lack, run side by side on the one GPU (the 3.6 M
# network is launch-bound there, so separate processes overlap well):
#   A. crop-training levers (64 px analogue of the 256 px question): plain, position channels, attention one level
#      coarser — trained from scratch on crops 16/32/64, then each EMA snapshot scored on the validation phantoms
#      (benchmarks/prior_levers.py);
#   B. the 2-slice 256 px rows: ADMM-TV, DDS, DDIP and SCD on the same 2 slices (3D MRI ×8 first, then SV-CT 60 views);
#   C. D3IP and D3IP-mbir from DDS's start T' = 150 (ζ 40) on the 8 slices of the CPU table (benchmarks/variants.py),
#      with the default DDS on the same slices to compare devices;
#   D. Table 2 at 256 px on N slices: ADMM-TV, DDS, MBIR, D3IP, D3IP-mbir.
# Every row is a JSON line in its run's rows.jsonl as soon as it finishes; what finished comes back in one archive.
#
#   python scripts/gpu_assets.py                                    # here, once (carry .gpu-assets and .whl)
#   OUT=/some/dir bash scripts/gpu/open_questions.sh               # on the GPU: about TOTAL seconds
#   DEVICE=cpu TINY=1 OUT=/tmp/x bash scripts/gpu/open_questions.sh # the same steps at toy sizes on a CPU
set -u
T0=$SECONDS
OUT=${OUT:?set OUT}
DEVICE=${DEVICE:-cuda}
TOTAL=${TOTAL:-540}          # seconds for the whole call
N=${N:-32}
SIZE=256 STEPS=50 FEW=2 MID=8 ARM_IMAGES=150000 ARM_SNAP=50000 GATE_IMAGES=8 THREADS=2
if [ "${TINY:-0}" = 1 ]; then SIZE=64 STEPS=3 N=2 FEW=1 MID=1 ARM_IMAGES=160 ARM_SNAP=80 GATE_IMAGES=1 THREADS=1; fi
W=${WORK:-/tmp/ddip-open}
mkdir -p "$OUT" "$W"
source scripts/gpu/env.sh || exit 1
export OMP_NUM_THREADS=$THREADS DDIP_CACHE=$W/cache
left() { echo $((TOTAL - (SECONDS - T0) - ${1:-0})); }

# A: the crop arms train side by side, then one process scores them
mkdir -p "$W/arms"
(
    for arm in plain position attn8; do
        extra=""; attn=16
        [ $arm = position ] && extra="--position-channels"
        [ $arm = attn8 ] && attn=8
        timeout -s TERM $(left 200) "$PY" -m ddip train-prior --out "$W/arms/$arm" --size 64 --channels 32 \
            --mult 1,2,2,4 --attn $attn --batch 16 --crop 16,32,64 --seed 0 --max-images $ARM_IMAGES \
            --snapshot-every $ARM_SNAP --device "$DEVICE" --rng device --checkpoint-minutes 1 $extra \
            > "$W/arms/$arm.log" 2>&1 &
    done
    wait
    echo "A: arms trained after $((SECONDS - T0)) s"
    timeout -s TERM $(left 30) "$PY" benchmarks/prior_levers.py plain="$W/arms/plain" position="$W/arms/position" \
        attn8="$W/arms/attn8" --n-images $GATE_IMAGES --device "$DEVICE" --out crop-levers-gpu > "$W/arms/score.log" 2>&1
    echo "A: scored after $((SECONDS - T0)) s (exit $?)"
) > "$W/A.log" 2>&1 &

COMMON="--size $SIZE --n-steps $STEPS --tables table2 --device $DEVICE"
# B: per-slice methods on the same 2 slices as ADMM-TV and DDS
timeout -s TERM $(left 30) "$PY" -m ddip benchmark $COMMON --table2 mri3d,sv-ct-60 --n-slices $FEW \
    --methods admm-tv,dds,ddip,scd --out "$W/slicewise" > "$W/B.log" 2>&1 &

# C: the low-start variants on the CPU table's 8 slices, and the default DDS there
(
    for task in sv-ct-60 mri3d; do
        for spec in 'd3ip {"t_start":150,"zeta":40}' 'd3ip-mbir {"t_start":150,"zeta":40}' 'dds {}'; do
            method=${spec%% *}; settings=${spec#* }
            (cd benchmarks && timeout -s TERM $(left 30) "$PY" variants.py --size $SIZE --task $task --method $method \
                --settings "$settings" --n-slices $MID --n-steps $STEPS --out "$W/variants" --resume)
            echo "C: $task $method $settings exit $? after $((SECONDS - T0)) s"
        done
    done
) > "$W/C.log" 2>&1 &

# D: Table 2 on N slices
timeout -s TERM $(left 30) "$PY" -m ddip benchmark $COMMON --table2 sv-ct-60,mri3d --n-slices $N \
    --methods admm-tv,dds,mbir,d3ip,d3ip-mbir --out "$W/table2-n$N" > "$W/D.log" 2>&1 &

while [ "$(jobs -r | wc -l)" -gt 0 ] && [ "$(left 20)" -gt 0 ]; do sleep 5; done
echo "collecting after $((SECONDS - T0)) s"
cp benchmarks/results/crop-levers-gpu.* "$W/arms/" 2>/dev/null
(cd "$W" && tar czf "$OUT/results.tgz" --exclude='checkpoints' --exclude='*.safetensors' --exclude='*.pt' \
    --exclude=cache *.log arms slicewise variants "table2-n$N" 2>/dev/null)
grep -h '"psnr"' "$W"/slicewise/rows.jsonl "$W"/variants/rows.jsonl "$W"/table2-n$N/rows.jsonl 2>/dev/null \
    | "$PY" -c "
import json, sys
for line in sys.stdin:
    r = json.loads(line)['row']
    print(r['task'], r['method'], r['slices'], json.dumps(r.get('variant', '')), 'psnr %.2f ssim %.3f, %.0f s, %.0f MB'
      % (r['psnr'], r['ssim'], r['wall_time_s'], r['peak_memory_mb']))
"
cat "$W"/A.log "$W"/C.log; tail -n 3 "$W"/arms/score.log "$W"/B.log "$W"/D.log
echo "done after $((SECONDS - T0)) s"
