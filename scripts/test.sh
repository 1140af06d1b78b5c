#!/usr/bin/env bash
# The test command: bash scripts/test.sh [pytest args]
# Sets up .venv on first use (scripts/setup_env.sh), runs the suite (on the GPU when there is
# one, else through Triton's CPU interpreter), then, without a GPU, compiles every kernel
# variant the tests launched for sm_90 (tools/aot_check.py).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
if python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  # -n 8: compiles dominate; one after another the suite took over 9 min on an H200, 8 workers 2.3 min.
  python -m pytest -q -p no:cacheprovider -n 8 "$@" tests
else
  variants="$(mktemp -d)"
  # -n 2: the two cores share the interpreter's work, and a crashing case fails alone.
  PYFLASHINFER_RECORD_VARIANTS="$variants" python -m pytest -q -p no:cacheprovider -n 2 "$@" tests
  python tools/aot_check.py "$variants"
fi
