#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one call (~9 minutes on one H100 / H200), from
# synthetic batches (no data sets, no network): GPT-2 124M (seq 1024), BERT-base MLM
# (seq 128) and ViT-B/16 (224x224, 1000 classes), all bf16, each as
#   pjx default attention | HF (torch.compile, bf16 autocast, SDPA)      (first pass)
#   pjx XLA attention     | pjx default attention + model.remat=full      (second pass)
# "default" is what a user gets with model.attention_impl unset: cuDNN's flash attention,
# or XLA's where cuDNN cannot train (ViT's odd 197 positions).
# Two passes, so that when the time guard cuts the run short it drops the secondary runs.
# Each run appends its JSON line to $OUT/gpu.jsonl (a failed, timed-out or skipped run
# appends one with an "error" field and the rest go on); everything goes to $OUT/gpu.log;
# the summary table (tokens/s, images/s, MFU, peak memory, pjx / HF) ends the output and
# is kept in $OUT/summary.txt.
#
#   bash benchmarks/gpu.sh                                   # 3 shapes x 4 runs
#   STEPS=20 SHAPES=gpt2_small bash benchmarks/gpu.sh        # more steps, one shape
#   PJX_GPU_TINY=1 HF_COMPILE=0 SHAPES=gpt2_small STEPS=1 bash benchmarks/gpu.sh  # CPU dry run
#
# Needs jax (CUDA), flax, optax, orbax-checkpoint, torch and transformers; pjx runs from
# this checkout (PYTHONPATH), and benchmarks/gpu_bench.py imports neither ml_collections,
# grain nor tensorflow(-datasets). Knobs: OUT (runs/gpu), STEPS (10), WARMUP (3), SHAPES,
# BUDGET_S (540: the whole script), RUN_TIMEOUT (180: one run), PJX_GPU_TINY (0),
# HF_COMPILE (1), HF_DEVICE (cuda when nvidia-smi sees a GPU, else cpu).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
SHAPES=${SHAPES:-gpt2_small bert_base vit_b16}
BUDGET_S=${BUDGET_S:-540}
RUN_TIMEOUT=${RUN_TIMEOUT:-180}
MIN_LEFT=30  # a run that cannot even compile in what is left is skipped
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# One process at a time: jax may take 90% of the GPU (default 75%), so the large batches
# of the XLA-attention runs fit an 80 GB H100 too.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.90}
export TOKENIZERS_PARALLELISM=false
TINY=()
[[ ${PJX_GPU_TINY:-0} == 1 ]] && TINY=(--tiny)
HF_COMPILE_FLAG=(--compile) HF_COMPILED=true
[[ ${HF_COMPILE:-1} == 0 ]] && HF_COMPILE_FLAG=() HF_COMPILED=false
if [[ -z ${HF_DEVICE:-} ]]; then
  HF_DEVICE=cpu
  nvidia-smi -L >/dev/null 2>&1 && HF_DEVICE=cuda
fi

mkdir -p "$OUT"
JSONL="$OUT/gpu.jsonl" LOG="$OUT/gpu.log"
[[ -s $JSONL ]] && mv "$JSONL" "$JSONL.prev"  # the summary reads this run's lines only
: >"$JSONL"
{
  date -u +"%F %T UTC: gpu.sh SHAPES='$SHAPES' STEPS=$STEPS BUDGET_S=$BUDGET_S ${TINY[*]}"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  else
    echo "no nvidia-smi: pjx runs on jax's default backend, HF on $HF_DEVICE"
  fi
} | tee -a "$LOG"
START=$SECONDS

# record 'JSON FIELDS' CMD...: runs CMD within the time guard; appends its last stdout
# line when it is JSON, otherwise an {"error": ...} line with the given fields.
record() {
  local what=$1 left limit rc tmp line
  shift
  left=$((BUDGET_S - (SECONDS - START)))
  if ((left < MIN_LEFT)); then
    echo "{$what, \"error\": \"skipped: ${left}s of BUDGET_S=$BUDGET_S left\"}" >>"$JSONL"
    echo "SKIPPED (time guard): $*" | tee -a "$LOG"
    return
  fi
  limit=$((left < RUN_TIMEOUT ? left : RUN_TIMEOUT))
  echo "+ $* (limit ${limit}s, $((SECONDS - START))s elapsed)" | tee -a "$LOG"
  tmp=$(mktemp)
  timeout -k 10 "$limit" "$@" >"$tmp" 2>>"$LOG"
  rc=$?
  cat "$tmp" >>"$LOG"
  line=$(grep '^{' "$tmp" | tail -1)
  if [[ -n $line ]]; then
    echo "$line" >>"$JSONL"
    grep -v '^{' "$tmp" | tail -1  # the human line (or nothing, on an error)
    [[ $line == *'"error"'* ]] && echo "FAILED (rc $rc): ${line:0:400}"
  else
    local why="exit $rc"
    ((rc == 124 || rc == 137)) && why="timed out after ${limit}s"
    echo "{$what, \"error\": \"$why (see gpu.log)\"}" >>"$JSONL"
    echo "FAILED: $why: $*" | tee -a "$LOG"
  fi
  rm -f "$tmp"
}

pjx() {  # pjx SHAPE ATTENTION REMAT
  record "\"impl\": \"pjx\", \"shape\": \"$1\", \"requested_attention\": \"$2\", \"remat\": \"$3\"" \
    python benchmarks/gpu_bench.py "$1" --attention "$2" --remat "$3" --dtype bfloat16 \
    --steps "$STEPS" --warmup "$WARMUP" "${TINY[@]}"
}

hf() {  # hf SHAPE
  record "\"impl\": \"hf\", \"shape\": \"$1\", \"torch_compile\": $HF_COMPILED" \
    python benchmarks/hf_reference.py "$1" --device "$HF_DEVICE" --bf16 "${HF_COMPILE_FLAG[@]}" \
    --dropout 0 --steps "$STEPS" --warmup "$WARMUP" "${TINY[@]}"
}

for shape in $SHAPES; do
  pjx "$shape" default none
  hf "$shape"
done
for shape in $SHAPES; do
  pjx "$shape" xla none
  pjx "$shape" default full
done

echo "done in $((SECONDS - START))s; results in $JSONL" | tee -a "$LOG"
python benchmarks/gpu_bench.py --summary "$JSONL" | tee "$OUT/summary.txt" | tee -a "$LOG"
