#!/usr/bin/env bash
# Create .venv (if missing) and install hashkd with its test extras into it. Idempotent.
# Usage: scripts/setup.sh [EXTRAS]   (default extras: dev,milvus)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-dev,milvus}
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
stamp=.venv/.hashkd-installed-$extras
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[$extras]"
  touch "$stamp"
fi
