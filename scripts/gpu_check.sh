#!/usr/bin/env bash
# The GPU checks of docs/gpu.md, for a machine with a GPU but without our build dependencies
# (the accelerator machines lent to sessions: CUDA runtime libraries from pip, no Debian -dev
# packages, nothing to download).
#
#   bash scripts/gpu_check.sh bundle     # here: make CUDA=1 into build-cuda/, then .gpu/ gets the
#                                        # test binaries and steer, and every shared library they
#                                        # need that is neither CUDA's nor the C runtime's
#   bash scripts/gpu_check.sh run [OUT]  # there, from the repo root with .gpu/ carried: the CUDA
#                                        # tests (every op against the CPU references; G's forward
#                                        # and the whole training step against the CPU's) and steer
#                                        # serve on the GPU build, logs into OUT (default .gpu/out)
#
# CUDA's own libraries (cudart, cuBLAS, cuDNN) are not carried (cuBLASLt alone is 0.5 GB): `run`
# finds them under /usr/local/cuda*/lib* or in the Python packages nvidia-* (pip's CUDA 13 wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-}
case $cmd in
bundle)
    make -j2 CUDA=1 BUILD=build-cuda >/dev/null
    rm -rf .gpu
    mkdir -p .gpu/bin .gpu/lib
    cp build-cuda/steer build-cuda/tests/cuda/test_cuda_ops build-cuda/tests/cuda/test_cuda_gen \
        build-cuda/tests/cuda/test_cuda_train .gpu/bin/
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
    export LD_LIBRARY_PATH=$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    {
        nvidia-smi || true
        echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
        for b in .gpu/bin/*; do echo "== ldd $b"; ldd "$b" | grep -E "not found|cublas|cudnn|cudart" || true; done
    } >"$out/env.txt" 2>&1
    rc=0
    export STEER_FMNIST_DIR=$PWD/.gpu/fmnist
    for t in test_cuda_ops test_cuda_gen test_cuda_train; do
        echo "== $t"
        CMOCKA_MESSAGE_OUTPUT=TAP timeout 300 .gpu/bin/$t >"$out/$t.txt" 2>&1 || rc=1
        tail -n 30 "$out/$t.txt"
    done
    echo "== steer serve --device cuda: the log's first lines"
    timeout 20 .gpu/bin/steer serve --port 0 --device cuda --policy-pool 0 --data /tmp/gpu_check_data \
        >"$out/serve.txt" 2>&1 || true
    grep -E "drawing|serving" "$out/serve.txt" || tail -n 5 "$out/serve.txt"
    exit $rc
    ;;
*)
    echo "usage: bash scripts/gpu_check.sh bundle | run [OUT]" >&2
    exit 2
    ;;
esac
