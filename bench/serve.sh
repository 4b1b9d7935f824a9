#!/usr/bin/env bash
# The server's figures for `make bench` (issue 3), all in one run so they can be read as ratios:
#   - the bare generator forward of the served model at the server's batch size (images/s);
#   - a real `steer serve` on loopback driven by steer-client: aggregate frames/s and p50/p99
#     frame latency (credit sent -> frame received) with 1, 100 and 1000 connections, closed loop
#     (each connection keeps a window of credits outstanding);
#   - latency at half load: 500 connections, open loop, paced so that together they ask for half of
#     the frames/s the 1000-connection run delivered;
#   - 100 stalled readers (they grant credit and stop reading) beside 100 normal connections,
#     against the same 100 connections alone, in steady state (after a 3 s warm-up);
#   - feedback acknowledged per second by the SQLite store, and the send -> ack latency.
# Prints `name value` lines, then the ratios the issue sets targets on.
set -euo pipefail
build=${1:-build}
secs=${BENCH_SERVE_SECONDS:-6}
model=${STEER_MODEL:-models/fmnist32c.safetensors}
batch=${BENCH_SERVE_BATCH:-64}
window=${BENCH_SERVE_WINDOW:-2}
out=$(mktemp)
log=$(mktemp)
server_pid=
cleanup() {
    [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$out" "$log" "${data:-}"
}
trap cleanup EXIT

"$build"/steer bench --ckpt "$model" --batch "$batch" --seconds "$secs" | tee "$out"

data=$(mktemp -d)
"$build"/steer serve --model "$model" --port 0 --batch "$batch" --data "$data" --quiet >"$log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do grep -q 'serving' "$log" && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*/' "$log" | head -1)
[ -n "$url" ] || { echo "bench: the server did not start:"; cat "$log"; exit 1; }

# load NAME ARGS...: one steer-client run; prints NAME_fps, NAME_p50_ms, NAME_p99_ms.
load() {
    local name=$1
    shift
    "$build"/steer-client --url "$url" --duration "$secs" --json "$@" |
        /usr/bin/python3 -c '
import json, sys
name = sys.argv[1]
d = json.loads(sys.stdin.read())
if d.get("errors") or d.get("violations") or d.get("failed_connections"):
    sys.exit(f"bench: {name}: client reported errors: {d}")
for k in ("fps", "p50_ms", "p99_ms"):
    print(f"{name}_{k} {d[k]:.2f}")
' "$name" | tee -a "$out"
}

load serve_c1 --connections 1 --window "$window"
load serve_c100 --connections 100 --window "$window"
load serve_c1000 --connections 1000 --window "$window"
full=$(awk '$1 == "serve_c1000_fps" { print $2 }' "$out")
per_conn=$(/usr/bin/python3 -c "print(f'{0.5 * $full / 500:.3f}')")
echo "serve_half_load_target_fps $(/usr/bin/python3 -c "print(f'{0.5 * $full:.1f}')")" | tee -a "$out"
load serve_half --connections 500 --fps "$per_conn" --window 8
# Steady state: a stalled reader first takes up to --max-unread (32) frames before the server stops
# drawing for it, a bounded one-off cost, so both runs measure after a 3 s warm-up.
load serve_alone100 --connections 100 --window "$window" --warmup 3 --duration $((secs + 2))
load serve_stalled100 --connections 200 --stall 100 --window "$window" --warmup 3 --duration $((secs + 2))

# Feedback into the SQLite store (issue 4): acks/s and send -> ack latency, 16 connections x 16 in
# flight, on the same server.
/usr/bin/python3 bench/feedback.py "$url" --seconds "$secs" | tee -a "$out"

awk '
    { v[$1] = $2 }
    END {
        bare = v["ckpt_gen_images_per_s"]
        printf "ratio_serve_c1000_vs_bare_gen %.2f   (target >= 0.70)\n", v["serve_c1000_fps"] / bare
        printf "ratio_serve_c100_vs_bare_gen %.2f\n", v["serve_c100_fps"] / bare
        printf "serve_half_load_p99_ms %.1f   (target <= 50)\n", v["serve_half_p99_ms"]
        printf "ratio_throughput_with_100_stalled %.2f   (target >= 0.90)\n",
            v["serve_stalled100_fps"] / v["serve_alone100_fps"]
        printf "feedback_acks_per_s %.0f   (target >= 5000, synchronous=FULL)\n", v["feedback_acks_per_s"]
        printf "feedback_ack_p99_ms %.1f   (target <= 50)\n", v["feedback_ack_p99_ms"]
        printf "policy_update_p99_ms %.1f   (feedback -> new policy drawing frames; target <= 50)\n", v["policy_update_p99_ms"]
    }' "$out"
