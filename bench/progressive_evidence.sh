#!/usr/bin/env bash
# Progressive growing against fixed-size training at equal wall time (issue 5; docs/training.md,
# "Evidence"). Each seed runs two `steer worker` jobs side by side, one core each
# (OMP_NUM_THREADS=1), so that both arms see the same machine at the same time: fmnist32c from
# scratch at 32x32 throughout, and the same with the progressive schedule (8x8, fade into 16x16,
# 16x16, fade into 32x32, 32x32). Both stop after the same training time (spec key `seconds`;
# their FD evaluations are not counted) and are measured the same way (FD, n 2000, all classes).
#
#   bash bench/progressive_evidence.sh [OUT_DIR]
#
# Knobs (environment): PROG_SECONDS (360) training seconds per run; PROG_SEEDS ("1 2");
# PROG_STABLE (300) and PROG_FADE (300) the schedule's steps; PROG_EVAL_EVERY (300) steps between
# FD evaluations; PROG_BATCH (64). A run whose out.msgpack holds `done` is kept (continue an
# interrupted invocation with the same OUT_DIR). About (PROG_SECONDS + 60) s per seed.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/steer_prog.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
steer=$PWD/build/steer
PY=/usr/bin/python3
[[ -x $steer ]] || { echo "progressive_evidence: $steer is missing (make)" >&2; exit 1; }
[[ -f models/fmnist-eval.safetensors ]] || { echo "progressive_evidence: models/fmnist-eval.safetensors is needed" >&2; exit 1; }
$PY -c 'import msgpack' 2>/dev/null || { echo "progressive_evidence: python3-msgpack is needed" >&2; exit 1; }
secs=${PROG_SECONDS:-360} seeds=${PROG_SEEDS:-1 2} stable=${PROG_STABLE:-300} fade=${PROG_FADE:-300}
every=${PROG_EVAL_EVERY:-300} batch=${PROG_BATCH:-64}
echo "progressive_evidence: runs in $out ($secs s each, seeds $seeds, schedule stable $stable fade $fade)"

source bench/evidence_lib.sh
for seed in $seeds; do
    common="\"config\": \"fmnist32c\", \"steps\": 1000000, \"seconds\": $secs, \"batch\": $batch, \"seed\": $seed, \"eval_n\": 2000, \"eval_every\": $every, \"save_every\": 0, \"log_every\": 50"
    run_side_by_side progressive_evidence "fixed_s$seed" "{$common}" \
        "prog_s$seed" "{$common, \"set\": {\"prog_stable\": $stable, \"prog_fade\": $fade}}"
    echo "  seed $seed: done"
done

$PY - "$out" "$seeds" <<'PY'
import statistics, sys
sys.path.insert(0, "bench")
from evidence import load_run
out, seeds = sys.argv[1], sys.argv[2].split()

def load(name):
    r = load_run(out, name)
    r["full"] = next((m["step"] for m in r["progress"]
                      if m.get("resolution", 32) == 32 and m.get("alpha", 1) == 1), None)
    return r

print("| seed | arm | steps in the budget | training s | first step at 32x32, alpha 1 | final FD |")
print("|---|---|---|---|---|---|")
final = {"fixed": [], "prog": []}
for s in seeds:
    for arm in ("fixed", "prog"):
        r = load(f"{arm}_s{s}")
        d = r["done"]
        final[arm].append(d["fd"])
        print(f"| {s} | {arm} | {d['step']} | {d['seconds']:.0f} | {r['full'] if arm == 'prog' else 0} | {d['fd']:.2f} |")
print()
for arm in ("fixed", "prog"):
    print(f"{arm}: mean final FD {statistics.mean(final[arm]):.2f} over {len(final[arm])} seeds")
print(f"prog / fixed: {statistics.mean(final['prog']) / statistics.mean(final['fixed']):.3f}")
print()
print("FD curves (step, FD, training seconds):")
for s in seeds:
    for arm in ("fixed", "prog"):
        r = load(f"{arm}_s{s}")
        print(f"  {arm} seed {s}: " + ", ".join(f"{st} {fd:.1f} ({sec:.0f} s)" for st, fd, sec in r["evals"]))
PY
