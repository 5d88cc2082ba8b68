#!/usr/bin/env bash
# Create a virtual environment and install nmt (editable) with its dev extra.
# torch: reuse one the environment can already import; else install TORCH_SPEC.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
torch_spec=${3:-torch}

if [ ! -x "$venv/bin/python" ]; then
  if "$python" -c 'import torch' 2>/dev/null; then
    echo "install: reusing the torch that $python already has"
    "$python" -m venv --system-site-packages "$venv"
  else
    "$python" -m venv "$venv"
  fi
fi
if ! "$venv/bin/python" -c 'import torch' 2>/dev/null; then
  echo "install: no torch found; installing $torch_spec"
  "$venv/bin/python" -m pip install -q "$torch_spec"
fi
"$venv/bin/python" -m pip install -q -e ".[dev]"
"$venv/bin/python" -c 'import torch, nmt; print(f"install: torch {torch.__version__}, nmt ready")'
