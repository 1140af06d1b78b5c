# Sourced by scripts/test.sh and scripts/demo.sh: make (once) and activate the project's venv.
#
# With a CUDA GPU and torch already installed (the H100 image), the venv sees the packages of
#   the environment torch lives in (a .pth file) and installs nothing from the network.
# Without a GPU it installs the CPU torch 2.13.0 that lies on disk (never a multi-GB CUDA
#   build), triton 3.6.0 (the GPU image's compiler, so the CPU checks compile what the GPU runs)
#   and numpy < 2.4 (triton 3.6's interpreter converts 1-element arrays with int(), which
#   numpy 2.4 refuses).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PYFLASHINFER_VENV:-$ROOT/.venv}"
PY=python3
if [ ! -x "$VENV/bin/python" ]; then
  if $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "[setup] CUDA torch found: a venv that sees the environment torch is installed in"
    $PY -m venv "$VENV"
    base_site="$($PY -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))')"
    venv_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    echo "$base_site" > "$venv_site/_base_env.pth"
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  else
    echo "[setup] no GPU: CPU torch 2.13.0 + triton 3.6.0 (Triton interpreter)"
    $PY -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q torch==2.13.0
    "$VENV/bin/python" -m pip install -q triton==3.6.0 "numpy<2.4" pytest pytest-xdist hypothesis
    "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
  fi
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
