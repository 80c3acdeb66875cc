#!/usr/bin/env bash
# The GPU check, under 8 minutes on one GPU: the faithful-vs-fast throughput tables of the CIFAR-10 pretext, SCAN
# and self-label configs (bench/throughput.py), exact mining of 1.28M × 2048 features (bench/mining_bench.py),
# then the batched-augmentation, mining and end-to-end tests on CUDA.
# Everything it measures goes to bench/GPU_RESULTS.md (and into $OUT when the caller provides that folder).
#
#     bash bench/gpu_check.sh
#     QUICK=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh   # seconds-long settings, to check the script on a CPU
#
# GPU machines may lack packages of requirements.txt (faiss, pytest, ...) and have no internet: wheels carried in
# .whl/ are installed first, with
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# faiss is optional (neighbour mining falls back to a chunked torch top-k); kornia is not used.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
RESULTS=bench/GPU_RESULTS.md
EVAL_IMAGES=50000
MINING_IMAGES=1281167
SMALL=()  # extra --set overrides
TESTS=(tests/test_batch_augment.py tests/test_mining.py tests/test_pipeline_e2e.py)
if [ -n "${QUICK:-}" ]; then
    EVAL_IMAGES=200
    MINING_IMAGES=5000
    SMALL=(batch_size=16 backbone_kwargs.base_width=4)
    TESTS=(tests/test_batch_augment.py -k "cuda or crop_larger")
    RESULTS=/tmp/GPU_RESULTS.quick.md
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    $PYTHON -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

{
    echo "# GPU check: measured results"
    echo
    echo "Written by \`bash bench/gpu_check.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi unavailable"
    $PYTHON -c "import sys, torch, torchvision; print('python', sys.version.split()[0], '| torch', torch.__version__, '| torchvision', torchvision.__version__, '| CUDA', torch.cuda.is_available())"
    $PYTHON -c "import os; print('CPU cores:', os.cpu_count())"
    for module in yaml tqdm matplotlib PIL sklearn scipy faiss pytest; do
        $PYTHON -c "import $module" 2>/dev/null || echo "missing module: $module"
    done
    echo '```'
    echo
    echo "Throughput: training images per second (each gives two views) on synthetic CIFAR-sized data, the"
    echo "faithful path (PIL in DataLoader workers, fp32, no channels_last) and the fast path (batched augmentation"
    echo "on the GPU, bfloat16 autocast, channels_last) in the same run; the epoch column is 50,000 images at that"
    echo "rate. kNN monitor and mining: one weighted-kNN evaluation (50,000-image memory bank, 10,000 queries) and"
    echo "top-20 mining of 50,000 images, features included. SCAN runs at batch 512 (its config: 128)."
} > "$RESULTS"

run_throughput() {  # config, timed steps, then --set overrides
    local config=$1 steps=$2
    shift 2
    { echo; echo "## $config"; echo; } >> "$RESULTS"
    local log status
    log=$(timeout 70 $PYTHON bench/throughput.py --config_exp "configs/$config" --steps "$steps" --warmup 5 \
        --eval_images "$EVAL_IMAGES" --set "$@" ${SMALL[@]+"${SMALL[@]}"} 2> /tmp/throughput.err)
    status=$?
    if [ $status -eq 0 ]; then
        echo "$log" >> "$RESULTS"
    else
        { echo "failed (exit status $status; 124: timed out after 70 s):"; echo '```'
          tail -n 20 /tmp/throughput.err; echo '```'; } >> "$RESULTS"
    fi
}

WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))  # PIL workers for the faithful path: all cores but two
run_throughput pretext/simclr_cifar10.yml 30 num_workers=$WORKERS
run_throughput scan/scan_cifar10.yml 30 num_workers=$WORKERS batch_size=512  # the batch of the SCAN target
run_throughput selflabel/selflabel_cifar10.yml 20 num_workers=$WORKERS

# Mining at scale (docs/scaling.md): the target is ImageNet-1k's train set, 1.28M × 2048 features,
# top-50, exact, in under 2 minutes. The float16 exact search first (the target), then float32 and faiss's flat
# index where predicted to fit; each case regenerates the features (seconds on the GPU).
{ echo; echo "## Mining: $MINING_IMAGES × 2048 features, top-50 (ImageNet-1k train: 1281167)"; echo; } >> "$RESULTS"
MINING_ARGS=(--sizes "$MINING_IMAGES" --dims 2048 --ks 50 --backends torch-fp16 torch faiss --max-seconds 150)
mining_log=$(timeout 420 $PYTHON bench/mining_bench.py "${MINING_ARGS[@]}" 2> /tmp/mining.err)
status=$?
if [ $status -eq 0 ]; then
    echo "$mining_log" >> "$RESULTS"
else
    { echo "failed (exit status $status; 124: timed out after 420 s):"; echo '```'
      tail -n 20 /tmp/mining.err; echo '```'; } >> "$RESULTS"
fi

{
    echo
    echo "## Tests on CUDA"
    echo
    echo '```'
    timeout 80 $PYTHON -m pytest -q -p no:cacheprovider "${TESTS[@]}" 2>&1 | tail -n 15
    echo "exit status: $?"
    echo '```'
} >> "$RESULTS"

cat "$RESULTS"
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then
    cp "$RESULTS" "$OUT/"
fi
