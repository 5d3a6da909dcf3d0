#!/usr/bin/env bash
# The figures of docs/speed.md ("Measured"), in one go (about 20 minutes on 2 cores with a warm inductor cache).
# Run from the repository root on an idle machine; OUT is where the raw JSON and logs go. Every table names the
# CPU, its ISA and the allocator setting above it. Ratios are within one run: eager and compiled variants of every
# implementation are timed in the same process, in blocks of consecutive calls interleaved between variants.
set -euo pipefail
OUT=${OUT:-bench_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
# inference, batch 1 (warm) and 16: ours eager, fused, compiled (fullgraph, freezing), fused + compiled; timm's
# FocalNet-T and ConvNeXt-T eager and compiled
$PY -m focalnet.cli bench --impl ours --impl ours-fused --impl timm --impl convnext_t --compile --latency \
    --batch-size 16 --warmup 2 --rounds 6 --block 3 --cold --json "$OUT/infer.json" | tee "$OUT/infer.txt"
# training step, batch 16 (forward, backward, AdamW), eager and compiled, with peak memory (fresh processes)
$PY -m focalnet.cli bench --mode train --impl ours --impl timm --impl convnext_t --compile --batch-size 16 \
    --warmup 2 --rounds 4 --block 2 --peak-memory --json "$OUT/train.json" | tee "$OUT/train.txt"
# does compiling the main job's training step pay (the rule of `focalnet train --compile auto`)
$PY benchmarks/train_step_speed.py --only 1-2-2 --batch-sizes 128 --compile --rounds 10 --block 5 \
    | tee "$OUT/train_step_compile.txt"
# compilation with a cold inductor cache (the figures above may reuse compiled kernels from earlier runs)
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) $PY -m focalnet.cli bench --impl ours-compiled --batch-size 16 --warmup 1 \
    --rounds 2 --block 1 | tee "$OUT/compile_cold.txt"
# ALL=1: also the older tables of docs/speed.md (allocator settings, linear cost, bf16)
if [ "${ALL:-0}" = 1 ]; then
  NOFAULT="MALLOC_MMAP_THRESHOLD_=10000000000 MALLOC_TRIM_THRESHOLD_=10000000000"
  $PY -m focalnet.cli bench --compare --latency --batch-size 16 --rounds 6 --warmup 2 --json "$OUT/infer_default.json" | tee "$OUT/infer_default.txt"
  env $NOFAULT $PY -m focalnet.cli bench --compare --latency --batch-size 16 --rounds 6 --warmup 2 --json "$OUT/infer_nofault.json" | tee "$OUT/infer_nofault.txt"
  $PY benchmarks/linear_cost.py --rounds 3 | tee "$OUT/linear_cost.txt"
  $PY -m focalnet.cli bench --dtype bfloat16 --impl ours --impl ours-fused --impl timm --batch-size 16 --rounds 1 --warmup 1 --json "$OUT/infer_bf16.json" | tee "$OUT/infer_bf16.txt"
  $PY benchmarks/bf16_agreement.py | tee "$OUT/bf16_agreement.txt"
fi
