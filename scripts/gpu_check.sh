#!/usr/bin/env bash
# The GPU run in one command, under 10 minutes: tests on CUDA in three dtypes, `titok bench` on CUDA (the bundled
# model and a random-weight TiTok-L-32), token agreement against fp32, a capped bf16 training run, export, eval.
#
#   OUT=/tmp/gpu scripts/gpu_check.sh [WHEELS_DIR]          # on the GPU machine (TITOK_DEVICE=cuda)
#   OUT=/tmp/gpu GPU_CHECK_DRY=1 scripts/gpu_check.sh       # the same steps on this CPU with tiny settings
#
# Installs nothing from the network: the Python packages the GPU image lacks (fastapi, pydantic, uvicorn, ...)
# come as wheels from WHEELS_DIR (default: $GPU_CHECK_WHEELS, else .whl in the repository root, an ignored folder),
# installed with --no-index into a private folder. How to prepare them: README.md, "The GPU run".
# Writes everything under $OUT (at most 8 files): summary.md (one row per step: exit code, seconds, cap),
# env.txt, tests.log, bench.md, agreement.md, train.log, eval.json. Each step has its own time cap; a step that
# fails or runs out of time is recorded and the next one runs. Exit code: the number of failed steps.
set -uo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
WHEELS="${1:-${GPU_CHECK_WHEELS:-$ROOT/.whl}}"
DRY="${GPU_CHECK_DRY:-0}"
PY="${PYTHON:-python3}"
WORK="${GPU_CHECK_WORK:-/tmp/titok-gpu-check}"
IMAGES="${GPU_CHECK_IMAGES:-$ROOT/photos/dev-eval}"        # the 8 held-out photos (titok data photos)
TRAIN_DATA="${GPU_CHECK_TRAIN_DATA:-$ROOT/photos/train-small}"  # training photos, downscaled to travel
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

if [ "$DRY" = 1 ]; then  # tiny settings: every step runs end to end on a CPU in about two minutes
    export TITOK_DEVICE=cpu
    BIG_PRESET=tiny; BENCH_ARGS=(--quick --concurrency 1,4 --requests 16 --duration 1)
    BIG_BENCH_ARGS=(--quick --concurrency 1,4 --requests 8 --duration 1)
    TRAIN_ARGS=(--steps 4 --batch-size 4 --eval-every 2 --save-every 2 --warmup 1)
    CAP_TEST=300; CAP_BENCH=240; CAP_BIG=120; CAP_TRAIN=180
else
    export TITOK_DEVICE=cuda
    BIG_PRESET=titok-l-32; BENCH_ARGS=(--concurrency 1,16,64,256 --requests 512 --duration 4)
    BIG_BENCH_ARGS=(--concurrency 1,64,256 --requests 128 --duration 3)
    TRAIN_ARGS=(--steps 100000 --max-minutes 1 --batch-size 256 --eval-every 200 --save-every 200 --warmup 50)
    CAP_TEST=50; CAP_BENCH=80; CAP_BIG=90; CAP_TRAIN=75
fi
SUMMARY="$OUT/summary.md"
FAILED=0
printf '# gpu_check (%s, dry=%s)\n\n| step | exit | seconds | cap s |\n|---|---|---|---|\n' \
    "$(date -u +%FT%TZ)" "$DRY" > "$SUMMARY"

step() {  # step NAME CAP_SECONDS LOGFILE COMMAND...: run with its own cap, append its output to LOGFILE
    local name="$1" cap="$2" log="$3" t0 rc; shift 3
    t0=$(date +%s)
    echo "== $name (cap ${cap}s): $*" >> "$log"
    timeout -k 5 "$cap" "$@" >> "$log" 2>&1; rc=$?
    echo "| $name | $rc$([ $rc = 124 ] && echo ' (time cap)') | $(( $(date +%s) - t0 )) | $cap |" >> "$SUMMARY"
    [ $rc = 0 ] || FAILED=$((FAILED + 1))
    return $rc
}

