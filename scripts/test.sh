#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite on 2 processes. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n 2 -q "$@"
