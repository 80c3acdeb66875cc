#!/usr/bin/env bash
# The GPU check: everything a first GPU run must measure, in at most 6 minutes by design.
#
#     bash bench/gpu_check.sh                                   # on the GPU machine (docs/speed.md)
#     QUICK=1 PYTHON=.venv/bin/python bash bench/gpu_check.sh   # seconds-long settings: the same steps on a CPU
#
# Steps, each under its own `timeout` (the limits below add up to 360 s): the machine (GPU, driver, torch, CUDA,
# missing packages), wheels carried in .whl/ (bench/gpu_wheels.sh), the faithful-vs-fast throughput of the CIFAR-10
# SimCLR, SCAN and self-label configs (bench/throughput.py), exact top-50 mining of 1,281,167 × 2048 features
# (bench/mining_bench.py: float16, float32, faiss), then the CUDA tests (batched augmentation, mining, the pipeline
# end to end). Each step appends its table to bench/GPU_RESULTS.md, which is copied into $OUT (when set) after every
# step, with this script's output as it runs (gpu_check.log): a step that hangs or fails leaves every earlier
# figure. Exits 1 when a step failed or timed out. tests/test_gpu_check.py runs the QUICK form on a CPU.
set -uo pipefail
SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
cd "$(dirname "$SELF")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
if [ "${1:-}" != --step ] && [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

EVAL_IMAGES=50000 MINING_IMAGES=1281167 STEPS=30 WARMUP=5
SMALL=""  # extra --set overrides of the throughput runs
# The CUDA tests: the batched augmentation and mining on the GPU (bit-identical to the CPU path), the pipeline.
TEST_SELECTIONS=("tests/test_batch_augment.py tests/test_knn.py -k cuda"
                 "tests/test_pipeline_e2e.py::test_three_stages_and_eval[batched]")
if [ -n "${QUICK:-}" ]; then
    EVAL_IMAGES=50 MINING_IMAGES=5000 STEPS=2 WARMUP=1
    SMALL="batch_size=16 backbone_kwargs.base_width=2 num_workers=0"
    RESULTS=${RESULTS:-/tmp/GPU_RESULTS.quick.md}
fi
RESULTS=${RESULTS:-bench/GPU_RESULTS.md}
CUDA=${CUDA:-$($PYTHON -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)}
export CUDA SITE_FILE=${SITE_FILE:-$(mktemp)}
if [ "$CUDA" != 1 ]; then  # no GPU: the same test steps on the CPU (the CUDA tests' rows say "skipped on CPU")
    TEST_SELECTIONS+=("tests/test_knn_index.py -k recall_counts_by_hand or number_of_lists")
fi

SCALE=${GPU_CHECK_TIME_SCALE:-1}  # multiplies every limit: a loaded CPU (the QUICK test) imports torch slowly
FAILED=()
STEP_ROWS=()
publish() {
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then cp "$RESULTS" "$OUT/"; fi
}
# step NAME LIMIT FUNCTION ARGS...: this script's FUNCTION under `timeout LIMIT` (which ends its processes too), its
# stdout appended to the results (on failure the tail of its stderr too), then publish. Every step's row of the
# closing table says how long it took.
step() {
    local name=$1 limit=$(($2 * SCALE)) started status errors
    shift 2
    echo "== $name (limit ${limit} s)"
    errors=$(mktemp)
    started=$(date +%s.%N)
    timeout "$limit" bash "$SELF" --step "$@" 2> >(tee "$errors" >&2) >> "$RESULTS"
    status=$?
    sleep 0.2  # let the stderr tee finish
    local took
    took=$(awk "BEGIN {printf \"%.1f\", $(date +%s.%N) - $started}")
    if [ $status -ne 0 ]; then
        FAILED+=("$name")
        { echo; echo "**$name failed** (exit status $status; 124: timed out after $limit s):"; echo '```'
          tail -n 20 "$errors"; echo '```'; } >> "$RESULTS"
    fi
    STEP_ROWS+=("| $name | $limit | $took | $([ $status -eq 0 ] && echo ok || echo "failed ($status)") |")
    rm -f "$errors"
    publish
}

machine() {
    echo "# GPU check: measured results"
    echo
    echo "Written by \`bash bench/gpu_check.sh\`${QUICK:+ (QUICK=1)} on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "nvidia-smi: none"
    $PYTHON - <<'EOF'
import importlib.util, os, sys
import torch, torchvision
cuda = torch.cuda.is_available()
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torchvision", torchvision.__version__,
      "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "| GPU", torch.cuda.get_device_name() if cuda else "none")
print("CPU cores:", os.cpu_count())
modules = ["yaml", "tqdm", "matplotlib", "PIL", "sklearn", "scipy", "faiss", "pytest", "pytest_timeout"]
print("missing modules:", " ".join(m for m in modules if importlib.util.find_spec(m) is None) or "none")
EOF
    echo '```'
}

# Wheels in $WHEELS (bench/gpu_wheels.sh) go to a private folder on PYTHONPATH; a wheel whose modules the machine
# already has is left out, so the machine's own numpy, torch, ... are never shadowed.
install_wheels() {
    local site wanted
    if ! compgen -G "$WHEELS/*.whl" > /dev/null; then echo; echo "No wheels in $WHEELS: nothing installed."; return 0; fi
    wanted=$($PYTHON - "$WHEELS"/*.whl <<'EOF'
import importlib.util, sys, zipfile
for wheel in sys.argv[1:]:
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    modules = {top.removesuffix(".py") for top in tops if not top.endswith((".dist-info", ".data", ".libs"))}
    modules = {module for module in modules if module.isidentifier()}
    if not modules or any(importlib.util.find_spec(module) is None for module in modules):
        print(wheel)
EOF
) || return 1
    echo
    echo "Wheels in $WHEELS: $(cd "$WHEELS" && echo *.whl | wc -w); installed (their modules were missing): ${wanted:+$(basename -a $wanted | tr '\n' ' ')}${wanted:-none}"
    [ -z "$wanted" ] && return 0
    site=$(mktemp -d /tmp/gpu_check_site.XXXXXX)
    # shellcheck disable=SC2086  # one wheel per word
    $PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" $wanted >&2 || return 1
    echo "$site" > "$SITE_FILE"
}

throughput() {  # config, then --set overrides
    local config=$1
    shift
    echo; echo "### $config"; echo
    # shellcheck disable=SC2086  # SMALL: words
    $PYTHON bench/throughput.py --config_exp "configs/$config" --steps "$STEPS" --warmup "$WARMUP" \
        --eval_images "$EVAL_IMAGES" --set "$@" $SMALL
}
mining() {  # backend, --max-seconds
    echo
    $PYTHON bench/mining_bench.py --sizes "$MINING_IMAGES" --dims 2048 --ks 50 --backends "$1" --max-seconds "$2"
}
# The CUDA tests, visible to the suite only with SCAN_TEST_CUDA=1 (tests/conftest.py pins it to the CPU otherwise),
# each at most 40 s where pytest-timeout is installed; one row per selection, read from pytest's junit file.
run_tests() {
    local timeout_flag=() selection junit
    junit=$(mktemp -d)
    if $PYTHON -c "import pytest_timeout" 2>/dev/null; then timeout_flag=(--timeout 40); fi
    echo; echo "## Tests"; echo
    echo "| tests | device | passed | failed | errors | skipped | seconds |"
    echo "|---|---|---|---|---|---|---|"
    local i=0 status=0
    for selection in "${TEST_SELECTIONS[@]}"; do
        i=$((i + 1))
        local words=(${selection%% -k *}) keyword=()
        [[ $selection == *" -k "* ]] && keyword=(-k "${selection#* -k }")
        if [[ $selection == *cuda* || $selection == *pipeline* ]] && [ "$CUDA" != 1 ]; then
            echo "| $selection | skipped on CPU | - | - | - | - | - |"
            continue
        fi
        SCAN_TEST_CUDA=1 $PYTHON -m pytest -q -p no:cacheprovider ${timeout_flag[@]+"${timeout_flag[@]}"} \
            --junitxml "$junit/$i.xml" "${words[@]}" ${keyword[@]+"${keyword[@]}"} >&2 || status=1
        $PYTHON - "$junit/$i.xml" "$selection" "$CUDA" <<'EOF'
import sys
import xml.etree.ElementTree as ElementTree
suite = ElementTree.parse(sys.argv[1]).getroot()
suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
count = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
device = "cuda" if sys.argv[3] == "1" else "cpu"
print(f"| {sys.argv[2]} | {device} | {passed} | {count['failures']} | {count['errors']} | {count['skipped']} | "
      f"{float(suite.get('time', 0)):.1f} |")
EOF
    done
    return $status
}
if [ "${1:-}" = --step ]; then  # one step, run by step() under its timeout
    shift
    "$@"
    exit
fi

: > "$RESULTS"
step "machine" 30 machine
step "wheels" 20 install_wheels
if [ -s "$SITE_FILE" ]; then
    PYTHONPATH="$(cat "$SITE_FILE")${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONPATH
    echo "still missing after the wheels: $($PYTHON -c "import importlib.util as u; print(' '.join(m for m in ['yaml', 'tqdm', 'matplotlib', 'faiss', 'pytest'] if u.find_spec(m) is None) or 'none')")" >> "$RESULTS"
    publish
fi
rm -f "$SITE_FILE"

{
    echo
    echo "## Throughput"
    echo
    echo "Training images per second (each gives two views) on synthetic CIFAR-sized data: the faithful path (PIL in"
    echo "DataLoader workers, fp32, no channels_last) and the fast path (batched augmentation on the GPU, bfloat16"
    echo "autocast, channels_last) in the same run; the epoch column is 50,000 images at that rate. Timed from batch"
    echo "$((WARMUP + 1)) of one pass (the workers are already running). kNN monitor: one weighted-kNN evaluation"
    echo "($EVAL_IMAGES-image memory bank, $((EVAL_IMAGES / 5)) queries); mining: top-20 of $EVAL_IMAGES images, features"
    echo "included. SCAN runs at batch 512 (its config: 128)."
} >> "$RESULTS"
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))  # PIL workers for the faithful path: all cores but two
step "throughput: SimCLR" 45 throughput pretext/simclr_cifar10.yml num_workers=$WORKERS
step "throughput: SCAN" 45 throughput scan/scan_cifar10.yml num_workers=$WORKERS batch_size=512
step "throughput: self-label" 45 throughput selflabel/selflabel_cifar10.yml num_workers=$WORKERS

# Mining at scale (docs/scaling.md): ImageNet-1k's train set, 1.28M × 2048 features, top-50, exact, in under
# 2 minutes. One backend per step, so a slow one cannot cost the others' rows: float16 first (the target).
{ echo; echo "## Mining: $MINING_IMAGES × 2048 features, top-50 (ImageNet-1k train: 1,281,167)"; } >> "$RESULTS"
step "mining: torch-fp16" 80 mining torch-fp16 70
step "mining: torch" 20 mining torch 10
step "mining: faiss" 20 mining faiss 10

step "tests" 55 run_tests

{
    echo
    echo "## Steps"
    echo
    echo "| step | limit (s) | took (s) | status |"
    echo "|---|---|---|---|"
    printf '%s\n' "${STEP_ROWS[@]}"
} >> "$RESULTS"
publish
cat "$RESULTS"
if [ "${#FAILED[@]}" -gt 0 ]; then
    echo "gpu_check: failed steps: ${FAILED[*]}" >&2
    exit 1
fi
