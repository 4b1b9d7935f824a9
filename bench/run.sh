#!/usr/bin/env bash
# `make bench`: steer's figures and PyTorch's on the same model, in one run, with the ratios the
# issue sets targets on. Absolute numbers drift on shared machines; the ratios are the result.
set -euo pipefail
build=${1:-build}
secs=${BENCH_SECONDS:-5}
out=$(mktemp)
"$build"/steer bench --seconds "$secs" --bf16 | tee "$out"
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

# Learning from users (issue 4): feedback events until a simulated user who likes class k is
# satisfied (>= 80% of the next 50 frames liked), every class, against random frames and
# interactive evolution, in-process. Unsatisfied users count as the budget.
sim=$(mktemp)
OMP_NUM_THREADS=1 "$build"/steer simulate --users "${BENCH_SIM_USERS:-2}" --budget 60 --json | tee "$sim"
/usr/bin/python3 - "$sim" <<'PY'
import json, sys
r = {m["method"]: m for m in map(json.loads, open(sys.argv[1]))}
med = lambda m: m["median_events"] if m["median_events"] is not None else float("inf")
p, e = med(r["policy"]), med(r["evolution"])
print(f"satisfaction_median_events_policy {p}   (target <= 20; {r['policy']['satisfied']}/{r['policy']['users']} satisfied)")
print(f"satisfaction_median_events_evolution {e}   ({r['evolution']['satisfied']}/{r['evolution']['users']} satisfied)")
print(f"satisfaction_median_events_random {med(r['random'])}   ({r['random']['satisfied']}/{r['random']['users']} satisfied)")
print(f"ratio_evolution_vs_policy_events {e / p:.2f}   (target >= 3)")
PY
rm -f "$sim"

# Hot swaps (issue 5): serving frames/s before and after 40 swaps while 8 clients stream, memory,
# and frames lost (none allowed).
swap=$(mktemp)
/usr/bin/python3 bench/swap.py --swaps "${BENCH_SWAPS:-40}" | tee "$swap"
awk '
    { v[$1] = $2 }
    END {
        printf "ratio_fps_after_vs_before_swaps %.2f   (repeated swaps must not slow serving: ~1)\n",
            v["swap_fps_after"] / v["swap_fps_before"]
        printf "swap_frames_lost %d   (target 0)\n", v["swap_seq_gaps"]
    }' "$swap"
rm -f "$swap"
