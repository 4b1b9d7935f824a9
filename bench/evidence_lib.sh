# Shared by the bench/*_evidence.sh scripts (sourced, not run): what they ask of a worker's run.
# Needs PY (Debian's python3 with python3-msgpack).

# has_done RUN_DIR: does the run's stdout (RUN_DIR/out.msgpack) hold a `done` message?
has_done() {
    [[ -s $1/out.msgpack ]] && $PY - "$1/out.msgpack" <<'PY'
import msgpack, sys
sys.exit(0 if any(m.get("t") == "done" for m in msgpack.Unpacker(open(sys.argv[1], "rb"), raw=False)) else 1)
PY
}

# start_worker RUN_DIR SPEC_JSON: a fresh `steer worker` job there, in the background on one
# thread ($steer, from the caller); $! is its pid.
start_worker() {
    rm -rf "$1"
    mkdir -p "$1"
    printf '%s\n' "$2" >"$1/spec.json"
    OMP_NUM_THREADS=1 "$steer" worker --dir "$1" >"$1/out.msgpack" 2>"$1/log.txt" &
}
