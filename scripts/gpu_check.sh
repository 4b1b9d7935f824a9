#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, for a machine with a GPU but without our build dependencies
# (the accelerator machines lent to sessions: CUDA runtime libraries from pip, no Debian -dev
# packages, nothing to download).
#
#   bash scripts/gpu_check.sh bundle     # here: make CUDA=1 into build-gpu/, then .gpu/ gets the
#                                        # test binaries and steer, and every shared library they
#                                        # need that is neither CUDA's nor the C runtime's
#   bash scripts/gpu_check.sh run [OUT] [all|tests|bench]
#                                        # there, from the repo root with .gpu/ carried: the CUDA
#                                        # tests (every op against the CPU references; G's forward
#                                        # and the whole training step against the CPU's) and steer
#                                        # serve on the GPU build, then the speed figures (steer
#                                        # bench --device cuda beside bench/torch_sagan.py on the
#                                        # same GPU); logs into OUT (default .gpu/out). The third
#                                        # argument, or GPU_CHECK_ONLY, runs one part alone (for a
#                                        # rerun)
#
# CUDA's own libraries (cudart, cuBLAS, cuDNN) are not carried (cuBLASLt alone is 0.5 GB): `run`
# finds them under /usr/local/cuda*/lib* or in the Python packages nvidia-* (pip's CUDA 13 wheels).
# bench/torch_sagan.py travels with the working tree (it is tracked); it runs on that machine's
# python3 and PyTorch.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}

# bench_call LOG DEADLINE TAG COMMAND...: runs COMMAND (stdout and stderr) into LOG between
# "== TAG: ..." lines, under a timeout of at most GPU_BENCH_CALL_S (90) seconds and never past
# DEADLINE (bash's SECONDS); skipped when under 20 s are left. Returns COMMAND's status (1 when
# skipped).
bench_call() {
    local log=$1 deadline=$2 tag=$3
    shift 3
    local left=$((deadline - SECONDS)) limit=${GPU_BENCH_CALL_S:-90} t0=$SECONDS st=0
    if ((left < 20)); then
        echo "== $tag: skipped, the bench step's time is spent: $*" | tee -a "$log"
        return 1
    fi
    ((limit > left)) && limit=$left
    echo "== $tag: $*" >>"$log"
    timeout -k 5 "$limit" "$@" >>"$log" 2>&1 || st=$?
    echo "== $tag: exit $st after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$log"
    return $st
}

# bench_gpu OUT TORCH_LD: issue 6's measurement. For each batch (GPU_BENCH_BATCHES, default 64
# 256 1024) steer's GPU training step and G forward (steer bench --device cuda: images/s,
# effective GFLOP/s, the fraction of the cuBLAS SGEMM peak it measures) beside PyTorch eager's on
# the same GPU (bench/torch_sagan.py bench --device cuda, FP32: TF32 off on both sides), then
# batch 256 once more with TF32 on both sides while time is left, then steer's with BF16
# convolutions (no PyTorch twin: its BF16 is autocast, another recipe). Each figure runs
# GPU_BENCH_SECONDS (3) after its warm-up; the whole step stays within GPU_BENCH_BUDGET (180) s.
# Everything goes to OUT/bench.txt, a summary table to stdout. Returns 1 when a call failed.
bench_gpu() {
    local out=$1 torch_ld=$2 log=$1/bench.txt secs=${GPU_BENCH_SECONDS:-3} st=0 b
    local batches=${GPU_BENCH_BATCHES:-64 256 1024}
    local deadline=$((SECONDS + ${GPU_BENCH_BUDGET:-180}))
    local py
    py=$(command -v python3 || true)
    : >"$log"
    echo "== bench: steer bench --device cuda beside PyTorch eager (bench/torch_sagan.py)," \
        "into $log"
    for b in $batches; do
        bench_call "$log" "$deadline" fp32 .gpu/bin/steer bench --device cuda --batch "$b" \
            --seconds "$secs" || st=1
        if [[ -z $py ]]; then
            echo "== fp32: no python3 here: no PyTorch figures" | tee -a "$log"
            st=1
            continue
        fi
        bench_call "$log" "$deadline" fp32 env LD_LIBRARY_PATH="$torch_ld" PYTHONUNBUFFERED=1 \
            "$py" bench/torch_sagan.py bench --device cuda --batch "$b" --data .gpu/fmnist \
            --train-seconds "$secs" --gen-seconds "$secs" || st=1
    done
    # TF32 (tensor cores for cuBLAS and cuDNN) is a switch on both sides; the target is set in
    # FP32, so this pair comes last and only while the budget lasts (no failure if skipped).
    if [[ -n $py ]] && ((deadline - SECONDS > 60)); then
        bench_call "$log" "$deadline" tf32 .gpu/bin/steer bench --device cuda --batch 256 \
            --seconds "$secs" --tf32 || true
        bench_call "$log" "$deadline" tf32 env LD_LIBRARY_PATH="$torch_ld" PYTHONUNBUFFERED=1 \
            "$py" bench/torch_sagan.py bench --device cuda --batch 256 --data .gpu/fmnist \
            --train-seconds "$secs" --gen-seconds "$secs" --tf32 || true
    fi
    # BF16 convolutions (cuDNN's BF16 configuration, steer bench --bf16): ours only, last
    if ((deadline - SECONDS > 40)); then
        bench_call "$log" "$deadline" bf16 .gpu/bin/steer bench --device cuda --batch 256 \
            --seconds "$secs" --bf16 || true
    fi
    # The clocks and power after the runs (read only), to judge the peak against the card's state.
    { echo "== nvidia-smi after the bench"
      nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
          --format=csv 2>&1 || true; } >>"$log"
    bench_summary "$log" "$batches"
    return $st
}

