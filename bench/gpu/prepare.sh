#!/usr/bin/env bash
# Here, before the device call (bench/gpu/README.md): fills the ignored folder .gpu, which the call
# carries, with what the device copy needs and cannot get there (it has no .git and no network):
#   .gpu/commit   the commit measured;
#   .gpu/wheels/  the build's own requirements as wheels, for a machine whose setuptools is older
#                 than 77 (those refuse pyproject.toml's SPDX `license`): setuptools 81.0.0, with
#                 which the build was rehearsed here against torch 2.11 (bench/gpu/README.md), and
#                 packaging >= 24.2, which it needs for that field. The build section installs them
#                 only there.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
rm -rf .gpu
mkdir -p .gpu/wheels
git rev-parse HEAD > .gpu/commit
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d .gpu/wheels \
    "setuptools==81.0.0" "packaging>=24.2"
echo "prepared .gpu for commit $(cat .gpu/commit):"
ls -l .gpu/wheels
