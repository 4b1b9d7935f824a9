#!/usr/bin/env bash
# Runs every test binary in its own process with a timeout, reads cmocka's TAP output, and
# prints "N passed, N failed". A binary that crashes, times out or prints no result counts as a
# failure. Exits non-zero on any failure.
set -uo pipefail
build=${1:-build}
timeout_s=${TEST_TIMEOUT:-600}
passed=0
failed=0
for t in "$build"/tests/test_*; do
    [ -x "$t" ] || continue
    case "$t" in *.o|*.d) continue ;; esac
    name=$(basename "$t")
    log=$(mktemp)
    CMOCKA_MESSAGE_OUTPUT=TAP timeout "$timeout_s" "$t" >"$log" 2>&1
    rc=$?
    ok=$(grep -c '^ok ' "$log")
    bad=$(grep -c '^not ok ' "$log")
    passed=$((passed + ok))
    failed=$((failed + bad))
    if [ "$rc" -ne 0 ] && [ "$bad" -eq 0 ]; then
        failed=$((failed + 1))
        echo "FAIL $name: exited $rc without a failing test (crash or timeout)"
    fi
    if [ "$rc" -ne 0 ] || [ "$bad" -ne 0 ]; then
        sed 's/^/    /' "$log" | tail -n 60
    fi
    echo "$name: $ok passed, $bad failed (exit $rc)"
    rm -f "$log"
done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
