#!/usr/bin/env bash
# Runs the CUDA tests of a cuemu build (make cuda-emu): tests/cuda/test_cuda_{ops,gen,train} on
# the CPU emulation. On cuemu a test must run, not skip: a SKIP line fails here. Each test's
# output goes to BUILD/<test>.log; the last lines of a failing one are printed.
set -u
build=${1:-build-cuemu}
rc=0
for t in test_cuda_ops test_cuda_gen test_cuda_train; do
    bin=$build/tests/cuda/$t
    log=$build/$t.log
    start=$SECONDS
    CMOCKA_MESSAGE_OUTPUT=TAP "$bin" >"$log" 2>&1
    status=$?
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
done
exit $rc
