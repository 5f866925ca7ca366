#!/usr/bin/env bash
# The device script (issue 27): every GPU check of raydistill in one command, each stage under
# its own timeout, logs and figures under $OUT, a summary table last. docs/gpu.md says how to
# run it with the device tool and what each stage checks.
#
#   bash bench/gpu_check.sh                  # all stages: <= 5 min on one H100
#   bash bench/gpu_check.sh --only tests     # one stage again (pack always runs first)
#   bash bench/gpu_check.sh --rehearsal      # the same stages on this CPU, tiny sizes, <= 3 min
#
# Stages: pack (unpack .device_pack/: a pruned Ray, CTranslate2 and data, built here by
# bench/device_pack.py), probes (GPU, versions, what imports), tests (tests/gpu), kd_memory
# (chunked vs unchunked KD at V = 250,112 and the chunk-size sweep), generation
# (bench/generation.py), overhead (bench/overhead.py at BART-base size against the plain loop),
# memory (bench/memory_scaling.py: ddp against fsdp, one GPU per worker: needs 2 GPUs).
# A stage that needs what this machine lacks (Ray, the data) says SKIP and why (PARTIAL: a
# part of it).
set -u
cd "$(dirname "$0")/.."
REPO=$PWD

REHEARSAL=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rehearsal) REHEARSAL=1 ;;
    --only) ONLY="${2:?--only needs a stage (pack probes tests kd_memory generation overhead memory)}"
            shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (--rehearsal, --only STAGE)" >&2; exit 2 ;;
  esac
  shift
done
case "$ONLY" in
  ""|pack|probes|tests|kd_memory|generation|overhead|memory) ;;
  *) echo "gpu_check.sh: no stage '$ONLY' (pack probes tests kd_memory generation overhead memory)" >&2
     exit 2 ;;
esac

# The interpreter: $PYTHON, else this checkout's .venv (here), else python3 (the device's torch).
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python
else PY=python3; fi

OUT=${OUT:-$REPO/bench/results/gpu_check}
# Models and work folders stay out of $OUT: what lies there is copied back from the device.
WORK=${GPU_CHECK_WORK:-${TMPDIR:-/tmp}/raydistill_gpu_check}
PACK=${GPU_CHECK_PACK:-$REPO/.device_pack}
mkdir -p "$OUT/logs" "$OUT/figures" "$WORK/results"
export RAYDISTILL_BENCH_RESULTS=$WORK/results
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled \
  RAY_TRAIN_ENABLE_PRINT_PATCH=0 RAY_DATA_DISABLE_PROGRESS_BARS=1 HF_HUB_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
DATA_ROOT=${GPU_CHECK_DATA:-$REPO/../shared/data}

# All stages together stay inside BUDGET seconds (a stage gets what is left, down to none): a
# device call ends at 600 s, and the summary must print before.
if [ $REHEARSAL = 1 ]; then BUDGET=${GPU_CHECK_BUDGET:-300}
else BUDGET=${GPU_CHECK_BUDGET:-540}; fi
STATUS=()  # one "stage|status|seconds|figure" row per stage that ran
T_ALL=$SECONDS

