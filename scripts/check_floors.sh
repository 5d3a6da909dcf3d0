#!/usr/bin/env bash
# Install focalnet[all] in a clean virtual environment at the dependency floors pyproject.toml declares, then
# import it and run what users run: a forward pass of every family, a training step with activation
# recompute, the four checkpoint layouts written and read back, the fused model, the CLI on real data.
#   bash scripts/check_floors.sh [VENV_DIR]        (default /tmp/focalnet-floors; needs the package index)
# torchvision is pinned to the release made with the torch floor; numpy, pillow etc. resolve freely.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-/tmp/focalnet-floors}
floor() {  # the version after ">=" of a requirement in pyproject.toml
  grep -o "\"$1>=[0-9.]*" pyproject.toml | head -1 | sed 's/.*>=//'
}
TORCH=$(floor torch); TIMM=$(floor timm); SAFETENSORS=$(floor safetensors); HUB=$(floor huggingface_hub)
declare -A TORCHVISION=([2.4]=0.19.0 [2.5]=0.20.0 [2.6]=0.21.0 [2.7]=0.22.0 [2.8]=0.23.0)
MINOR=$(echo "$TORCH" | cut -d. -f1,2)
TV=${TORCHVISION[$MINOR]:?no torchvision known for torch $TORCH: add it to this script}
echo "floors: torch==$TORCH torchvision==$TV timm==$TIMM safetensors==$SAFETENSORS huggingface_hub==$HUB"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
  "torch==$TORCH" "torchvision==$TV" "timm==$TIMM" "safetensors==$SAFETENSORS" "huggingface_hub==$HUB" ".[all]"
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -i -E "^(torch|torchvision|timm|safetensors|huggingface.hub|numpy|onnx|onnxruntime|pillow) " || true
cd /tmp  # the installed package, not the source tree
"$VENV/bin/python" "$OLDPWD/scripts/floors_smoke.py"
"$VENV/bin/focalnet" --version
OUT=$(mktemp -d)
"$VENV/bin/focalnet" train --data digits --epochs 2 --arch embed_dim=16 "depths=[1,1]" patch_size=2 --output "$OUT/run" --progress off \
  | tail -2
"$VENV/bin/focalnet" eval "$OUT/run/model.safetensors" --data digits --progress off | head -3
# ONNX: a fixed-size export with the dynamo exporter, a dynamic one with the torchscript exporter (torch 2.6's
# dynamo exporter fixes a shape of a dynamic export: the verification refuses it and says to use this one)
"$VENV/bin/focalnet" export --checkpoint "$OUT/run/model.safetensors" --format onnx --out "$OUT/fixed.onnx"
"$VENV/bin/focalnet" export --checkpoint "$OUT/run/model.safetensors" --format onnx --dynamic --exporter torchscript \
  --out "$OUT/dynamic.onnx"
rm -rf "$OUT"
echo "floors OK: torch $TORCH, timm $TIMM, safetensors $SAFETENSORS, huggingface_hub $HUB"
