// cuemu.h — the device side of cuemu, a CPU emulation of the parts of CUDA our backend uses, so
// that kernels/cuda/*.cu run (slowly) on a machine without a GPU. docs/gpu.md "cuemu".
//
// `make CUDA=1 CUDA_EMU=1` compiles each .cu with the C++ compiler instead of nvcc: the launch
// syntax `k<<<grid, block, shmem, stream>>>(args)` is first rewritten by sed into
// `CUEMU_LAUNCH(k, grid, block, shmem, stream)(args)`, and this header is force-included. It
// makes the CUDA qualifiers plain C++ (`__shared__` becomes `static`: blocks run one at a time,
// so a function-scope static is the block's shared memory), maps threadIdx/blockIdx/blockDim/
// gridDim to the emulator's current thread, and declares the barrier and the warp shuffle. The
// runtime, cuBLAS and cuDNN entry points are defined in cuemu_rt.cc against the real headers,
// so every signature is the toolkit's own.
//
// What it checks beyond running the code (each a fatal "cuemu:" message): every pointer a kernel
// receives lies in live device memory; a barrier or shuffle that not every live thread of the
// block (warp) reaches; a shuffle naming a lane that does not exist or has exited; launch
// configurations the hardware refuses (these set cudaErrorInvalidConfiguration, as CUDA does).
// What it cannot show: races between threads or streams (threads run one at a time, streams in
// call order), timing, and anything the compiler does differently for a real device.
//
// The idea of running CUDA thread blocks as cooperative user-level threads, one per CUDA thread,
// switching at barriers, is old (GPUOcelot's emulator, HIP-CPU's fibers); this is our own, small.
#ifndef STEER_CUEMU_H
#define STEER_CUEMU_H

#define __global__
#define __device__
#define __host__
#define __shared__ static

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#undef threadIdx
#undef blockIdx
#undef blockDim
#undef gridDim

extern "C" {
// The current emulated thread's coordinates (kernels run under one process-wide lock).
extern uint3 cuemu_thread_idx, cuemu_block_idx;
extern dim3 cuemu_block_dim, cuemu_grid_dim;
void cuemu_syncthreads(void);
// Exchanges bytes (1 to 8) with the lane `lane ^ lane_mask` of the caller's warp; every lane in
// mask must call it.
void cuemu_shfl_xor(void *value, size_t bytes, unsigned mask, int lane_mask);
}

#define threadIdx cuemu_thread_idx
#define blockIdx cuemu_block_idx
#define blockDim cuemu_block_dim
#define gridDim cuemu_grid_dim

inline void __syncthreads(void) { cuemu_syncthreads(); }

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= 8, "cuemu: shuffles of at most 8 bytes");
    (void)width; // our kernels shuffle whole warps
    cuemu_shfl_xor(&v, sizeof v, mask, lane_mask);
    return v;
}

// The device's bit casts between float and its 32 bits.
inline unsigned __float_as_uint(float x) {
    unsigned u;
    std::memcpy(&u, &x, sizeof u);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float x;
    std::memcpy(&x, &u, sizeof x);
    return x;
}

// nvcc's cuda_runtime.h takes a kernel itself where the C API takes const void *.
template <typename T> inline cudaError_t cudaFuncGetAttributes(cudaFuncAttributes *attr, T *entry) {
    return ::cudaFuncGetAttributes(attr, (const void *)entry);
}

namespace cuemu {

// Queues the grid on stream (it runs when the stream is synchronized, see cuemu_rt.cc):
// thread() once per thread. key identifies the kernel (its address). A configuration the
// hardware refuses sets cudaErrorInvalidConfiguration now and queues nothing.
void launch_grid(const char *name, const void *key, dim3 grid, dim3 block, size_t shmem,
                 cudaStream_t stream, std::function<void()> thread);
// Fatal unless p is NULL or inside a live device allocation.
void check_kernel_pointer(const char *name, int index, const void *p);

template <typename T> inline void check_arg(const char *name, int index, const T &x) {
    if constexpr (std::is_pointer_v<T>)
        check_kernel_pointer(name, index, (const void *)x);
}

template <typename... P> struct Launch {
    void (*kernel)(P...);
    const char *name;
    dim3 grid, block;
    size_t shmem;
    cudaStream_t stream;

    template <typename... A> void operator()(A &&...a) const {
        static_assert(sizeof...(A) == sizeof...(P), "cuemu: wrong number of kernel arguments");
        // Arguments are converted to the parameter types and copied at the launch, as CUDA does.
        using Args = std::tuple<std::decay_t<P>...>;
        Args args(std::forward<A>(a)...);
        int i = 0;
        std::apply([&](const auto &...x) { (check_arg(name, i++, x), ...); }, args);
        void (*k)(P...) = kernel;
        launch_grid(name, (const void *)kernel, grid, block, shmem, stream, [k, args]() {
            Args copy = args; // each thread gets its own parameters
            std::apply(k, copy);
        });
    }
};

template <typename... P>
inline Launch<P...> launch(void (*kernel)(P...), const char *name, dim3 grid, dim3 block,
                           size_t shmem = 0, cudaStream_t stream = 0) {
    return Launch<P...>{kernel, name, grid, block, shmem, stream};
}

} // namespace cuemu

#define CUEMU_LAUNCH(k, ...) ::cuemu::launch(k, #k, __VA_ARGS__)

#endif
