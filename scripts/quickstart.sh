#!/usr/bin/env bash
# README's first set-up command: install brainvq into .venv and run the whole pipeline on the demo set.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip >/dev/null
python -m pip install torch==2.13.0          # CPU build first: an unpinned torch would pull a multi-GB CUDA build
python -m pip install -c constraints.txt -e .
mlflow run . --env-manager local "$@"
