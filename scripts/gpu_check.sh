#!/usr/bin/env bash
# The GPU check: scripts/gpu_check.py's sections (see its docstring) in one run, under
# 10 minutes on one GPU, with the report in OUT_DIR (report.md, report.json, logs).
#
#   scripts/gpu_check.sh OUT_DIR [--dry-run] [gpu_check.py options...]
#
# Python: $PYTHON, else .venv/bin/python if it imports torch, else python3. The machine's own
# torch is used whatever its build (never installed here). The other dependencies are used if
# importable; if not, they are installed with pip --no-index from the wheels in .whl/
# (git-ignored; `make wheels` fills it on a machine with a package index), so no index is
# needed. nmt itself is not installed: PYTHONPATH points at this checkout.
# --dry-run: no GPU needed; the Python parts run on the CPU at tiny sizes (a smoke test).
# Exit status: 0 all sections passed, 1 some failed, 2 bad usage or missing dependencies,
# 3 no CUDA device (and not --dry-run).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

if [ $# -lt 1 ] || [ "${1:0:1}" = "-" ]; then
  echo "error: OUT_DIR: usage: scripts/gpu_check.sh OUT_DIR [--dry-run] [options]" >&2
  exit 2
fi
out=$1
shift
mkdir -p "$out" || exit 2

py=${PYTHON:-}
if [ -z "$py" ]; then
  if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
    py=.venv/bin/python
  else
    py=python3
  fi
fi
if ! "$py" -c 'import torch' 2>/dev/null; then
  echo "error: PYTHON: $py cannot import torch; the check uses the machine's own torch build" >&2
  exit 2
fi

# module -> distribution, for what nmt, the tests and the check import (tensorboard not needed)
declare -A dists=(
  [numpy]=numpy [sentencepiece]=sentencepiece [sacrebleu]=sacrebleu [hydra]=hydra-core
  [omegaconf]=omegaconf [tqdm]=tqdm [pytest]=pytest
)
missing=()
for mod in "${!dists[@]}"; do
  "$py" -c "import $mod" 2>/dev/null || missing+=("${dists[$mod]}")
done
if [ ${#missing[@]} -gt 0 ]; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: .whl: missing ${missing[*]} and no wheels in .whl/ (run 'make wheels' where a package index is reachable)" >&2
    exit 2
  fi
  echo "gpu_check: installing ${missing[*]} from .whl/ (no index)"
  if ! "$py" -m pip install -q --no-index --find-links .whl "${missing[@]}"; then
    echo "error: .whl: pip could not install ${missing[*]} from .whl/ (wheels for another Python or platform?)" >&2
    exit 2
  fi
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUBLAS_WORKSPACE_CONFIG=${CUBLAS_WORKSPACE_CONFIG:-:4096:8}
export PYTHONUNBUFFERED=1
timeout 590 "$py" scripts/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_check: stopped at the 590 s limit; partial report in $out" >&2
exit "$rc"
