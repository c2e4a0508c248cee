#!/usr/bin/env bash
# Creates .venv and installs visionloom with its test tools and the lmms-eval model. torch is pinned
# to 2.13.0 and installed first: on the project's machines pip takes that CPU build from disk, on a
# GPU machine PyPI's CUDA build of the same version; a looser pin would pull a multi-GB CUDA build
# onto a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[dev,lmms-eval]" "torch==2.13.0"
# lmms-eval asks for torchvision; PyPI's build is a CUDA one that cannot load beside a CPU torch
# ("operator torchvision::nms does not exist"), and transformers' image processors would import it.
# Where it cannot be imported it is removed: nothing here needs it.
if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    .venv/bin/python -m pip uninstall -q -y torchvision
fi
