#!/usr/bin/env bash
# `make bench`: steer's figures and PyTorch's on the same model, in one run, with the ratios the
# issue sets targets on. Absolute numbers drift on shared machines; the ratios are the result.
set -euo pipefail
build=${1:-build}
secs=${BENCH_SECONDS:-5}
out=$(mktemp)
"$build"/steer bench --seconds "$secs" | tee "$out"
/usr/bin/python3 bench/torch_sagan.py bench --train-seconds $((secs * 3)) --gen-seconds "$secs" | tee -a "$out"
awk '
    { v[$1] = $2 }
    END {
        printf "ratio_train_vs_torch %.2f   (target >= 3)\n", v["train_images_per_s"] / v["torch_train_images_per_s"]
        printf "ratio_gen_b1_vs_torch %.2f   (target >= 4)\n", v["gen_b1_images_per_s"] / v["torch_gen_b1_images_per_s"]
        printf "ratio_gen_b64_vs_torch %.2f   (target >= 2)\n", v["gen_b64_images_per_s"] / v["torch_gen_b64_images_per_s"]
    }' "$out"
rm -f "$out"

# The server (issue 3): frames/s and latency to 1/100/1000 clients beside the bare generator.
bash bench/serve.sh "$build"