# 1. The packages the image lacks, from carried wheels (no index, no network).
{
    echo "python: $($PY -c 'import sys; print(sys.version.split()[0])')"
    $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
    grep -o 'amx_bf16\|amx_tile\|avx512_bf16' /proc/cpuinfo 2>/dev/null | sort -u | tr '\n' ' '; echo
} > "$OUT/env.txt" 2>&1
if ! $PY -c 'import fastapi, pydantic_settings, uvicorn, multipart' 2>/dev/null; then
    if ls "$WHEELS"/*.whl > /dev/null 2>&1; then
        step setup 40 "$OUT/env.txt" $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
            --target "$WORK/site" "$WHEELS"/*.whl
        export PYTHONPATH="$PYTHONPATH:$WORK/site"
    else
        echo "| setup | no wheels in $WHEELS and the service's packages are missing |  |  |" >> "$SUMMARY"
        FAILED=$((FAILED + 1))
    fi
fi
TITOK=("$PY" -m titok.cli)

# 2. Engine and app tests with TITOK_DEVICE=cuda: all of them in float32, the CUDA-marked ones in fp16 and bf16.
for dtype in float32 float16 bfloat16; do
    if [ $dtype = float32 ]; then sel=(tests/service/core tests/service/server -m "not slow"); cap=$CAP_TEST
    else sel=(tests/service/core/test_cuda.py); cap=$(( CAP_TEST / 2 + 5 )); fi
    TITOK_DTYPE=$dtype step "tests $dtype" "$cap" "$OUT/tests.log" \
        $PY -m pytest -q -rs -p no:cacheprovider --ignore tests/service/server/test_fuzz_api.py \
        --ignore tests/service/server/test_ui_browser.py "${sel[@]}"
done

# 3. titok bench on the device: the bundled model, then a random-weight big model (built there: 1.3 GB).
step "bench bundled" "$CAP_BENCH" "$OUT/bench.md" "${TITOK[@]}" bench "${BENCH_ARGS[@]}"
BIG="$WORK/random-$BIG_PRESET.pt"
step "build random $BIG_PRESET" "$CAP_BIG" "$OUT/bench.md" $PY scripts/random_model.py "$BIG_PRESET" "$BIG" --fp16 \
    && step "bench random $BIG_PRESET" "$CAP_BIG" "$OUT/bench.md" "${TITOK[@]}" bench --model "$BIG" \
        "${BIG_BENCH_ARGS[@]}"

# 4. Tokens of each reduced dtype against fp32's, on the held-out photos (synthetic ones if none travelled).
if ! ls "$IMAGES" > /dev/null 2>&1; then
    IMAGES="$WORK/synthetic"
    $PY -c "
import sys, pathlib; from titok.bench.bench import synthetic_photos
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True)
[(d / f'{i}.jpg').write_bytes(b) for i, b in enumerate(synthetic_photos(8))]" "$IMAGES"
fi
models=(service/models/default.pt); [ -f "$BIG" ] && models+=("$BIG")
step "dtype agreement" 40 "$OUT/agreement.md" $PY scripts/dtype_agreement.py --images "$IMAGES" \
    --device "$TITOK_DEVICE" --dtypes bfloat16,float16 "${models[@]}"

# 5. The shipped recipe (scripts/retrain_default.sh), capped, bf16 autocast at a large batch; export; eval.
TRAIN_EXTRA=()
if "${TITOK[@]}" train --help 2>/dev/null | grep -q -- '--precision'; then
    TRAIN_EXTRA=(--precision bf16)  # from the ordered-tokens branch; absent before it is merged
    "${TITOK[@]}" train --help | grep -q -- '--tail-drop' && TRAIN_EXTRA+=(--tail-drop)
fi
[ -d "$TRAIN_DATA" ] || TRAIN_DATA="$IMAGES"
RUN="$WORK/run"; rm -rf "$RUN"
step train "$CAP_TRAIN" "$OUT/train.log" "${TITOK[@]}" train --preset tiny --data "$TRAIN_DATA" --eval-data "$IMAGES" \
    --out "$RUN" --lr 2e-3 --no-progress "${TRAIN_ARGS[@]}" "${TRAIN_EXTRA[@]}" \
    && step export 30 "$OUT/train.log" "${TITOK[@]}" export --checkpoint "$RUN/checkpoint.pt" --out "$RUN/model.pt" --fp16 \
    && step eval 30 "$OUT/train.log" "${TITOK[@]}" eval --artifact "$RUN/model.pt" --data "$IMAGES" --out "$RUN/eval" \
    && cp "$RUN/eval/eval.json" "$OUT/eval.json"

echo "" >> "$SUMMARY"
echo "failed steps: $FAILED; train flags: ${TRAIN_EXTRA[*]:-none (no --precision in titok train)}" >> "$SUMMARY"
cat "$SUMMARY"
exit "$FAILED"
