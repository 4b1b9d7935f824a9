#!/usr/bin/env bash
# Training evidence (issue 5, docs/training.md "Evidence"): transfer vs scratch on 100 sneakers,
# distillation into a narrower student, and each regularizer on one short run. Every run is a
# `steer worker --dir RUN` job (docs/jobs.md); its msgpack stdout is decoded into tables.
#
#   bash bench/training_evidence.sh [OUT_DIR]
#
# Run from anywhere (it cd's to the repo root: the worker's evaluator path is relative). OUT_DIR
# (default: a new temp folder) gets one folder per run: spec.json, out.msgpack (the worker's
# stdout), log.txt (its stderr), wall.txt. A run whose out.msgpack already holds a `done` message
# is not run again, so an interrupted run of the script can be continued with the same OUT_DIR.
# Exits non-zero if a worker fails. Not part of `make test` or `make bench`: about 14 minutes on 2
# idle cores with the defaults (docs/training.md, "Evidence", has the results).
#
# Knobs (environment):
#   EVIDENCE_ONLY        space-separated subset of: transfer distill reg (default: all three)
#   EVIDENCE_BUILD       build folder (default: build)
#   TRANSFER_STEPS       600   steps of each transfer/scratch run (eval every TRANSFER_EVAL_EVERY)
#   TRANSFER_EVAL_EVERY  100
#   TRANSFER_BATCH       64
#   TRANSFER_NOFREEZE    1     also a transfer run without FreezeD (0: skip)
#   DISTILL_STEPS        1500  distillation steps (eval every DISTILL_EVAL_EVERY, eval_n 2000)
#   DISTILL_EVAL_EVERY   250
#   DISTILL_CH           16    the student's width (the teacher fmnist32c has 32)
#   REG_STEPS            200   steps of each regularizer run (FD at the end, eval_n 1000)
#   REG_ROWS             the regularizer rows to run (default: all ten, names below)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-$(mktemp -d /tmp/steer_evidence.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${EVIDENCE_BUILD:-build}
[[ $build == /* ]] || build=$root/$build
steer=$build/steer
only=${EVIDENCE_ONLY:-transfer distill reg}
teacher=models/fmnist32c.safetensors
[[ -x $steer ]] || { echo "training_evidence: $steer is missing (make -j2)" >&2; exit 1; }
[[ -f $teacher && -f models/fmnist-eval.safetensors ]] || {
    echo "training_evidence: models/fmnist32c.safetensors and models/fmnist-eval.safetensors are needed" >&2
    exit 1
}
PY=/usr/bin/python3
$PY -c 'import msgpack' 2>/dev/null || { echo "training_evidence: python3-msgpack is needed" >&2; exit 1; }

echo "training_evidence: runs in $out ($(nproc) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset})"
t_all=$(date +%s)

source bench/evidence_lib.sh

# run NAME SPEC_JSON: one worker job in OUT/NAME, from the repo root
run() {
    local name=$1 spec=$2 dir="$out/$1"
    if has_done "$dir"; then
        echo "  $name: done before ($(cat "$dir/wall.txt" 2>/dev/null || echo ?) s), kept"
        return 0
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    printf '%s\n' "$spec" >"$dir/spec.json"
    local t0 t1 rc=0
    t0=$(date +%s.%N)
    "$steer" worker --dir "$dir" >"$dir/out.msgpack" 2>"$dir/log.txt" || rc=$?
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f\n", b - a }' >"$dir/wall.txt"
    rm -f "$dir/latest.safetensors" "$dir/eval.safetensors" # keep final.safetensors only
    if [[ $rc -ne 0 ]] || ! has_done "$dir"; then
        echo "training_evidence: worker $name failed (exit $rc); the end of $dir/log.txt:" >&2
        tail -n 20 "$dir/log.txt" >&2
        exit 1
    fi
    echo "  $name: $(cat "$dir/wall.txt") s"
}

want() { [[ " $only " == *" $1 "* ]]; }

# 1. Transfer vs scratch: 100 images of class 7 (sneakers), FD against the test set's sneakers.
if want transfer; then
    ts=${TRANSFER_STEPS:-600} te=${TRANSFER_EVAL_EVERY:-100} tb=${TRANSFER_BATCH:-64}
    common="\"classes\": [7], \"limit\": 100, \"steps\": $ts, \"batch\": $tb, \"eval_every\": $te, \"eval_n\": 1000, \"seed\": 1, \"save_every\": 0, \"log_every\": 10, \"parent\": \"$teacher\""
    echo "1. transfer vs scratch ($ts steps, batch $tb, 100 sneakers)"
    run transfer_scratch "{\"config\": \"fmnist32c\", $common}"
    run transfer_freezed "{\"init\": \"$teacher\", \"set\": {\"freeze_d\": 2}, $common}"
    [[ ${TRANSFER_NOFREEZE:-1} == 0 ]] || run transfer_nofreeze "{\"init\": \"$teacher\", $common}"
fi

# 2. Distillation of the shipped fmnist32c into a ch-16 student.
if want distill; then
    ds=${DISTILL_STEPS:-1500} de=${DISTILL_EVAL_EVERY:-250} dch=${DISTILL_CH:-16}
    echo "2. distillation (ch $dch, $ds steps)"
    run distill "{\"kind\": \"distill\", \"teacher\": \"$teacher\", \"ch\": $dch, \"steps\": $ds, \"batch\": 64, \"eval_n\": 2000, \"eval_every\": $de, \"seed\": 1, \"save_every\": 0, \"log_every\": 10}"
    # the worker times each G for about a second; a steadier figure: `steer bench --ckpt`, 3 s
    # each, teacher and student alternated twice
    if [[ ! -s $out/distill/bench.txt ]]; then
        for _ in 1 2; do
            for who in teacher student; do
                ck=$teacher
                [[ $who == teacher ]] || ck=$out/distill/final.safetensors
                "$steer" bench --ckpt "$ck" --batch 64 --seconds 3 | awk -v w=$who '$1 == "ckpt_gen_images_per_s" { print w, $2 }'
            done
        done >"$out/distill/bench.txt"
    fi
fi

# 3. Each regularizer alone on the same short run.
declare -A reg_set=(
    [baseline]='{}'
    [r1]='{"r1_gamma": 1}'
    [gp]='{"gp_lambda": 10}'
    [ortho]='{"ortho_beta": 5e-5}'
    [wd]='{"weight_decay": 1e-4}'
    [l1_act]='{"l1_act": 1e-3}'
    [d_dropout]='{"d_dropout": 0.3}'
    [ema]='{"ema_decay": 0.999}'
    [no_sn_g]='{"sn_g": 0}'
    [no_sn_d]='{"sn_d": 0}'
)
reg_order="baseline r1 gp ortho wd l1_act d_dropout ema no_sn_g no_sn_d"
if want reg; then
    rs=${REG_STEPS:-200}
    echo "3. regularizers ($rs steps each, batch 64, seed 1)"
    for r in ${REG_ROWS:-$reg_order}; do
        [[ -n ${reg_set[$r]:-} ]] || { echo "training_evidence: unknown REG_ROWS entry '$r'" >&2; exit 2; }
        run "reg_$r" "{\"config\": \"fmnist32c\", \"steps\": $rs, \"batch\": 64, \"eval_n\": 1000, \"seed\": 1, \"save_every\": 0, \"log_every\": 10, \"set\": ${reg_set[$r]}}"
    done
fi

echo "training_evidence: runs took $(($(date +%s) - t_all)) s"
echo

# The tables: every run folder of OUT that finished, whichever invocation ran it.
REG_ORDER="$reg_order" $PY - "$out" <<'PY'
import json, math, msgpack, os, statistics, sys

out = sys.argv[1]

def load(name):
    d = os.path.join(out, name)
    p = os.path.join(d, "out.msgpack")
    if not os.path.exists(p):
        return None
    msgs = list(msgpack.Unpacker(open(p, "rb"), raw=False))
    done = next((m for m in msgs if m.get("t") == "done"), None)
    if done is None:
        return None
    spec = json.load(open(os.path.join(d, "spec.json")))
    wall = float(open(os.path.join(d, "wall.txt")).read()) if os.path.exists(os.path.join(d, "wall.txt")) else math.nan
    evals = [(m["step"], m["fd"], m["seconds"]) for m in msgs if m.get("t") == "eval"]
    evals.append((done["step"], done["fd"], None))  # the final FD (same n, same latents)
    if spec.get("init") and spec.get("init") == spec.get("parent") and done.get("parent_fd") is not None:
        evals.insert(0, (0, done["parent_fd"], 0.0))  # a transfer run's start: the parent itself
    speeds = [m["images_per_s"] for m in msgs if m.get("t") == "progress" and m["step"] > spec.get("log_every", 10)]
    return dict(spec=spec, done=done, evals=evals, wall=wall,
                ips=statistics.median(speeds) if speeds else math.nan)

def f(x, p=2):
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{p}f}"

def best_of(r):  # (FD, step) of the run's lowest FD
    return min((fd, s) for s, fd, _ in r["evals"] if fd == fd)

def first_below(evals, thr):
    return next((s for s, fd, _ in evals if fd == fd and fd <= thr), None)

# 1. transfer
runs = [(n, load(n)) for n in ("transfer_scratch", "transfer_freezed", "transfer_nofreeze")]
runs = [(n, r) for n, r in runs if r]
if runs:
    label = {"transfer_scratch": "scratch", "transfer_freezed": "transfer + FreezeD 2",
             "transfer_nofreeze": "transfer, no FreezeD"}
    sp = runs[0][1]["spec"]
    print(f"## 1. Transfer vs scratch: 100 images of class 7, batch {sp['batch']}, FD at n {sp['eval_n']} "
          f"against the test set's class-7 images")
    start = next((r["done"]["parent_fd"] for _, r in runs if r["done"].get("parent_fd") is not None), None)
    print(f"(step 0 of a transfer run is the shipped fmnist32c itself drawing class 7: FD {f(start)}; "
          f"seconds count from the worker's first step)\n")
    print("| step | " + " | ".join(f"{label[n]} FD (s)" for n, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    steps = sorted({s for _, r in runs for s, _, _ in r["evals"]})
    for s in steps:
        cells = []
        for _, r in runs:
            e = next((e for e in r["evals"] if e[0] == s), None)
            cells.append("" if e is None else f"{f(e[1])} ({f(e[2], 0) if e[2] is not None else f(r['wall'], 0) + ' total'})")
        print(f"| {s} | " + " | ".join(cells) + " |")
    print("| best FD (step) | " + " | ".join("%s (%d)" % (f(b[0]), b[1]) for b in map(best_of, (r for _, r in runs))) + " |")
    print("| mean FD, steps > 0 | " + " | ".join(
        f(statistics.mean(fd for s, fd, _ in r["evals"] if s > 0 and fd == fd), 1) for _, r in runs) + " |")
    print("| train images/s (median) | " + " | ".join(f(r["ips"], 0) for _, r in runs) + " |")
    # a threshold every run reaches: the worst of the runs' best FDs
    best = [best_of(r)[0] for _, r in runs]
    thr = max(best)
    print(f"\nfirst step at or under an FD (step 0: a transfer run's start; in brackets: the first "
          f"step > 0, after training began); {thr:.2f} is the highest of the runs' best FDs:")
    for t in (thr, 1.25 * thr, 1.5 * thr):
        cells = []
        for n, r in runs:
            a = first_below(r["evals"], t)
            b = first_below([e for e in r["evals"] if e[0] > 0], t)
            cells.append(f"{label[n]} {'never' if a is None else a}"
                         + ("" if a == b else f" [{'never' if b is None else b}]"))
        print(f"  FD <= {t:.2f}: " + ", ".join(cells))
    print()

# 2. distill
r = load("distill")
if r:
    d = r["done"]
    print(f"## 2. Distillation: fmnist32c (ch 32) into ch {r['spec']['ch']}, {d['step']} steps, batch 64, "
          f"FD at n {d['eval_n']} (all classes)\n")
    tfd = d["parent_fd"]
    print("| step | student FD | student / teacher FD | seconds |")
    print("|---|---|---|---|")
    for s, fd, sec in r["evals"]:
        print(f"| {s} | {f(fd)} | {f(fd / tfd if tfd else math.nan)} | {f(sec, 0) if sec is not None else f(r['wall'], 0) + ' total'} |")
    sp, tsp = d["gen_images_per_s"], d["parent_gen_images_per_s"]
    print(f"\nteacher FD {f(tfd)}; student FD {f(d['fd'])} ({f(d['fd'] / tfd)}x)")
    print(f"generation at batch 64: student {f(sp, 0)} images/s, teacher {f(tsp, 0)} images/s ({f(sp / tsp)}x)")
    print(f"distillation train images/s (median): {f(r['ips'], 0)}")
    bp = os.path.join(out, "distill", "bench.txt")
    if os.path.exists(bp):
        b = {}
        for line in open(bp):
            w, v = line.split()
            b.setdefault(w, []).append(float(v))
        bs, bt = statistics.mean(b["student"]), statistics.mean(b["teacher"])
        print(f"steer bench --ckpt (batch 64, 2 x 3 s each): student {bs:.0f} images/s, teacher {bt:.0f} ({bs / bt:.2f}x)")
    hit = first_below(r["evals"], 1.2 * tfd)
    fd_ok = d["fd"] <= 1.2 * tfd
    ratios = [("worker, ~1 s each", sp / tsp)] + ([("steer bench", bs / bt)] if os.path.exists(bp) else [])
    print(f"target: FD <= 1.2 x teacher's = {f(1.2 * tfd)} -> "
          f"{'not met' if hit is None else 'first met at step ' + str(hit)}, "
          f"{'met' if fd_ok else 'not met'} at the end; speed >= 2x -> "
          + ", ".join(f"{'met' if x >= 2 else 'NOT met'} by {w} ({x:.2f}x)" for w, x in ratios))
    print()

# 3. regularizers
rows = [(n, load("reg_" + n)) for n in os.environ["REG_ORDER"].split()]
rows = [(n, r) for n, r in rows if r]
if rows:
    base = dict(rows).get("baseline")
    sp = rows[0][1]["spec"]
    print(f"## 3. Regularizers: fmnist32c from scratch, {sp['steps']} steps, batch 64, seed 1, FD at n 1000\n")
    print("| run | set | final FD | FD / baseline | train images/s (median) | wall s |")
    print("|---|---|---|---|---|---|")
    for n, r in rows:
        fd = r["done"]["fd"]
        rel = fd / base["done"]["fd"] if base else math.nan
        print(f"| {n} | `{json.dumps(r['spec'].get('set', {}))}` | {f(fd)} | {f(rel)} | {f(r['ips'], 0)} | {f(r['wall'], 0)} |")
    print()
PY
