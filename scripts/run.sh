#!/usr/bin/env bash
# `make run`: serves the shipped generator at http://127.0.0.1:8080/ (STEER_HOST / STEER_PORT /
# STEER_MODEL override; extra options in STEER_SERVE_ARGS). Ctrl-C stops it cleanly.
set -euo pipefail
model=${STEER_MODEL:-models/fmnist32c.safetensors}
if [ ! -f "$model" ]; then
    echo "run: $model is missing (train one: see README, 'Training the shipped model')" >&2
    exit 1
fi
echo "run: starting steer serve with $model; open the URL below in a browser (Ctrl-C stops)"
# shellcheck disable=SC2086
exec ./build/steer serve --model "$model" --host "${STEER_HOST:-127.0.0.1}" \
    --port "${STEER_PORT:-8080}" ${STEER_SERVE_ARGS:-}