# run_stage NAME TIMEOUT_S: runs stage_NAME (below) under `timeout` (its whole process group),
# output to $OUT/logs/NAME.log (its last lines echoed), the bench's JSON figures copied to
# $OUT/figures; status ok / ok, partly (its PARTIAL lines) / SKIP (its SKIP line) / TIMEOUT /
# FAIL.
run_stage() {
  local name=$1 limit=$2
  [ -n "$ONLY" ] && [ "$ONLY" != "$name" ] && [ "$name" != pack ] && return 0
  local log=$OUT/logs/$name.log t0=$SECONDS rc status left=$((BUDGET - (SECONDS - T_ALL)))
  if [ $left -lt 20 ]; then  # the summary must still print inside the caller's limit
    STATUS+=("$name|SKIP: out of the ${BUDGET}s budget (rerun it: --only $name)|0|-")
    return 0
  fi
  [ $left -lt "$limit" ] && limit=$left
  echo "===== $name (timeout ${limit}s)"
  rm -f "$WORK"/results/*.json  # each stage's own figures only (the last ones are in $OUT)
  export DATA_ROOT PYTHONPATH
  timeout --kill-after=15 "$limit" bash -c "set -o pipefail; stage_$name" >"$log" 2>&1
  rc=$?
  cp "$WORK"/results/*.json "$OUT/figures/" 2>/dev/null
  if [ $rc = 124 ] || [ $rc = 137 ]; then status="TIMEOUT after ${limit}s"
  elif [ $rc != 0 ]; then status="FAIL (exit $rc)"
  elif grep -q '^SKIP ' "$log"; then
    status="SKIP: $(grep -m1 '^SKIP ' "$log" | cut -c6- | cut -c1-110)"
  elif grep -q '^PARTIAL ' "$log"; then
    status="ok, partly: $(grep '^PARTIAL ' "$log" | cut -c9- | cut -c1-80 | paste -sd';' -)"
  else status=ok; fi
  grep -v -e '^Loading weights' -e '^USDT' "$log" | tail -n 6 | sed 's/^/    /'
  local figure
  figure=$("$PY" bench/gpu_check.py figure "$name" --results "$WORK/results" --out "$OUT" \
           --log "$log" 2>/dev/null || echo "-")
  STATUS+=("$name|$status|$((SECONDS - t0))|$figure")
}

# Stage commands: functions, exported so that `timeout` can run each in a shell of its own.
stage_pack() { "$PY" bench/gpu_check.py pack --pack "$PACK" --work "$WORK"; }
stage_probes() {
  nvidia-smi -L 2>&1 || echo "nvidia-smi: none here"
  "$PY" bench/gpu_check.py probes --out "$OUT" $([ $REHEARSAL = 1 ] || echo --require-cuda)
}
stage_tests() {
  # tests/gpu skip without CUDA: the rehearsal checks that they collect and skip cleanly, and
  # runs their CPU variants (GPU_CHECK_REHEARSAL=1: tests/gpu/test_fsdp_cuda.py's).
  GPU_CHECK_REHEARSAL=$REHEARSAL "$PY" -m pytest -q -ra -p no:cacheprovider tests/gpu --junitxml="$OUT/figures/tests_gpu.xml"
}
stage_kd_memory() {
  if [ $REHEARSAL = 1 ]; then
    "$PY" bench/kd_memory.py --device cpu --vocab 2048 --reps 1 --no-rss &&
    "$PY" bench/kd_memory.py --device cpu --sweep --vocab 2048 --sweep-vocabs 1024 \
      --chunks 14 16 --reps 1
  else  # V = 250,112: the target; then the sweep that chooses chunk_elements on this GPU
    "$PY" bench/kd_memory.py --device cuda --reps 8 &&
    "$PY" bench/kd_memory.py --device cuda --sweep --sweep-vocabs 32000 50265 131072 250112 \
      --chunks 20 21 22 23 24 25 26 27 --reps 8
  fi
}
stage_generation() {
  if [ $REHEARSAL = 1 ]; then
    "$PY" bench/generation.py --device cpu --data-root "$DATA_ROOT" --n 8 --num-workers 1 \
      --num-beams 1 --max-length 8 --batch-size 8 --compute-types int8 \
      --workdir "$WORK/generation"
  else
    "$PY" bench/generation.py --device cuda --data-root "$DATA_ROOT" --n 256 --num-workers 2 \
      --max-length 64 --batch-size 64 --workdir "$WORK/generation"
  fi
}
stage_overhead() {
  if ! "$PY" -c "import ray" 2>/dev/null; then
    echo "SKIP overhead: ray does not import here (raydistill's side runs on Ray Train); carry" \
         "a pack built by bench/device_pack.py (docs/gpu.md)"
    return 0
  fi
  if [ $REHEARSAL = 1 ]; then
    "$PY" bench/overhead.py --device cpu --size tiny --systems plain raydistill_local \
      --data-root "$DATA_ROOT" --workdir "$WORK/overhead"
  else  # the Train worker against the plain loop, same teacher dtype (bf16) on both sides
    "$PY" bench/overhead.py --device cuda --size bart-base --systems plain raydistill \
      --reps 1 --threads 2 --data-root "$DATA_ROOT" --workdir "$WORK/overhead"
  fi
}
stage_memory() {
  if [ $REHEARSAL = 1 ]; then  # its runs' code paths: the tiny shape in make test
    echo "SKIP memory: in the rehearsal tests/unit/test_bench_memory.py runs it (--tiny)"
    return 0
  fi
  gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  if [ "$gpus" -lt 2 ]; then
    echo "SKIP memory: ddp against fsdp needs 2 GPUs (one per worker, nccl); this machine has $gpus"
    return 0
  fi
  "$PY" bench/memory_scaling.py --device cuda --steps 3 --json "$OUT/figures/memory_scaling.json"
}
export -f stage_pack stage_probes stage_tests stage_kd_memory stage_generation stage_overhead \
  stage_memory
export PY OUT WORK PACK REHEARSAL

# pack first: it puts the carried packages on PYTHONPATH (and the data, when carried) for the rest.
run_stage pack 60
if [ -f "$WORK/pythonpath" ]; then export PYTHONPATH=$PYTHONPATH:$(cat "$WORK/pythonpath"); fi
[ -d "$WORK/data" ] && [ -z "${GPU_CHECK_DATA:-}" ] && DATA_ROOT=$WORK/data
if [ $REHEARSAL = 1 ]; then
  run_stage probes 60
  run_stage tests 90
  run_stage kd_memory 60
  run_stage generation 90
  run_stage overhead 120
  run_stage memory 10
else
  run_stage probes 60
  run_stage tests 240
  run_stage kd_memory 90
  run_stage generation 90
  run_stage overhead 180
  run_stage memory 120
fi

# The summary table, last (also in $OUT/summary.md).
{
  echo
  mode=$([ $REHEARSAL = 1 ] && echo "rehearsal (cpu)" || echo "(cuda)")
  echo "## gpu_check $mode, $(date -u +%Y-%m-%dT%H:%MZ), total $((SECONDS - T_ALL)) s"
  echo
  echo "| stage | status | seconds | key figure |"
  echo "|---|---|---:|---|"
  for row in "${STATUS[@]}"; do
    IFS='|' read -r s st sec fig <<<"$row"
    echo "| $s | $st | $sec | $fig |"
  done
  echo
  echo "logs: $OUT/logs/, figures: $OUT/figures/"
} | tee "$OUT/summary.md"
for row in "${STATUS[@]}"; do
  case "$row" in *"|FAIL"*|*"|TIMEOUT"*) exit 1 ;; esac
done
exit 0
