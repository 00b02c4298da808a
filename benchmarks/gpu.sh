#!/usr/bin/env bash
# Every GPU measurement of BENCHMARKS.md in one call, from synthetic batches (no data sets):
# pjx with XLA and with cuDNN attention, then Hugging Face (torch.compile, bf16, SDPA), on
# GPT-2 small (seq 1024) and BERT-base MLM (seq 128). Each run appends its JSON line to
# $OUT/gpu.jsonl (OUT defaults to runs/gpu); the log goes to $OUT/gpu.log.
#
#   bash benchmarks/gpu.sh              # all four shapes x three implementations
#   STEPS=20 SHAPES=gpt2_small bash benchmarks/gpu.sh   # more steps, one shape
#
# A machine without pjx's pure-Python dependencies can take them from wheels in
# benchmarks/wheels/ (`pip download ml_collections --no-deps -d benchmarks/wheels` where
# there is a network): pjx bench needs jax, flax, optax, orbax-checkpoint and ml_collections.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! python -c "import ml_collections" 2>/dev/null && ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-deps --no-index benchmarks/wheels/*.whl
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/gpu.log"

record() {  # runs "$@", keeps its last line if it is JSON
  "$@" 2>&1 | tee -a "$OUT/gpu.log" | tail -1 | grep '^{' >>"$OUT/gpu.jsonl" \
    || echo "FAILED: $*" | tee -a "$OUT/gpu.log"
}

for shape in ${SHAPES:-gpt2_small bert_base}; do
  for attn in xla cudnn; do
    record python -m pjx.cli bench --config "benchmarks/bench_config.py:$shape" \
      --steps "$STEPS" --warmup 3 --config.model.dtype=bfloat16 \
      --config.model.attention_impl="$attn"
  done
  record python benchmarks/hf_reference.py "$shape" --device cuda --bf16 --compile \
    --steps "$STEPS" --warmup 3
done
python - "$OUT/gpu.jsonl" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    who = r.get("backend", "?") + " " + str(r.get("attention_impl", ""))
    print(f"{r.get('model', '?'):>12} {who:<22} {r['tokens_per_s']:>12,.0f} tokens/s  "
          f"{r.get('examples_per_s', r['tokens_per_s'] / r['seq_len']):>9,.0f} seq/s  "
          f"mfu {r.get('mfu', float('nan')):.3f}")
PY
