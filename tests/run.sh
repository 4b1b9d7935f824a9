#!/usr/bin/env bash
# Runs every test in its own process with a timeout and reads its TAP output: the C unit test
# binaries (cmocka), then the integration tests that drive a real `steer serve` with real clients
# (tests/server/README.md), then the protocol, abuse and feedback tests once more against the
# AddressSanitizer build when build-asan/steer exists. A test that crashes, times out or prints no result counts as a
# failure. Prints "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
build=${1:-build}
timeout_s=${TEST_TIMEOUT:-600}
root=$(cd "$(dirname "$0")/.." && pwd)
passed=0
failed=0
skipped=0

# run_one NAME COMMAND...: runs one test file, adds its ok / not ok lines to the totals.
run_one() {
    local name=$1
    shift
    local log
    log=$(mktemp)
    CMOCKA_MESSAGE_OUTPUT=TAP timeout "$timeout_s" "$@" >"$log" 2>&1
    local rc=$?
    local ok bad skip
    # A skipped test (cmocka's TAP prints "not ok N # SKIP ...": the machine lacks what it needs,
    # a CPU feature or a GPU) is neither a pass nor a failure.
    ok=$(grep -c '^ok ' "$log")
    skip=$(grep -Ec '^(not )?ok [0-9]* *# SKIP' "$log")
    bad=$(($(grep -c '^not ok ' "$log") - $(grep -Ec '^not ok [0-9]* *# SKIP' "$log")))
    ok=$((ok - $(grep -Ec '^ok [0-9]* *# SKIP' "$log")))
    passed=$((passed + ok))
    failed=$((failed + bad))
    skipped=$((skipped + skip))
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        failed=$((failed + 1))
        echo "FAIL $name: exited $rc without a failing test (crash or timeout)"
    fi
    if [ "$ok" -eq 0 ] && [ "$bad" -eq 0 ] && [ "$skip" -eq 0 ] && [ "$rc" -eq 0 ]; then
        failed=$((failed + 1))
        echo "FAIL $name: printed no result"
    fi
    if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
        sed 's/^/    /' "$log" | tail -n 80
    fi
    echo "$name: $ok passed, $bad failed$([ "$skip" -gt 0 ] && echo ", $skip skipped") (exit $rc)"
    rm -f "$log"
}

for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue ;; esac
    run_one "$(basename "$t")" "$t"
done

export STEER_ROOT=$root
export STEER_BIN=$root/$build/steer
export STEER_CLIENT_BIN=$root/$build/steer-client
cd "$root"
for t in tests/test_*.py tests/server/test_*.py tests/server/test_*.sh tests/web/test_*.mjs; do
    [ -f "$t" ] || continue
    case "$t" in
    *.py) run_one "$t" /usr/bin/python3 "$t" ;;
    *.sh) run_one "$t" bash "$t" ;;
    *.mjs) run_one "$t" node "$t" ;;
    esac
done

# The server under AddressSanitizer/UBSan: the protocol and abuse tests again.
if [ -x build-asan/steer ]; then
    export STEER_BIN=$root/build-asan/steer
    export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=0:halt_on_error=1:detect_leaks=1}
    export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$root/tests/lsan.supp:print_suppressions=0}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
    export STEER_ASAN=1
    for t in tests/server/test_protocol.py tests/server/test_abuse.py tests/server/test_feedback.py; do
        [ -f "$t" ] && run_one "$t (asan)" /usr/bin/python3 "$t"
    done
fi

echo "$passed passed, $failed failed$([ "$skipped" -gt 0 ] && echo " ($skipped skipped)")"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
