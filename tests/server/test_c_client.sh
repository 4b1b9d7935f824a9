#!/usr/bin/env bash
# test_c_client.sh — steer-client (clients/c) against a real `steer serve`: single-stream PNG and
# raw8 runs whose files are checked byte by byte, load runs (closed loop, open loop, stalled readers)
# whose JSON summary is checked, the error paths (server error, closed port, usage), and the
# server's clean exit on SIGTERM. Prints TAP; exits non-zero when any check failed.
# Environment: STEER_BIN (build/steer), STEER_CLIENT_BIN (build/steer-client), STEER_ROOT (.).
set -uo pipefail
cd "${STEER_ROOT:-.}" || exit 1
steer=${STEER_BIN:-build/steer}
client=${STEER_CLIENT_BIN:-build/steer-client}
py=/usr/bin/python3

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() { n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"; }
check() { # check "what" command...: ok when the command succeeds
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

tmp=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# ---- the server --------------------------------------------------------------------------------
"$steer" serve --port 0 --data "$tmp/data" >"$tmp/server.out" 2>"$tmp/server.err" &
server_pid=$!
http=
for _ in $(seq 1 300); do # model load and listen: up to 30 s
    http=$(sed -n 's#^steer: serving .* at \(http://[^ ]*\)$#\1#p' "$tmp/server.out" | head -n 1)
    [ -n "$http" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$http" ]; then
    not_ok "steer serve --port 0 prints its URL"
    sed 's/^/# /' "$tmp/server.out" "$tmp/server.err"
    echo "1..$n"
    exit 1
fi
ok "steer serve --port 0 prints its URL ($http)"
url="ws://${http#http://}"
url="${url%/}/ws"

# Runs the client with a timeout; stdout to $tmp/out, stderr to $tmp/err, returns its status.
run_client() {
    timeout 120 "$client" "$@" >"$tmp/out" 2>"$tmp/err"
}
show() { sed 's/^/# /' "$tmp/out" "$tmp/err"; }

# One field of the JSON line in $tmp/out checked by a Python expression over `r`.
json_check() {
    "$py" -c 'import json,sys; r=json.loads(open(sys.argv[1]).read().strip().splitlines()[-1]); sys.exit(0 if eval(sys.argv[2]) else 1)' \
        "$tmp/out" "$1" 2>>"$tmp/err"
}

# ---- (a) 12 gallery PNG frames ----------------------------------------------------------------
if run_client --url "$url" --frames 12 --window 4 --out "$tmp/png" --quiet; then
    ok "gallery png: 12 frames, exit 0"
else
    not_ok "gallery png: 12 frames, exit 0 (status $?)"
    show
fi
check "gallery png: stats line names 12 frames" grep -q '^12 frames in ' "$tmp/out"
# Every file is a complete 32x32 8-bit gray PNG that Pillow (python3-pil) decodes whole.
check "gallery png: frame-0..11.png are valid 32x32 PNGs" "$py" - "$tmp/png" <<'EOF'
import os, sys
from PIL import Image
d = sys.argv[1]
names = sorted(os.listdir(d))
want = sorted("frame-%d.png" % i for i in range(12))
if names != want:
    sys.exit("files: %s" % names)
for name in names:
    with Image.open(os.path.join(d, name)) as im:
        assert im.format == "PNG" and im.size == (32, 32) and im.mode == "L", (name, im.size, im.mode)
        assert len(im.tobytes()) == 32 * 32, name
EOF

# ---- (b) walk mode, raw8 -----------------------------------------------------------------------
if run_client --url "$url" --mode walk --format raw8 --frames 12 --out "$tmp/walk" --quiet; then
    ok "walk raw8: 12 frames, exit 0"
else
    not_ok "walk raw8: 12 frames, exit 0 (status $?)"
    show
fi
run_client --url "$url" --mode gallery --format raw8 --frames 12 --out "$tmp/gallery" --quiet ||
    show
# raw8 frames are written as PGM (1 channel) or PPM (3); a walk moves a little per frame, so
# consecutive walk frames differ far less than independent gallery samples do.
check "walk raw8: 12 PGM/PPM files of 32x32, consecutive frames close" "$py" - "$tmp/walk" "$tmp/gallery" <<'EOF'
import os, sys
def frames(d):
    out = []
    for i in range(12):
        for ext, c in (("pgm", 1), ("ppm", 3)):
            p = os.path.join(d, "frame-%d.%s" % (i, ext))
            if os.path.exists(p):
                b = open(p, "rb").read()
                hdr = b"P%d\n32 32\n255\n" % (5 if c == 1 else 6)
                assert b.startswith(hdr) and len(b) == len(hdr) + 32 * 32 * c, p
                out.append(b[len(hdr):])
                break
        else:
            sys.exit("missing frame %d in %s" % (i, d))
    return out
def mean_step(fr):
    return sum(sum(abs(a - b) for a, b in zip(x, y)) / len(x) for x, y in zip(fr, fr[1:])) / (len(fr) - 1)
walk, gallery = mean_step(frames(sys.argv[1])), mean_step(frames(sys.argv[2]))
print("# mean |frame[i+1]-frame[i]|: walk %.2f, gallery %.2f" % (walk, gallery))
assert walk < 0.25 * gallery, (walk, gallery)
EOF

# ---- pair mode and --json in single-stream mode -------------------------------------------------
if run_client --url "$url" --mode pair --frames 6 --json; then ok "pair: 6 frames, exit 0"; else
    not_ok "pair: 6 frames, exit 0"
    show
fi
check "pair: JSON says 6 frames, 0 errors" json_check 'r["frames"] == 6 and r["errors"] == 0'

# ---- (c) 50 connections, 2 s, closed loop ------------------------------------------------------
if run_client --url "$url" --connections 50 --duration 2 --warmup 0.5 --window 4 --json; then
    ok "load 50x2s: exit 0"
else
    not_ok "load 50x2s: exit 0"
    show
fi
sed 's/^/# /' "$tmp/out"
check "load 50x2s: frames > 0, errors == 0, all 50 connected" \
    json_check 'r["frames"] > 0 and r["errors"] == 0 and r["connected"] == 50 and r["failed_connections"] == 0 and r["p99_ms"] >= r["p50_ms"] > 0'

# ---- open loop ---------------------------------------------------------------------------------
if run_client --url "$url" --connections 10 --duration 2 --warmup 0.5 --fps 20 --window 4 --json; then
    ok "open loop 10x20fps: exit 0"
else
    not_ok "open loop 10x20fps: exit 0"
    show
fi
sed 's/^/# /' "$tmp/out"
# 10 connections at 20 credits/s for 1.5 s offer 300 frames; allow for the pace's phase.
check "open loop 10x20fps: about 300 frames, no errors" \
    json_check '100 <= r["frames"] <= 320 and r["errors"] == 0'

# ---- (d) stalled readers -----------------------------------------------------------------------
if run_client --url "$url" --connections 20 --stall 5 --duration 3 --warmup 1 --json; then
    ok "20 connections, 5 stalled: exit 0"
else
    not_ok "20 connections, 5 stalled: exit 0"
    show
fi
sed 's/^/# /' "$tmp/out"
check "20 connections, 5 stalled: every other connection still gets frames, no errors" \
    json_check 'r["stalled"] == 5 and r["min_conn_frames"] > 0 and r["errors"] == 0 and r["connected"] == 20'

# ---- errors ------------------------------------------------------------------------------------
run_client --url "$url" --class 99 --frames 2
status=$?
check "a server error exits 1 and names its code" \
    bash -c '[ "$0" -eq 1 ] && grep -q "server error bad_field" "$1"' "$status" "$tmp/err"

# (e) a port nobody listens on: bind one, close it, connect there.
closed_port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
run_client --url "ws://127.0.0.1:$closed_port/ws" --timeout 10
status=$?
check "connecting to a closed port exits non-zero with a message" \
    bash -c '[ "$0" -ne 0 ] && grep -q "cannot connect to ws://127.0.0.1:$1/ws" "$2"' "$status" "$closed_port" "$tmp/err"
run_client --url "ws://127.0.0.1:$closed_port/ws" --connections 3 --duration 1 --warmup 0 --json
status=$?
check "load run against a closed port: exit 1, failed_connections == 3" \
    bash -c '[ "$0" -eq 1 ]' "$status"
check "load run against a closed port: JSON says so" json_check 'r["failed_connections"] == 3 and r["connected"] == 0'

run_client --frames 0
status=$?
check "a usage error exits 2" bash -c '[ "$0" -eq 2 ] && grep -q -- "--frames" "$1"' "$status" "$tmp/err"

# ---- the server stops cleanly ------------------------------------------------------------------
kill -TERM "$server_pid"
server_status=
for _ in $(seq 1 150); do # up to 15 s
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid"
        server_status=$?
        break
    fi
    sleep 0.1
done
if [ "$server_status" = 0 ]; then
    ok "steer serve exits 0 on SIGTERM"
else
    not_ok "steer serve exits 0 on SIGTERM (status ${server_status:-still running})"
    sed 's/^/# /' "$tmp/server.err"
fi
server_pid=

echo "1..$n"
echo "# $((n - failed)) passed, $failed failed"
[ "$failed" -eq 0 ]
