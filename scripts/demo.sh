#!/usr/bin/env bash
# The main job: bash scripts/demo.sh
# Decode and prefill attention checked against the fp32 reference: on the GPU when there is
# one, through Triton's CPU interpreter otherwise.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
python examples/demo.py "$@"
