#!/usr/bin/env bash
# Independent ceiling for the image figures: strong scikit-learn text classifiers on the same
# development set at the same operating point (bench/safety/ceiling.py says how). Creates a
# virtualenv under target/ with pinned packages from PyPI on first use.
#
# Usage: bench/safety/ceiling.sh [DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${1:-../shared/datasets/safety}
VENV=target/bench-venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet scikit-learn==1.9.1 numpy==2.4.6 scipy==1.17.1
fi
exec "$VENV/bin/python" bench/safety/ceiling.py "$DATA"
