#!/usr/bin/env bash
# `make run`: until the server lands (issue 3), sample the shipped model into a PNG grid.
set -euo pipefail
model=${STEER_MODEL:-models/fmnist32c.safetensors}
out=${STEER_OUT:-runs/samples.png}
if [ ! -f "$model" ]; then
    echo "run: $model is missing (train one: see README, 'Training the shipped model')" >&2
    exit 1
fi
mkdir -p "$(dirname "$out")"
./build/steer sample --ckpt "$model" --n 100 --out "$out" --seed "${STEER_SEED:-1}" --by-class
echo "run: wrote a 10x10 grid of samples of $model to $out (one class per row)"
