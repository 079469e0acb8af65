#!/usr/bin/env bash
# Set-up for a fresh machine: a CPU build of torch (unless one is installed), then flowbench
# with its test extra, editable. On a GPU cluster install the CUDA build of torch first, e.g.
#   python3 -m pip install torch --index-url https://download.pytorch.org/whl/cu124
# and this script keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  # 2.13.0 is served as a CPU build on the project's CPU machines; elsewhere add
  # --index-url https://download.pytorch.org/whl/cpu to get the CPU wheel.
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test]"
