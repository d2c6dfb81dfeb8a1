#!/usr/bin/env bash
# The steps of a GPU session (issue 14): `bash scripts/gpu_session.sh --help`.
# Runs scripts/gpu_session.py from the repository root with the repository on
# PYTHONPATH (pixeljax need not be installed); on the GPU machine ($OUT set)
# its output also goes to $OUT/gpu-STEP.log, which comes back with the files.
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if [ -n "${OUT:-}" ] && [ -d "$OUT" ] && [ $# -gt 0 ]; then
  name=$(printf 'gpu-%s' "$*" | tr -c 'A-Za-z0-9._-' '-' | cut -c1-80)
  "$python" scripts/gpu_session.py "$@" 2>&1 | tee "$OUT/$name.log"
else
  exec "$python" scripts/gpu_session.py "$@"
fi
