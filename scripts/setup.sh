#!/usr/bin/env bash
# Set-up for a fresh machine, one line per step: a CPU build of torch (unless one is installed),
# Chromium for the HTML report's browser test (Debian's package, when missing), then flowbench
# with its test extra, editable. On a GPU cluster install the CUDA build of torch first, e.g.
#   python3 -m pip install torch --index-url https://download.pytorch.org/whl/cu124
# and this script keeps it. FLOWBENCH_NO_BROWSER=1 skips Chromium (its test then skips).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOG=$(mktemp "${TMPDIR:-/tmp}/flowbench-setup.XXXXXX")
trap 'rm -f "$LOG"' EXIT

step() { printf 'setup: %s\n' "$*"; }

# quietly: the command's output goes to $LOG and is shown (its last lines) only when it fails
quietly() {
  if ! "$@" >"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    return 1
  fi
}

if "$PY" -c "import torch" >/dev/null 2>&1; then
  step "torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
else
  step "installing torch (CPU build)..."
  # 2.13.0 is served as a CPU build on the project's CPU machines; elsewhere add
  # --index-url https://download.pytorch.org/whl/cpu to get the CPU wheel.
  quietly "$PY" -m pip install "torch==2.13.0"
fi

browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -n "$browser" ]; then
  step "chromium already installed ($browser)"
elif [ "${FLOWBENCH_NO_BROWSER:-0}" = 1 ]; then
  step "chromium: skipped (FLOWBENCH_NO_BROWSER=1); the HTML report's browser test will skip"
elif ! command -v apt-get >/dev/null 2>&1; then
  step "chromium: not installed and no apt-get here; install Chromium with this system's package manager" \
       "for the HTML report's browser test (it skips meanwhile)"
else
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
      SUDO="sudo -n"
    else
      SUDO="none"
    fi
  fi
  if [ "$SUDO" = none ]; then
    step "chromium: not installed, and installing it needs root; run 'sudo apt-get install -y chromium'" \
         "for the HTML report's browser test (it skips meanwhile)"
  else
    step "installing chromium (apt-get, about a minute)..."
    apt=($SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 -q -y)
    # the package lists may be stale or absent on a fresh image: update them once when the install fails
    if ! "${apt[@]}" install --no-install-recommends chromium >"$LOG" 2>&1; then
      step "updating the package lists (apt-get update)..."
      if ! { quietly "${apt[@]}" update && quietly "${apt[@]}" install --no-install-recommends chromium; }; then
        step "chromium: apt-get could not install it (output above); the HTML report's browser test will skip"
      fi
    fi
  fi
fi

step "installing flowbench (editable, with its test extra)..."
quietly "$PY" -m pip install -e ".[test]"
step "done"
