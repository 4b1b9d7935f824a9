#!/usr/bin/env bash
# BF16 convolutions against FP32 (docs/gpu.md, "BF16 on the CPU"): does training stay as stable,
# and does serving draw the same pictures? Needs a CPU with BF16 instructions (AVX512-BF16 or
# AMX; `steer bench --bf16` says bf16_supported 1).
#
#   bash bench/precision_evidence.sh [OUT_DIR]
#
# 1. Generation: the shipped fmnist32c draws the same 10,000 latents (seed 1) in FP32 and in
#    BF16 (steer sample [--bf16]): the pictures' differences in 8-bit pixels, and each set's FD
#    (steer eval --samples, n 10,000; the evaluator computes in FP32 in both).
# 2. Training: fmnist32c from scratch on all of Fashion-MNIST, batch 64, the same seeds in both
#    modes, two `steer worker` jobs side by side (one core each, same steps): FD every
#    PREC_EVAL_EVERY steps (n 2000), the losses, and the training seconds.
#
# Knobs (environment): PREC_STEPS (1200), PREC_SEEDS ("1 2"), PREC_EVAL_EVERY (300). A run whose
# out.msgpack holds `done` is kept (continue an interrupted invocation with the same OUT_DIR).
# About PREC_STEPS / 4 s per seed on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d /tmp/steer_prec.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
steer=$PWD/build/steer
PY=/usr/bin/python3
[[ -x $steer ]] || { echo "precision_evidence: $steer is missing (make)" >&2; exit 1; }
for f in models/fmnist32c.safetensors models/fmnist-eval.safetensors; do
    [[ -f $f ]] || { echo "precision_evidence: $f is needed" >&2; exit 1; }
done
$PY -c 'import msgpack, numpy' 2>/dev/null || { echo "precision_evidence: python3-msgpack and python3-numpy are needed" >&2; exit 1; }
probe=$("$steer" bench --config tiny --batch 8 --seconds 0.01 --bf16 2>&1 || true)
[[ $probe == *"bf16_supported 1"* ]] || {
    echo "precision_evidence: this CPU has no BF16 instructions (steer bench --bf16 says why)" >&2
    exit 1
}
source bench/evidence_lib.sh
steps=${PREC_STEPS:-1200} seeds=${PREC_SEEDS:-1 2} every=${PREC_EVAL_EVERY:-300}
echo "precision_evidence: in $out (training: $steps steps, seeds $seeds)"

# 1. generation
for mode in fp32 bf16; do
    flag=()
    [[ $mode == bf16 ]] && flag=(--bf16)
    [[ -s $out/gen_$mode.npy ]] || "$steer" sample --ckpt models/fmnist32c.safetensors --n 10000 \
        --seed 1 --out "$out/gen_$mode.npy" "${flag[@]}" >/dev/null
    "$steer" eval --samples "$out/gen_$mode.npy" | awk '$1 == "fd" { print $2 }' >"$out/gen_$mode.fd"
done
$PY - "$out" <<'PY'
import numpy as np, os, sys
out = sys.argv[1]
a, b = (np.load(os.path.join(out, f"gen_{m}.npy")) for m in ("fp32", "bf16"))
q = lambda x: np.clip(np.round((x + 1) * 127.5), 0, 255).astype(np.int32)
d = np.abs(q(a) - q(b))
fd = {m: float(open(os.path.join(out, f"gen_{m}.fd")).read()) for m in ("fp32", "bf16")}
print("generation, shipped fmnist32c, 10,000 frames (seed 1), BF16 against FP32:")
print(f"  pixels (8-bit) that differ: {(d > 0).mean():.4f}; by more than 1 level: {(d > 1).mean():.4f};"
      f" largest difference: {d.max()} levels; PSNR {10 * np.log10(255 ** 2 / (d ** 2).mean()):.1f} dB;"
      f" mean |difference| in [-1, 1]: {np.abs(a - b).mean():.2e}")
print(f"  FD (n 10,000): FP32 {fd['fp32']:.2f}, BF16 {fd['bf16']:.2f}")
PY

# 2. training
for seed in $seeds; do
    common="\"config\": \"fmnist32c\", \"steps\": $steps, \"batch\": 64, \"seed\": $seed, \"eval_n\": 2000, \"eval_every\": $every, \"save_every\": 0, \"log_every\": 50"
    run_side_by_side precision_evidence "fp32_s$seed" "{$common}" "bf16_s$seed" "{$common, \"bf16\": true}"
    grep -q "; BF16 convolutions" "$out/bf16_s$seed/log.txt" || {
        echo "precision_evidence: bf16_s$seed did not train in BF16; see its log.txt" >&2
        exit 1
    }
    echo "  seed $seed: done"
done

$PY - "$out" "$seeds" <<'PY'
import math, statistics, sys
sys.path.insert(0, "bench")
from evidence import load_run
out, seeds = sys.argv[1], sys.argv[2].split()

def load(name):
    r = load_run(out, name)
    done, evals, prog = r["done"], [(st, fd) for st, fd, _ in r["evals"]], r["progress"]
    losses = [abs(m[k]) for m in prog for k in ("loss_d", "loss_g") if m.get(k) is not None]
    finite = all(math.isfinite(x) for x in losses)
    ips = statistics.median(m["images_per_s"] for m in prog if m.get("images_per_s"))
    return dict(done=done, evals=evals, finite=finite, worst=max(losses), ips=ips)

print("training, fmnist32c from scratch, batch 64, BF16 against FP32 (one core each, side by side):")
print("| seed | mode | final FD | mean FD of the evaluations | losses finite | largest \\|loss\\| | train images/s (median) |")
print("|---|---|---|---|---|---|---|")
final, mean = {"fp32": [], "bf16": []}, {"fp32": [], "bf16": []}
for s in seeds:
    for mode in ("fp32", "bf16"):
        r = load(f"{mode}_s{s}")
        fds = [fd for _, fd in r["evals"]]
        final[mode].append(r["done"]["fd"])
        mean[mode].append(statistics.mean(fds))
        print(f"| {s} | {mode} | {r['done']['fd']:.2f} | {statistics.mean(fds):.2f} | {'yes' if r['finite'] else 'NO'} | {r['worst']:.3f} | {r['ips']:.0f} |")
for mode in ("fp32", "bf16"):
    print(f"{mode}: mean final FD {statistics.mean(final[mode]):.2f}, mean of the curves {statistics.mean(mean[mode]):.2f}")
print(f"bf16 / fp32: final FD {statistics.mean(final['bf16']) / statistics.mean(final['fp32']):.3f},"
      f" curves {statistics.mean(mean['bf16']) / statistics.mean(mean['fp32']):.3f}")
print("FD curves (step FD):")
for s in seeds:
    for mode in ("fp32", "bf16"):
        print(f"  {mode} seed {s}: " + ", ".join(f"{st} {fd:.1f}" for st, fd in load(f"{mode}_s{s}")["evals"]))
PY
