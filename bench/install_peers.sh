#!/usr/bin/env bash
# Install the peer libraries the compat tests and the benchmarks compare against:
# higher, torchopt, jax (CPU build; optional: bench/peers/jax.py) from PyPI and learn2learn 0.2.0 (its sdist ships Cython-generated C that does
# not compile on Python 3.11: the three .pyx files are regenerated with cython<3 first).
# Never lets a peer replace the installed torch.
#   usage: bench/install_peers.sh [PYTHON]        (default: .venv/bin/python)
set -euo pipefail
PY=${1:-.venv/bin/python}
PIP="$PY -m pip --disable-pip-version-check -q"
TORCH_BEFORE=$($PY -c 'import torch; print(torch.__version__)')

have() { $PY -c "import $1" 2>/dev/null; }
# learn2learn's full import needs gym, torchvision, ...: only check that it is installed.
installed() { $PY -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)"; }

# higher: pure Python, its only dependency is torch.
have higher || $PIP install --no-deps higher
# torchopt pins its own torch range: install without deps, then its light dependencies.
if ! have torchopt; then
    $PIP install --no-deps torchopt
    $PIP install optree typing-extensions numpy graphviz
fi
# jax: the JAX peer of bench/bench_peers.py and bench/gpu (its CPU wheel; a GPU machine brings its own).
have jax || $PIP install jax

if ! installed learn2learn; then
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
    $PIP download --no-deps --no-binary :all: -d "$WORK" learn2learn==0.2.0
    tar -xzf "$WORK"/learn2learn-0.2.0.tar.gz -C "$WORK"
    SRC="$WORK/learn2learn-0.2.0"
    # cython<3 in a throw-away venv, so the project's venv keeps its own packages.
    $PY -m venv "$WORK/cy"
    "$WORK/cy/bin/python" -m pip --disable-pip-version-check -q install "cython<3"
    (cd "$SRC" && find learn2learn -name '*.pyx' -print0 | xargs -0 -n1 "$WORK/cy/bin/cython" -3 --fast-fail)
    # learn2learn's install_requires pulls gym, gsutil, torchvision, qpth, ...: the meta-learning
    # core (algorithms, utils) needs none of them beyond numpy and torch.
    $PIP install --no-deps --no-build-isolation "$SRC"
fi

TORCH_AFTER=$($PY -c 'import torch; print(torch.__version__)')
if [ "$TORCH_BEFORE" != "$TORCH_AFTER" ]; then
    echo "install_peers: torch changed from $TORCH_BEFORE to $TORCH_AFTER" >&2
    exit 1
fi
# learn2learn's full import wants gym, torchvision, ...: check its meta-learning core, as the
# tests and the benchmark load it (bench/peers/real.py).
$PY - <<'PY'
import torch
from bench.peers import real as _peers
found = _peers.versions()
print("peers:", ", ".join(f"{k} {v}" for k, v in found.items()), "| torch", torch.__version__)
missing = [k for k, v in found.items() if v is None]
if missing:
    raise SystemExit(f"install_peers: {missing} do not import")
PY
