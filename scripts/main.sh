#!/usr/bin/env bash
# The main job, in one command on a fresh machine:
#   bash scripts/main.sh [OUTPUT_DIR] [extra `focalnet train` flags, e.g. --time-budget 300]
# 1. sets up .venv (scripts/setup.sh: PyTorch, this package, Debian's dataset-fashion-mnist when it can);
# 2. trains a small FocalNet on the full Fashion-MNIST training set (60k images) for about 10 minutes of
#    training (configs/fashion-mnist.yaml; scikit-learn's digits instead, saying so, without Fashion-MNIST);
# 3. evaluates the final weights on the 10k test images (top-1/top-5, per class, confusion matrix);
# 4. writes report.md and pictures/ (gates, modulators and kernels of one test image per class).
# Everything lands in OUTPUT_DIR (default runs/main-DATE-TIME, never overwritten):
#   config.yaml metrics.jsonl summary.json curves.png confusion.png confusion.csv model.safetensors
#   checkpoints/{last,best}.pth   eval/{eval.json,eval.txt,confusion.png,confusion.csv}
#   report.md   pictures/{<image>_modulation.png,kernels.png,pictures.json}
# An interrupted run continues with: .venv/bin/focalnet train --resume OUTPUT_DIR
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${1:-runs/main-$(date +%Y%m%d-%H%M%S)}
shift || true

bash scripts/setup.sh
FOCALNET=(.venv/bin/python -m focalnet.cli)

CONFIG=configs/fashion-mnist.yaml
DATA=fashion-mnist
if ! .venv/bin/python -c "from focalnet.train.data import load_fashion_mnist; load_fashion_mnist()" >/dev/null 2>&1; then
  echo "Fashion-MNIST is not available on this machine (no Debian package, no network):"
  echo "training on scikit-learn's 8x8 digits instead (configs/digits.yaml)."
  CONFIG=configs/digits.yaml
  DATA=digits
fi
mkdir -p "$OUT/eval"

echo "== train: ${FOCALNET[*]} train -c $CONFIG --output $OUT $*"
"${FOCALNET[@]}" train -c "$CONFIG" --output "$OUT" "$@"

echo "== evaluate the final weights on the test split"
"${FOCALNET[@]}" eval "$OUT/model.safetensors" --data "$DATA" --output "$OUT/eval" --progress off \
  | tee "$OUT/eval/eval.txt"

echo "== report and pictures of the modulation"
"${FOCALNET[@]}" report "$OUT" --pictures 4

echo "== done: $OUT/report.md (with summary.json, curves.png, confusion.png, pictures/, metrics.jsonl)"
