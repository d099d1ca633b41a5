#!/usr/bin/env bash
# One call on a lent GPU machine: the GPU benchmark (today's paths and the fast ones, on the same machine), then the
# shipped priors' training continued for the time left (scripts/train_priors_gpu.sh).
#
#   OUT=/some/dir bash scripts/gpu_session.sh                     # on the GPU: about TOTAL seconds (default 540)
#   DEVICE=cpu TINY=1 TOTAL=150 OUT=/tmp/x bash scripts/gpu_session.sh   # the same steps at toy sizes on a CPU
#
# What lands in OUT (at most 8 files, for the lent device's return limit): bench/gpu.json, bench/gpu.md, bench.log,
# the three priors' EMA weights and logs.tar.
set -u
T0=$SECONDS
OUT=${OUT:?set OUT}
TOTAL=${TOTAL:-540}   # seconds for the whole call
BENCH=${BENCH:-290}   # the benchmark starts no section after this many seconds
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT/bench"
source scripts/gpu/env.sh || exit 1
TINY_FLAGS=""
[ "${TINY:-0}" = 1 ] && TINY_FLAGS="--tiny"
timeout -s KILL $((BENCH + 60)) "$PY" benchmarks/gpu.py --out "$OUT/bench" --device "$DEVICE" --budget-s "$BENCH" \
    --compile $TINY_FLAGS > "$OUT/bench.log" 2>&1
echo "benchmark exited with $? after $((SECONDS - T0)) s"
tail -n 3 "$OUT/bench.log"
SECS=$((TOTAL - (SECONDS - T0) - 50))  # 50 s: start-up, the final checkpoint, copying
if [ "$SECS" -gt 30 ]; then
    SECS=$SECS DEVICE=$DEVICE OUT=$OUT RUNS=${RUNS:-/tmp/ddip-runs} bash scripts/train_priors_gpu.sh
fi
echo "session done after $((SECONDS - T0)) s"
