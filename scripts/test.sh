#!/usr/bin/env bash
# README's second set-up command: install brainvq with its test extras into .venv and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --upgrade pip >/dev/null
python -m pip install torch==2.13.0          # CPU build first: an unpinned torch would pull a multi-GB CUDA build
python -m pip install -c constraints.txt -e ".[test]"
python -m ruff check .                      # lint first: line length 120, import order, pyflakes (pyproject.toml)
# two pytest-xdist workers (the suite runs mostly one process at a time: ~1.1 of 2 cores busy), each taking whole
# files, so a file's module fixtures are built once; tests/conftest.py starts the end-to-end files first
python -m pytest -n 2 --dist loadfile --no-loadscope-reorder -ra --durations=15 "$@"
