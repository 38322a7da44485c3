#!/usr/bin/env bash
# One prepared check of every GPU code path (didi/gpucheck.py says what each part times): on a CUDA machine the
# paper-size DiT (config.yaml + presets/paper.yaml) in about 5 minutes, on synthetic tokens, so the node needs no
# network; without CUDA the config.yaml size, with the CUDA-only parts marked "skipped": "no CUDA".
#   scripts/gpu_check.sh [--out results/gpu_check.json] [--configfile FILE ...] [--timed-steps N] ...
# Writes one JSON (--out) and prints a table. Run it inside the project's environment (`make`, or its .venv).
set -euo pipefail
exec "${PYTHON:-python}" -m didi.gpucheck "$@"
