#!/usr/bin/env bash
# Set up a virtual environment in .venv with PyTorch, this package and everything the tests and the main
# job need. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch 2.14.1 / torchvision 0.29.1 lie on this machine's disk (pip's cap); any torch >= 2.6 works elsewhere (scripts/check_floors.sh checks the floors)
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  "${PIP[@]}" "torch==2.14.1" "torchvision==0.29.1"
fi
"${PIP[@]}" -e ".[dev]"
# Fashion-MNIST, the main job's data, from Debian's package when this machine can install it
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; } \
    || echo "note: Debian's dataset-fashion-mnist could not be installed; the main job falls back to scikit-learn's digits"
fi
echo "environment ready: $(.venv/bin/python -c 'import torch, focalnet; print("torch", torch.__version__, "| focalnet", focalnet.__version__)')"
