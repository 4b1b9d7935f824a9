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

# run_side_by_side TAG NAME SPEC [NAME SPEC ...]: the runs OUT/NAME ($out, from the caller) not
# done before start together, one core each, and are waited for; each must then hold `done` (its
# large checkpoints are removed, final.safetensors kept). TAG names the script in messages; a
# failure exits.
run_side_by_side() {
    local tag=$1 pids=() names=() p name
    shift
    while (($# >= 2)); do
        names+=("$1")
        if has_done "$out/$1"; then
            echo "  $1: done before, kept"
        else
            start_worker "$out/$1" "$2"
            pids+=($!)
        fi
        shift 2
    done
    for p in "${pids[@]}"; do
        if ! wait "$p"; then
            echo "$tag: a worker failed; see $out/{${names[*]// /,}}/log.txt" >&2
            kill "${pids[@]}" 2>/dev/null # the others
            exit 1
        fi
    done
    for name in "${names[@]}"; do
        rm -f "$out/$name/latest.safetensors" "$out/$name/eval.safetensors"
        has_done "$out/$name" || { echo "$tag: $name did not finish" >&2; exit 1; }
    done
}
