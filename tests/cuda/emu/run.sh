#!/usr/bin/env bash
# Runs the CUDA tests of a cuemu build (make cuda-emu): tests/cuda/test_cuda_{ops,gen,train} on
# the CPU emulation, then steer serve --device cuda serving a real client, a distill job under
# steer worker on the GPU, then tests/cuda/emu/dist.sh (mpirun -np 2 steer train --device cuda). On cuemu a test must run, not skip: a SKIP line fails here. Each test's
# output goes to BUILD/<test>.log; the last lines of a failing one are printed.
set -u
build=${1:-build-cuemu}
rc=0
# check NAME LOG STATUS START: reads one test's TAP log
check() {
    local t=$1 log=$2 status=$3 start=$4 oks fails
    oks=$(grep -c '^ok ' "$log")
    fails=$(grep -c '^not ok ' "$log")
    if [[ $status -ne 0 || $fails -ne 0 ]]; then
        echo "cuemu: $t FAILED (exit $status, $fails failing checks), $((SECONDS - start)) s; $log ends:"
        tail -n 40 "$log"
        rc=1
    elif grep -q '# SKIP' "$log"; then
        echo "cuemu: $t SKIPPED on cuemu, where it must run:"
        grep '# SKIP' "$log"
        rc=1
    else
        echo "cuemu: $t passed ($oks checks), $((SECONDS - start)) s"
    fi
}
for t in test_cuda_ops test_cuda_gen; do
    start=$SECONDS
    CMOCKA_MESSAGE_OUTPUT=TAP "$build/tests/cuda/$t" >"$build/$t.log" 2>&1
    check "$t" "$build/$t.log" $? "$start"
done
# test_cuda_train, the long one, as two shards side by side (cuemu runs a process on one core)
start=$SECONDS
pids=()
for i in 0 1; do
    STEER_CUDA_SHARD=$i/2 CMOCKA_MESSAGE_OUTPUT=TAP "$build/tests/cuda/test_cuda_train" \
        >"$build/test_cuda_train.$i.log" 2>&1 &
    pids+=($!)
done
for i in 0 1; do
    wait "${pids[$i]}"
    check "test_cuda_train (shard $i of 2)" "$build/test_cuda_train.$i.log" $? "$start"
done
# the server drawing on the GPU: steer serve --device cuda, frames to a real client (steer-client,
# the CPU build's; make builds it); the server's warm-up runs every batch size up to --batch, so
# it is kept small
start=$SECONDS
data=$(mktemp -d)
"$build/steer" serve --port 0 --device cuda --batch 4 --policy-pool 0 --data "$data" \
    >"$build/serve.log" 2>&1 &
serve=$!
url=
for _ in $(seq 1 120); do
    url=$(grep -o 'http://[0-9.:]*/' "$build/serve.log" | head -1)
    [[ -n $url ]] && break
    sleep 1
done
client=build/steer-client
if [[ -z $url ]]; then
    echo "cuemu: steer serve --device cuda FAILED to start:"
    tail -5 "$build/serve.log"
    rc=1
elif ! grep -q "drawing frames on the GPU" "$build/serve.log"; then
    echo "cuemu: steer serve --device cuda did not draw on the (emulated) GPU:"
    head -3 "$build/serve.log"
    rc=1
elif [[ ! -x $client ]]; then
    echo "cuemu: serve check FAILED: no $client (run make first)"
    rc=1
elif out=$("$client" --url "$url" --frames 8 --window 4 --timeout 120 --quiet 2>&1) &&
    [[ $out == "8 frames"* ]]; then
    echo "cuemu: steer serve --device cuda passed ($out), $((SECONDS - start)) s"
else
    echo "cuemu: steer serve --device cuda FAILED: $out"
    rc=1
fi
kill -9 "$serve" 2>/dev/null # (a clean stop would first finish the warm-up, a minute on cuemu)
wait "$serve" 2>/dev/null
rm -rf "$data"
# a distill job under steer worker on the GPU (the teacher, tinyc at width 16, from one CPU step;
# the student at width 8): the worker's GPU wiring for a job whose G step is not gan_step's
start=$SECONDS
job=$(mktemp -d)
if ! "$build/steer" train --device cpu --config tinyc --ch 16 --iters 1 --batch 8 --save-every 0 \
    --sample-every 0 --ckpt-dir "$job/t" --out "$job/teacher.safetensors" >"$build/teacher.log" 2>&1; then
    echo "cuemu: the distill job's teacher FAILED to train:"
    tail -5 "$build/teacher.log"
    rc=1
else
    printf '{"kind": "distill", "teacher": "%s", "ch": 8, "steps": 2, "batch": 8, "log_every": 1, "eval_n": 0, "device": "cuda"}\n' \
        "$job/teacher.safetensors" >"$job/spec.json"
    if "$build/steer" worker --dir "$job" >/dev/null 2>"$build/worker.log" &&
        grep -q "distilling on the GPU" "$build/worker.log" && [[ -f $job/final.safetensors ]]; then
        echo "cuemu: steer worker distill job on the GPU passed, $((SECONDS - start)) s"
    else
        echo "cuemu: steer worker distill job on the GPU FAILED; worker.log ends:"
        tail -8 "$build/worker.log"
        rc=1
    fi
fi
rm -rf "$job"
# data-parallel GPU training under mpirun (NCCL's path and the host's)
if command -v mpirun >/dev/null; then
    start=$SECONDS
    if bash "$(dirname "$0")/dist.sh" "$build"; then
        echo "cuemu: dist.sh passed, $((SECONDS - start)) s"
    else
        echo "cuemu: dist.sh FAILED"
        rc=1
    fi
else
    echo "cuemu: dist.sh FAILED: no mpirun (make deps installs openmpi-bin)"
    rc=1
fi
exit $rc
