#!/usr/bin/env bash
# Every figure of docs/speed.md, in one go (about 15 minutes on 2 cores). Run from the repository root on an
# idle machine; OUT is where the raw JSON and logs go. NOFAULT is the allocator setting that removes glibc's
# page faults (PERF.md fact 1); both settings are measured, each in its own process.
set -euo pipefail
OUT=${OUT:-bench_results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python}
NOFAULT="MALLOC_MMAP_THRESHOLD_=10000000000 MALLOC_TRIM_THRESHOLD_=10000000000"
$PY -m focalnet.cli bench --compare --latency --batch-size 16 --rounds 6 --warmup 2 --json "$OUT/infer_default.json" | tee "$OUT/infer_default.txt"
env $NOFAULT $PY -m focalnet.cli bench --compare --latency --batch-size 16 --rounds 6 --warmup 2 --json "$OUT/infer_nofault.json" | tee "$OUT/infer_nofault.txt"
$PY -m focalnet.cli bench --mode train --impl ours --impl timm --batch-size 16 --rounds 3 --warmup 1 --peak-memory --json "$OUT/train_default.json" | tee "$OUT/train_default.txt"
$PY benchmarks/linear_cost.py --rounds 3 | tee "$OUT/linear_cost.txt"
$PY -m focalnet.cli bench --dtype bfloat16 --impl ours --impl ours-fused --impl timm --batch-size 16 --rounds 1 --warmup 1 --json "$OUT/infer_bf16.json" | tee "$OUT/infer_bf16.txt"
$PY benchmarks/bf16_agreement.py | tee "$OUT/bf16_agreement.txt"