# bench_summary LOG BATCHES: the table of issue 6 from bench.txt's `name value` lines, grouped
# by the math of the "== fp32|tf32:" section they follow: a row per FP32 batch, then TF32's.
bench_summary() {
    awk -v batches="$2" '
        /^== / { math = $2; sub(/:$/, "", math); next }
        NF >= 2 { v[math, $1] = $2 }
        $1 == "cuda_device" && !dev { dev = substr($0, index($0, $2)) }
        $1 == "torch_device" && !tdev { tdev = substr($0, index($0, $2)) }
        function get(m, k) { return ((m, k) in v) ? v[m, k] : "-" }
        function ratio(a, b) {
            return (a != "-" && b != "-" && b + 0 > 0) ? sprintf("%.2f", a / b) : "-"
        }
        # What PyTorch reported of its math in run m: the new API (>= 2.9) or the old flags.
        function either(m, a, b) { return get(m, a) != "-" ? get(m, a) : get(m, b) }
        function torch_math(m) {
            if (get(m, "torch_tf32") == "-") return
            printf "torch %s run: matmul %s, cudnn conv %s, cudnn.benchmark %s\n", m,
                either(m, "torch_matmul_fp32_precision", "torch_matmul_allow_tf32"),
                either(m, "torch_cudnn_conv_fp32_precision", "torch_cudnn_allow_tf32"),
                get(m, "torch_cudnn_benchmark")
        }
        END {
            print "== bench summary (images/s; ratio = steer / PyTorch eager;" \
                " target >= 3 at batch 256, FP32)"
            print "steer GPU: " (dev ? dev : "-")
            print "torch GPU: " (tdev ? tdev : "-") ", torch " get("fp32", "torch_version")
            printf "FP32 SGEMM peak (cuBLAS): %s GFLOP/s; TF32: %s GFLOP/s\n",
                get("fp32", "cuda_sgemm_peak_gflops"), get("tf32", "cuda_sgemm_tf32_peak_gflops")
            torch_math("fp32")
            torch_math("tf32")
            fmt = "%-5s %6s | %12s %12s %6s | %9s %9s | %12s %12s %6s\n"
            printf fmt, "math", "batch", "train steer", "train torch", "ratio", "GFLOP/s",
                "of peak", "gen steer", "gen torch", "ratio"
            n = split(batches, bs, " ")
            for (i = 1; i <= n + 2; i++) {
                m = i <= n ? "fp32" : i == n + 1 ? "tf32" : "bf16"
                b = i <= n ? bs[i] : 256
                ts = get(m, "cuda_train_b" b "_images_per_s")
                tt = get(m, "torch_train_b" b "_images_per_s")
                gs = get(m, "cuda_gen_b" b "_images_per_s")
                gt = get(m, "torch_gen_b" b "_images_per_s")
                if (m != "fp32" && ts == "-" && tt == "-") continue
                # a BF16 fraction would be of the FP32 SGEMM peak: not shown
                printf fmt, m, b, ts, tt, ratio(ts, tt), get(m, "cuda_train_b" b "_gflops"),
                    m == "bf16" ? "-" : get(m, "cuda_train_b" b "_peak_fraction"), gs, gt,
                    ratio(gs, gt)
            }
        }' "$1"
}

