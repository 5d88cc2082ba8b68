#!/usr/bin/env bash
# Installs OpenNMT-py 3.5.1 into a throwaway virtual environment for the peer benchmark
# (scripts/peers/onmt_benchmark.py), on nmt's own torch instead of the torch it pins (<2.3).
#
#   scripts/peers/install_onmt.sh [NMT_PYTHON] [VENV]
#
# NMT_PYTHON: the interpreter whose environment has torch (default .venv/bin/python);
# VENV: where to create the environment (default .peers/onmt-venv, git-ignored).
#
# How: the new environment gets a .pth file naming NMT_PYTHON's site-packages, so it imports
# that torch (and numpy, PyYAML, sacrebleu, tensorboard) without copying them; its own
# site-packages comes first on sys.path. OpenNMT-py is installed with --no-deps, then only
# the runtime dependencies that `onmt_build_vocab`, `onmt_train` and `onmt_translate` import:
# pyonmttok (its vocabularies), configargparse, six, and rapidfuzz and pyahocorasick (imported
# by transforms that `onmt.transforms` loads eagerly). spacy and fasttext are imported by the
# same eager loading (the `terminology` and `clean` transforms, unused here) but are large, so
# they are replaced by placeholder modules that raise if anything is taken from them.
# ctranslate2, flask, waitress (release_model, server) are not installed.
# Removing VENV undoes everything; nothing outside it is written.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
nmt_python=${1:-$root/.venv/bin/python}
venv=${2:-$root/.peers/onmt-venv}

base=$("$nmt_python" -c 'import sys; print(sys.base_prefix)')
ver=$("$nmt_python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
sites=$("$nmt_python" -c 'import sysconfig; p = sysconfig.get_paths(); print(p["purelib"]); print(p["platlib"])' | sort -u)
"$nmt_python" -c 'import torch; print("torch", torch.__version__, "from", torch.__file__)'

if [ -e "$venv" ] && [ ! -f "$venv/pyvenv.cfg" ]; then
    echo "error: $venv exists and is not a virtual environment; not touching it" >&2
    exit 2
fi
rm -rf "$venv"
"$base/bin/python$ver" -m venv "$venv"
own_site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$sites" > "$own_site/_nmt_torch.pth"

"$venv/bin/python" -m pip install --quiet --no-deps \
    OpenNMT-py==3.5.1 "pyonmttok>=1.37,<2" configargparse six rapidfuzz pyahocorasick

for mod in spacy fasttext; do
    mkdir -p "$own_site/$mod"
    cat > "$own_site/$mod/__init__.py" <<PY
"""Placeholder installed by nmt's scripts/peers/install_onmt.sh: OpenNMT-py imports $mod at
start-up (an unused transform); the benchmark never uses it."""


def __getattr__(name):
    raise RuntimeError("$mod is a placeholder here (scripts/peers/install_onmt.sh)")
PY
done

"$venv/bin/python" - <<'PY'
import importlib

import torch

for m in ("onmt.bin.build_vocab", "onmt.bin.train", "onmt.bin.translate"):
    importlib.import_module(m)
import onmt

print("OpenNMT-py", onmt.__version__, "on torch", torch.__version__, "from", torch.__file__)
PY
echo "installed into $venv"
