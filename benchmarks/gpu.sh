#!/usr/bin/env bash
# The GPU measurements in one run (JAX backend): what a lent GPU machine is asked for, in priority order, each
# part bounded by a timeout so that a slow part leaves the others their time. Results (JSON, logs) go to
# $RESULTS (default benchmarks/results/gpu). From the repository root:
#
#     bash benchmarks/gpu.sh                # on the GPU machine (at most 9 minutes: the parts' timeouts)
#     QUICK=1 bash benchmarks/gpu.sh        # tiny sizes, any machine: checks that every part runs
#
# 1. training step of every network at the paper size, float32 and mixed_bfloat16, against the FLOP floor;
# 2. the share of the step spent rendering the targets in the graph (fixed against all-zero targets) and
#    the extra cost of learned sigmas;
# 3. the data wait of `main.py --preset paper` (loader workers against the GPU step) on synthetic hands;
# 4. the 3D step of every network at the authors' spine size (96 x 96 x 192, batch 1).
set -u
RESULTS=${RESULTS:-benchmarks/results/gpu}
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
export KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
# JAX takes 75 % of the GPU at start by default; grow instead, so that device memory figures mean something
export XLA_PYTHON_CLIENT_PREALLOCATE=false

if [ -n "${QUICK:-}" ]; then
    paper=(--size paper --input-size 32 32 --filters 4 --warmup 1 --steps 1 --matmul-size 256)
    spine=(--size spine --input-size 16 16 32 --filters 4 --warmup 1 --steps 1 --matmul-size 256)
    run=(--image-size 64 64 --num-filters 4 --max-iter 6 --test-iter 6 --snapshot-iter 6 --workers 2)
    images=12
else
    paper=(--size paper --warmup 2 --steps 10 --matmul-size 8192)
    spine=(--size spine --warmup 2 --steps 5 --matmul-size 8192)
    run=(--max-iter 400 --test-iter 400 --snapshot-iter 400 --workers 12)
    images=60
fi
nets=(scn unet scn_mia downsampling_net conv_only)  # most wanted first: a timeout cuts the last
common=(--skip-scn-spatial --no-isolate)

step() {  # step NAME TIMEOUT COMMAND...: runs one part, its output to the screen and $RESULTS/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%T))"
    timeout "$limit" "$@" 2>&1 | tee "$RESULTS/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null | tee "$RESULTS/gpu.txt"
step training_paper 210 "$PYTHON" -m benchmarks.training "${paper[@]}" "${common[@]}" --networks "${nets[@]}" \
    --precisions float32 mixed_bfloat16 --output "$RESULTS/training_paper.json"
step targets_paper 90 "$PYTHON" -m benchmarks.training "${paper[@]}" "${common[@]}" --networks scn scn_mia \
    --precisions float32 --targets fixed none learned --output "$RESULTS/targets_paper.json"
hands=$(mktemp -d)/hands
step data_wait 140 bash -c "$PYTHON -m utils.synthetic hand $hands --num-images $images --quiet &&
    $PYTHON main.py --preset paper --dataset $hands --network scn --cv 1 ${run[*]} --output $hands.runs &&
    cp $hands.runs/scn_cv1/*/history.json $RESULTS/data_wait_history.json"
step training_spine 100 "$PYTHON" -m benchmarks.training "${spine[@]}" "${common[@]}" \
    --networks scn unet scn_mia --precisions float32 mixed_bfloat16 --output "$RESULTS/training_spine.json"