case $cmd in
bundle)
    # Its own build directory, for x86-64-v3 (AVX2, FMA) instead of this machine's -march=native
    # (a later -march wins): the lent machine's CPU is not this one, and an instruction it lacks
    # would kill every binary with SIGILL before a test ran.
    make -j2 CUDA=1 BUILD=build-gpu EXTRA_CFLAGS=-march=x86-64-v3 >/dev/null
    rm -rf .gpu
    mkdir -p .gpu/bin .gpu/lib
    cp build-gpu/steer build-gpu/tests/cuda/test_cuda_ops build-gpu/tests/cuda/test_cuda_gen \
        build-gpu/tests/cuda/test_cuda_train .gpu/bin/
    # test_cuda_train trains on the Fashion-MNIST test set, which the GPU machines lack (4.5 MB)
    mkdir -p .gpu/fmnist
    cp /usr/share/datasets/fashion-mnist/t10k-*-ubyte.gz .gpu/fmnist/
    for b in .gpu/bin/*; do
        ldd "$b" | awk '$3 ~ /^\// { print $3 }'
    done | sort -u | while read -r lib; do
        case $lib in
        /usr/local/cuda*) ;;                                               # found there
        */libc.so.*|*/libm.so.*|*/libpthread.so.*|*/libdl.so.*|*/librt.so.*|*/ld-linux*) ;;
        */libstdc++.so.*|*/libgcc_s.so.*) ;;                              # the C and C++ runtime
        *) cp -L "$lib" .gpu/lib/ ;;
        esac
    done
    # OpenMPI loads plugins at MPI_Init only; the GPU checks never call it. Packed: the libraries
    # are about 100 MB (oneDNN, OpenBLAS), over what a run carries; xz makes them about 20 MB.
    tar -C .gpu -cJf .gpu/bundle.tar.xz bin lib fmnist
    rm -rf .gpu/bin .gpu/lib .gpu/fmnist
    du -sh .gpu
    echo "gpu_check: .gpu/ is ready; carry it (name .gpu in the run's carry) and run: bash scripts/gpu_check.sh run \$OUT"
    ;;
run)
    out=${2:-.gpu/out}
    only=${3:-${GPU_CHECK_ONLY:-all}}
    case $only in
    all|tests|bench) ;;
    *) echo "gpu_check: run: the part is all, tests or bench, not '$only'" >&2; exit 2 ;;
    esac
    mkdir -p "$out"
    [[ -f .gpu/bundle.tar.xz ]] || { echo "gpu_check: no .gpu/bundle.tar.xz (bundle it first, then carry .gpu)" >&2; exit 2; }
    tar -C .gpu -xJf .gpu/bundle.tar.xz
    libs=$PWD/.gpu/lib
    for d in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/local/cuda-13.0/lib64; do
        [[ -d $d ]] && libs=$libs:$d
    done
    # pip's nvidia-* wheels: site-packages/nvidia/<name>/lib
    py=$(command -v python3 || true)
    if [[ -n $py ]]; then
        for d in $("$py" - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
print("\n".join(sorted({os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "*", "lib", "lib*.so*"))})))
PY
        ); do libs=$libs:$d; done
    fi
    # PyTorch keeps the library path it came with: .gpu/lib holds Debian's builds of libraries it
    # may load too (zlib, libgomp, ...).
    torch_ld=${LD_LIBRARY_PATH:-}
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    {
        nvidia-smi || true
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        for b in .gpu/bin/*; do echo "== ldd $b"; ldd "$b" | grep -E "not found|cublas|cudnn|cudart" || true; done
    } >"$out/env.txt" 2>&1
    rc=0
    export STEER_FMNIST_DIR=$PWD/.gpu/fmnist
    if [[ $only != bench ]]; then
        for t in test_cuda_ops test_cuda_gen test_cuda_train; do
            echo "== $t"
            CMOCKA_MESSAGE_OUTPUT=TAP timeout 300 .gpu/bin/$t >"$out/$t.txt" 2>&1 || rc=1
            tail -n 30 "$out/$t.txt"
        done
        echo "== steer serve --device cuda: the log's first lines"
        timeout 20 .gpu/bin/steer serve --port 0 --device cuda --policy-pool 0 --data /tmp/gpu_check_data \
            >"$out/serve.txt" 2>&1 || true
        grep -E "drawing|serving" "$out/serve.txt" || tail -n 5 "$out/serve.txt"
    fi
    if [[ $only != tests ]]; then
        bench_gpu "$out" "$torch_ld" || rc=1
    fi
    exit $rc
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh bundle | run [OUT] [all|tests|bench]" >&2
    exit 2
    ;;
esac
