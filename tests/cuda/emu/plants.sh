#!/usr/bin/env bash
# Shows that the CUDA tests on cuemu can fail: plants one bug at a time in a scratch copy of the
# tree (never this one), rebuilds the cuemu build there, and runs the test that should catch it.
# Each line says "caught" (the test failed or cuemu stopped it) or "MISSED". Exit status: the
# number missed. Slow (a rebuild and a test per bug); not part of make test or CI.
#
#   bash tests/cuda/emu/plants.sh [SCRATCH_DIR]    # default /tmp/steer-cuemu-plants
#   PLANTS="name ..." bash tests/cuda/emu/plants.sh # only those plants
set -u
only=${PLANTS:-}
src=$(cd "$(dirname "$0")/../../.." && pwd)
dir=${1:-/tmp/steer-cuemu-plants}
mkdir -p "$dir"
# The tracked and untracked files of this tree (not build outputs), then the copy's own build.
(cd "$src" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -C "$dir" -xf -
cd "$dir"
git init -q 2>/dev/null; git add -A >/dev/null 2>&1; git -c user.name=p -c user.email=p@p commit -qm base >/dev/null 2>&1
make CUDA=1 CUDA_EMU=1 BUILD=build-cuemu -j2 build-cuemu/tests/cuda/test_cuda_ops \
    build-cuemu/tests/cuda/test_cuda_gen build-cuemu/tests/cuda/test_cuda_train \
    build-cuemu/steer >/dev/null 2>&1 ||
    { echo "plants: the unplanted build fails"; exit 100; }

missed=0
# plant NAME FILE SED_EXPR TEST
plant() {
    local name=$1 file=$2 expr=$3 test=$4
    [[ -n $only && " $only " != *" $name "* ]] && return
    sed -i "$expr" "$file"
    if git diff --quiet -- "$file"; then
        echo "plant $name: the edit did not apply to $file (update this script)"
        missed=$((missed + 1))
        return
    fi
    local target=build-cuemu/tests/cuda/$test run=("build-cuemu/tests/cuda/$test")
    if [[ $test == dist ]]; then # tests/cuda/emu/dist.sh: steer train under mpirun
        target=build-cuemu/steer
        run=(bash tests/cuda/emu/dist.sh build-cuemu)
    fi
    if ! make CUDA=1 CUDA_EMU=1 BUILD=build-cuemu -j2 "$target" >/dev/null 2>&1; then
        echo "plant $name: does not build (update this script)"
        missed=$((missed + 1))
    elif CMOCKA_MESSAGE_OUTPUT=TAP timeout 900 "${run[@]}" >"build-cuemu/plant-$name.log" 2>&1 &&
        ! grep -q '^not ok' "build-cuemu/plant-$name.log"; then
        echo "plant $name: MISSED by $test"
        missed=$((missed + 1))
    else
        echo "plant $name: caught by $test: $(grep -m1 -E '^not ok|^cuemu' "build-cuemu/plant-$name.log")"
    fi
    git checkout -q -- "$file"
}

# cuBLAS called with A's transpose flag dropped (the column-major convention wrong)
plant gemm-transpose kernels/cuda/gemm_cublas.cu 's/cublas_op(tb), cublas_op(ta)/cublas_op(tb), CUBLAS_OP_N/' test_cuda_ops
# true convolution where cross-correlation is meant
plant conv-mode kernels/cuda/conv_cudnn.cu 's/CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT/CUDNN_CONVOLUTION, CUDNN_DATA_FLOAT/' test_cuda_ops
# a missing barrier: warps read v before every thread has scaled it
plant specnorm-barrier kernels/cuda/specnorm_cuda.cu 's|^    __syncthreads(); // every v\[j\] scaled.*||' test_cuda_ops
# G's weights uploaded on the legacy stream, not on the non-blocking stream G runs on (the
# parameter upload that serving's sampler and the training step share)
plant upload-stream generator/gan_cuda.c 's/                                          cudaMemcpyHostToDevice, st)));/                                          cudaMemcpyHostToDevice, 0)));/' test_cuda_gen
# host and device swapped in the training step's uploads
plant upload-swap generator/gan_cuda.c 's/cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice/cudaMemcpyAsync((void *)host, dev, bytes, cudaMemcpyHostToDevice/' test_cuda_train
# the leaky ReLU's backward slope applied on the wrong side
plant lrelu-backward kernels/cuda/ops_cuda.cu 's/inp\[i\] > 0.0f ? dout\[i\] : alpha \* dout\[i\]/inp[i] > 0.0f ? alpha * dout[i] : dout[i]/' test_cuda_ops
# dropout: every chunk seeded with the same key (the CPU seeds chunk k with key + k)
plant dropout-key kernels/cuda/ops_cuda.cu 's/unsigned long long x = key + (unsigned long long)k;/unsigned long long x = key;/' test_cuda_ops
# orthogonal regularization with the Gram matrix's diagonal kept
plant ortho-diag kernels/cuda/regularize_cuda.cu 's/if (wide \&\& i \/ k == i % k) {/if (0) {/' test_cuda_ops
# the penalties' pattern LReLU taking the input's own slopes
plant pattern-slopes kernels/cuda/ops_cuda.cu 's/out\[i\] = ref\[i\] > 0.0f ? inp\[i\]/out[i] = inp[i] > 0.0f ? inp[i]/' test_cuda_ops
# data parallel on GPUs: D's gradients not averaged over the processes
plant dp-reduce generator/gan_cuda.c 's/^    CHECK(dp_mean(gc, gc->D.ps.grads, gc->D.ps.total));/    \/\/ no reduce/' dist
echo "plants: $missed missed"
exit $missed
