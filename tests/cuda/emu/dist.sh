#!/usr/bin/env bash
# Data-parallel GPU training on cuemu: `mpirun -np 2 steer train --device cuda` must match one
# process with the combined batch, with gradients averaged by NCCL (cuemu's: MPI underneath) and
# through the host (STEER_DP_REDUCE=nccl, =host; generator/dist_cuda.c). As tests/test_dist.c
# checks the CPU path: learning rates 0, so after the run Adam's moments hold the averaged
# gradients (m the last step's, v the sum of squares), compared tensor by tensor. Then once more
# (NCCL) with R1, the L1 activation penalty and orthogonal regularization on: each is a mean over
# the batch (or the same in every process), so the split must not change it either.
#   bash tests/cuda/emu/dist.sh [BUILD]     (default build-cuemu; needs mpirun and numpy)
set -u
build=${1:-build-cuemu}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
args="train --device cuda --config tinyc --iters 2 --batch 8 --seed 4 --lr-g 0 --lr-d 0
      --save-every 0 --sample-every 0 --log-every 1"
tech="--set r1_gamma=1 --set l1_act=0.01 --set ortho_beta=0.001"
rc=0
for one in one one-tech; do
    extra=$([[ $one == one-tech ]] && echo "$tech")
    "$build/steer" $args $extra --ckpt-dir "$dir/$one" >"$dir/$one.log" 2>&1 ||
        { echo "cuemu dist: one process ($one) failed:"; tail -5 "$dir/$one.log"; exit 1; }
    grep -q "training on the GPU" "$dir/$one.log" ||
        { echo "cuemu dist: one process ($one) not on the GPU"; grep -m2 "training on" "$dir/$one.log"; exit 1; }
done
for run in nccl host nccl-tech; do
    mode=${run%-tech}
    extra=$([[ $run == *-tech ]] && echo "$tech")
    one=$([[ $run == *-tech ]] && echo one-tech || echo one)
    STEER_DP_REDUCE=$mode mpirun -np 2 --oversubscribe -x STEER_DP_REDUCE "$build/steer" $args \
        $extra --ckpt-dir "$dir/$run" >"$dir/$run.log" 2>&1 ||
        { echo "cuemu dist: mpirun ($run) failed:"; tail -5 "$dir/$run.log"; rc=1; continue; }
    want=$([[ $mode == nccl ]] && echo "NCCL over 2 processes" || echo "averaged through the host")
    if ! grep -q "training on the GPU.*$want" "$dir/$run.log"; then
        echo "cuemu dist: $run: the log does not say \"$want\":"
        grep -m2 "training on" "$dir/$run.log"
        rc=1
        continue
    fi
    /usr/bin/python3 - "$dir/$run/latest.safetensors" "$dir/$one/latest.safetensors" "$run" <<'PY' || rc=1
import json, struct, sys
import numpy as np

def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        head = json.loads(f.read(n))
        body = f.read()
    out = {}
    for name, t in head.items():
        if name == "__metadata__" or t["dtype"] != "F32":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(body[a:b], dtype=np.float32).astype(np.float64)
    return out

dp, one, mode = read(sys.argv[1]), read(sys.argv[2]), sys.argv[3]
bad = seen = 0
for name, b in one.items():
    for suffix, atol, rtol in ((".adam_m", 1e-6, 1e-3), (".adam_v", 1e-10, 2e-3)):
        if name.endswith(suffix):
            a = dp[name]
            seen += 1
            over = np.abs(a - b) > atol + rtol * np.abs(b)
            if over.any():
                bad += 1
                i = int(np.argmax(np.abs(a - b)))
                print(f"cuemu dist: {mode}: {name}: {int(over.sum())} of {b.size} differ; worst {a[i]} vs {b[i]}")
if seen < 10:
    print(f"cuemu dist: {mode}: only {seen} moment tensors compared")
    sys.exit(1)
print(f"cuemu dist: {mode}: {seen} Adam moment tensors of 2 processes equal one process's "
      f"(combined batch) within tolerance" if not bad else f"cuemu dist: {mode}: {bad} tensors differ")
sys.exit(1 if bad else 0)
PY
done
exit $rc
