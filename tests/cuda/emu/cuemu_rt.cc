// cuemu_rt.cc — the host side of cuemu (see cuemu.h): the thread-block scheduler, and the CUDA
// runtime, cuBLAS and cuDNN calls our backend makes, each on the CPU, defined against the
// toolkit's own headers so every signature is CUDA's.
//
// Device memory is host memory from malloc, filled with 0xFF bytes (a NaN in every float and
// double) so a read of memory nobody wrote shows as NaN; every allocation is remembered, and
// copies, memsets, library calls and kernel arguments are checked against the allocations (a
// copy that runs past the end of one, a host pointer handed to a kernel, a pointer freed before
// use: each stops the process with a "cuemu:" message naming the call).
//
// Streams are asynchronous, as late as CUDA allows: kernels, library calls, memsets and async
// copies are queued on their stream and run only when the host must see them (a synchronize of
// that stream or the device, a synchronous copy on the legacy stream, cudaFree, a copy to
// pageable memory, which CUDA completes before returning), and a stream's queue runs in order.
// Work on the legacy stream 0 waits for the blocking streams' earlier work and they for its
// (non-blocking streams, cudaStreamNonBlocking, do not). So a host read before the synchronize
// that makes it safe reads stale data here, and a second stream that uses data a first stream
// has not finished (no synchronize between) computes on stale data: both show as wrong results.
// Copies from pageable host memory take their bytes at the call, as CUDA stages them; from
// pinned memory (cudaMallocHost) when they run, so pinned memory reused too soon shows too.
// CUEMU_SYNC=1 runs everything at once instead (to tell an ordering bug from another).
//
// cuBLAS and cuDNN are plain loops written from their documentation
// (column-major GEMM with op(A), op(B), lda; convolution as cross-correlation or true
// convolution, padding, stride, dilation; alpha/beta blending where beta = 0 never reads the
// output), independently of kernels/*.c, so a call made with the wrong convention computes
// something else here too. The TF32 modes round each multiplicand to TF32 (10 mantissa bits), as
// tensor cores do. cudnnFind* offers a fixed list of candidates that includes a
// non-deterministic one, a failed one, a tensor-op one and one that needs workspace, so the
// caller's choice is exercised; every algorithm computes the same sums.
//
// NCCL's ncclAllReduce is MPI_Allreduce over MPI_COMM_WORLD on the (host) device memory, queued
// on the stream like everything else; the communicator must span the MPI processes (the
// unique id is checked to be the one rank 0 made). Unlike NCCL, several processes may share
// cuemu's one device.
//
// Everything runs under one process-wide lock: kernels and library calls from several host
// threads take turns. CUEMU_FIBERS=1 runs every kernel on fibers (see run_grid).
//
#include "cuemu.h" // first: it defines the CUDA qualifiers before the toolkit headers do

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#define OMPI_SKIP_MPICXX 1 // the C API only (no libmpi_cxx)
#include <mpi.h>
#include <nccl.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

static std::recursive_mutex g_lock;
#define LOCKED std::lock_guard<std::recursive_mutex> guard_(g_lock)

[[noreturn]] static void fatal(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuemu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

// --- device memory ------------------------------------------------------------------------------

static std::map<uintptr_t, size_t> g_device; // base -> bytes
static std::map<uintptr_t, size_t> g_pinned; // cudaMallocHost blocks (host memory): base -> bytes

// The allocation holding p (p may be its end), or NULL.
static const std::pair<const uintptr_t, size_t> *device_find(const void *p) {
    uintptr_t a = (uintptr_t)p;
    auto it = g_device.upper_bound(a);
    if (it == g_device.begin())
        return NULL;
    --it;
    return a <= it->first + it->second ? &*it : NULL;
}

static bool is_device(const void *p) { return p && device_find(p); }

static bool is_pinned(const void *p) {
    auto it = g_pinned.upper_bound((uintptr_t)p);
    if (it == g_pinned.begin())
        return false;
    --it;
    return (uintptr_t)p < it->first + it->second;
}

static void check_range(const char *what, const void *p, size_t bytes) {
    if (bytes == 0)
        return;
    const auto *a = device_find(p);
    if (!a)
        fatal("%s: %p is not device memory (a host pointer, or freed)", what, p);
    if ((uintptr_t)p + bytes > a->first + a->second)
        fatal("%s: %zu bytes at %p run %zu bytes past the end of a %zu-byte allocation", what,
              bytes, p, (size_t)((uintptr_t)p + bytes - a->first - a->second), a->second);
}

static void check_host(const char *what, const void *p) {
    if (is_device(p))
        fatal("%s: %p is device memory where host memory belongs", what, p);
}

// --- streams and errors -------------------------------------------------------------------------

static std::set<cudaStream_t> g_streams;     // created, not destroyed
static std::set<cudaStream_t> g_nonblocking; // of those, created with cudaStreamNonBlocking
static std::map<cudaStream_t, std::deque<std::function<void()>>> g_queues; // 0: legacy
static thread_local cudaError_t g_last = cudaSuccess;
static int g_current_device = 0;

static void check_stream(const char *what, cudaStream_t s) {
    if (s == 0 || s == cudaStreamLegacy || s == cudaStreamPerThread)
        return;
    if (!g_streams.count(s))
        fatal("%s: stream %p was never created or is destroyed", what, (void *)s);
}

// cuemu treats the per-thread default stream as the legacy one.
static cudaStream_t canon(cudaStream_t s) {
    return s == cudaStreamLegacy || s == cudaStreamPerThread ? (cudaStream_t)0 : s;
}

// Runs s's queued work, in order.
static void flush(cudaStream_t s) {
    auto it = g_queues.find(canon(s));
    if (it == g_queues.end())
        return;
    while (!it->second.empty()) {
        std::function<void()> work = std::move(it->second.front());
        it->second.pop_front();
        work();
    }
}

static void flush_blocking(void) {
    for (auto &q : g_queues)
        if (q.first && !g_nonblocking.count(q.first))
            flush(q.first);
}

static void flush_all(void) {
    for (auto &q : g_queues)
        flush(q.first);
}

static bool sync_mode(void) {
    static int on = -1;
    if (on < 0)
        on = getenv("CUEMU_SYNC") && atoi(getenv("CUEMU_SYNC")) > 0;
    return on;
}

// Queues work on s, after what the legacy-stream rules put before it.
static void enqueue(const char *what, cudaStream_t s, std::function<void()> work) {
    check_stream(what, s);
    s = canon(s);
    if (s == 0)
        flush_blocking(); // legacy work waits for the blocking streams' earlier work
    else if (!g_nonblocking.count(s))
        flush(0); // a blocking stream's work waits for the legacy stream's earlier work
    g_queues[s].push_back(std::move(work));
    if (sync_mode())
        flush(s);
}

static cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess)
        g_last = e;
    return e;
}

// --- the scheduler ------------------------------------------------------------------------------

extern "C" {
uint3 cuemu_thread_idx, cuemu_block_idx;
dim3 cuemu_block_dim, cuemu_grid_dim;
}

enum { F_READY, F_BLOCK, F_WARP, F_DONE };

// One per CUDA thread of a block, kept across blocks and launches: a fiber is created once and
// then runs thread after thread in fiber_loop. On x86-64 a switch is cuemu_switch below (the
// callee-saved registers and the stack pointer, as any coroutine switch does); elsewhere
// swapcontext, which is correct but makes a system call per switch.
typedef struct {
#if defined(__x86_64__)
    void *sp; // saved stack pointer while parked
#else
    ucontext_t uc;
#endif
    int created;
    uint3 tid;
    int state;
} Fiber;

#define MAX_THREADS 1024
static const size_t STACK_BYTES = (size_t)256 << 10;
static Fiber g_fibers[MAX_THREADS];
static char *g_stacks; // MAX_THREADS stacks, mapped on first use
static int g_cur, g_nthreads;
static bool g_fiber_mode, g_barrier_used;
static const char *g_kernel;
static const std::function<void()> *g_fn;                      // the current kernel's thread
static uint64_t g_slot[MAX_THREADS];                           // shuffle values
static uint32_t g_live[MAX_THREADS / 32];                      // per warp: lanes not exited
static std::unordered_map<const void *, bool> g_uses_barriers; // kernel -> seen one

static void fiber_loop(void);

#if defined(__x86_64__)
// cuemu_switch(save, load): pushes the callee-saved registers, stores the stack pointer in
// *save, loads load, pops that stack's registers and returns into it.
extern "C" void cuemu_switch(void **save, void *load);
__asm__(".pushsection .text\n"
        ".globl cuemu_switch\n"
        ".type cuemu_switch, @function\n"
        "cuemu_switch:\n"
        "    pushq %rbp\n"
        "    pushq %rbx\n"
        "    pushq %r12\n"
        "    pushq %r13\n"
        "    pushq %r14\n"
        "    pushq %r15\n"
        "    movq %rsp, (%rdi)\n"
        "    movq %rsi, %rsp\n"
        "    popq %r15\n"
        "    popq %r14\n"
        "    popq %r13\n"
        "    popq %r12\n"
        "    popq %rbx\n"
        "    popq %rbp\n"
        "    ret\n"
        ".size cuemu_switch, .-cuemu_switch\n"
        ".popsection\n");

static void *g_sched_sp;

static void fiber_park(void) { cuemu_switch(&g_fibers[g_cur].sp, g_sched_sp); }

static void fiber_start(Fiber *f, char *stack) {
    // A stack that cuemu_switch "returns" into fiber_loop from: six zero registers, then
    // fiber_loop's address, then a zero return address for fiber_loop (which never returns), the
    // top 16-byte aligned so fiber_loop starts with the stack a call would leave.
    uintptr_t top = ((uintptr_t)stack + STACK_BYTES) & ~(uintptr_t)15;
    void **sp = (void **)top;
    *--sp = NULL;
    *--sp = (void *)fiber_loop;
    for (int i = 0; i < 6; i++)
        *--sp = NULL;
    f->sp = sp;
}

static void fiber_enter(Fiber *f) { cuemu_switch(&g_sched_sp, f->sp); }
#else
static ucontext_t g_sched_uc;

static void fiber_park(void) { swapcontext(&g_fibers[g_cur].uc, &g_sched_uc); }

static void fiber_start(Fiber *f, char *stack) {
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = stack;
    f->uc.uc_stack.ss_size = STACK_BYTES;
    f->uc.uc_link = NULL; // fiber_loop never returns
    makecontext(&f->uc, fiber_loop, 0);
}

static void fiber_enter(Fiber *f) { swapcontext(&g_sched_uc, &f->uc); }
#endif

// Runs thread after thread: parks until the scheduler resumes it with a thread to run.
static void fiber_loop(void) {
    for (;;) {
        (*g_fn)();
        g_fibers[g_cur].state = F_DONE;
        g_live[g_cur / 32] &= ~(1u << (g_cur % 32));
        fiber_park();
    }
}

// Runs fiber t until it parks.
static void fiber_resume(int t) {
    Fiber *f = &g_fibers[t];
    g_cur = t;
    cuemu_thread_idx = f->tid;
    if (!f->created) {
        f->created = 1;
        fiber_start(f, g_stacks + (size_t)t * STACK_BYTES);
    }
    fiber_enter(f);
}

static void fiber_wait(int state) {
    g_barrier_used = true;
    g_fibers[g_cur].state = state;
    fiber_park();
}

static void plain_barrier(const char *what) {
    fatal("kernel %s reached %s in a launch run without fibers (its first launch reached none); "
          "rerun with CUEMU_FIBERS=1",
          g_kernel, what);
}

extern "C" void cuemu_syncthreads(void) {
    if (!g_fiber_mode)
        plain_barrier("__syncthreads");
    fiber_wait(F_BLOCK);
}

extern "C" void cuemu_shfl_xor(void *value, size_t bytes, unsigned mask, int lane_mask) {
    if (!g_fiber_mode)
        plain_barrier("__shfl_xor_sync");
    int t = g_cur, warp = t / 32, lane = t % 32;
    if (mask & ~g_live[warp]) {
        int l = __builtin_ctz(mask & ~g_live[warp]);
        if (warp * 32 + l >= g_nthreads)
            fatal("kernel %s: a shuffle's mask names lane %d of warp %d, which a %d-thread block "
                  "does not have",
                  g_kernel, l, warp, g_nthreads);
        fatal("kernel %s: a shuffle's mask names lane %d of warp %d, which has exited", g_kernel, l,
              warp);
    }
    if (!((mask >> lane) & 1))
        fatal("kernel %s: lane %d shuffles but is not in the mask", g_kernel, lane);
    int src = lane ^ lane_mask;
    if (src < 0 || src >= 32 || !((mask >> src) & 1))
        fatal("kernel %s: lane %d reads lane %d, outside the mask", g_kernel, lane, src);
    memcpy(&g_slot[t], value, bytes);
    fiber_wait(F_WARP); // every lane has written
    memcpy(value, &g_slot[warp * 32 + src], bytes);
    fiber_wait(F_WARP); // every lane has read
}

static void run_block_fibers(void) {
    int n = g_nthreads;
    for (int w = 0; w * 32 < n; w++)
        g_live[w] = n - w * 32 >= 32 ? 0xffffffffu : (1u << (n - w * 32)) - 1;
    for (int t = 0; t < n; t++) {
        Fiber *f = &g_fibers[t];
        f->tid = make_uint3(t % cuemu_block_dim.x, t / cuemu_block_dim.x % cuemu_block_dim.y,
                            t / (cuemu_block_dim.x * cuemu_block_dim.y));
        f->state = F_READY;
    }
    for (;;) {
        for (int t = 0; t < n; t++) {
            if (g_fibers[t].state != F_READY)
                continue;
            fiber_resume(t);
        }
        int block = 0, warp = 0, done = 0;
        for (int t = 0; t < n; t++) {
            int s = g_fibers[t].state;
            block += s == F_BLOCK, warp += s == F_WARP, done += s == F_DONE;
        }
        if (done == n)
            return;
        if (block && done)
            fatal("kernel %s, block (%u,%u,%u): %d threads exited while %d wait at __syncthreads",
                  g_kernel, cuemu_block_idx.x, cuemu_block_idx.y, cuemu_block_idx.z, done, block);
        bool released = false;
        if (block == n) {
            for (int t = 0; t < n; t++)
                g_fibers[t].state = F_READY;
            continue;
        }
        for (int w = 0; w * 32 < n; w++) {
            int live = 0, waiting = 0;
            for (int t = w * 32; t < n && t < w * 32 + 32; t++) {
                live += g_fibers[t].state != F_DONE;
                waiting += g_fibers[t].state == F_WARP;
            }
            if (live && waiting == live) {
                for (int t = w * 32; t < n && t < w * 32 + 32; t++)
                    if (g_fibers[t].state == F_WARP)
                        g_fibers[t].state = F_READY;
                released = true;
            }
        }
        if (!released)
            fatal("kernel %s, block (%u,%u,%u): threads wait at different barriers (%d at "
                  "__syncthreads, %d at a warp shuffle, %d exited): a barrier not every thread "
                  "reaches",
                  g_kernel, cuemu_block_idx.x, cuemu_block_idx.y, cuemu_block_idx.z, block, warp,
                  done);
    }
}

void cuemu::check_kernel_pointer(const char *name, int index, const void *p) {
    LOCKED;
    if (p && !device_find(p))
        fatal("kernel %s, argument %d: %p is not device memory (a host pointer, or freed)", name,
              index, p);
}

// Runs a whole grid now. A kernel's first launch runs every block's threads as fibers, which
// barriers and shuffles need; a kernel that reached neither runs later launches as plain calls,
// thread after thread (far faster). A later launch that does reach one stops with a message
// (CUEMU_FIBERS=1 then runs everything on fibers).
static void run_grid(const char *name, const void *key, dim3 grid, dim3 block,
                     const std::function<void()> &thread) {
    if (!g_stacks) {
        g_stacks = (char *)mmap(NULL, MAX_THREADS * STACK_BYTES, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (g_stacks == MAP_FAILED)
            fatal("cannot map thread stacks");
    }
    static int always_fibers = -1;
    if (always_fibers < 0)
        always_fibers = getenv("CUEMU_FIBERS") && atoi(getenv("CUEMU_FIBERS")) > 0;
    auto seen = g_uses_barriers.find(key);
    g_fiber_mode = always_fibers || seen == g_uses_barriers.end() || seen->second;
    g_barrier_used = false;
    g_kernel = name;
    g_fn = &thread;
    g_nthreads = (int)(block.x * block.y * block.z);
    cuemu_block_dim = block;
    cuemu_grid_dim = grid;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++) {
                cuemu_block_idx = make_uint3(bx, by, bz);
                if (g_fiber_mode) {
                    run_block_fibers();
                    continue;
                }
                for (int t = 0; t < g_nthreads; t++) {
                    g_cur = t;
                    cuemu_thread_idx =
                        make_uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                    thread();
                }
            }
    if (seen == g_uses_barriers.end())
        g_uses_barriers[key] = g_barrier_used;
}

void cuemu::launch_grid(const char *name, const void *key, dim3 grid, dim3 block, size_t shmem,
                        cudaStream_t stream, std::function<void()> thread) {
    LOCKED;
    check_stream(name, stream);
    unsigned long threads = (unsigned long)block.x * block.y * block.z;
    if (!grid.x || !grid.y || !grid.z || !threads || threads > MAX_THREADS || block.x > 1024 ||
        block.y > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535 ||
        grid.x > 2147483647u || shmem > 48 * 1024) {
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    enqueue(name, stream,
            [name, key, grid, block, thread]() { run_grid(name, key, grid, block, thread); });
}

// --- the runtime --------------------------------------------------------------------------------

cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *v) {
    *v = CUDART_VERSION;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceCount(int *count) {
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaGetDevice(int *device) {
    *device = g_current_device;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
    if (device != 0)
        return set_error(cudaErrorInvalidDevice);
    g_current_device = device;
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *prop, int device) {
    if (device != 0)
        return set_error(cudaErrorInvalidDevice);
    memset(prop, 0, sizeof(*prop));
    snprintf(prop->name, sizeof prop->name, "cuemu (CPU emulation, no GPU)");
    prop->major = 9;
    prop->minor = 0;
    prop->totalGlobalMem = (size_t)16 << 30;
    prop->multiProcessorCount = 1;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = MAX_THREADS;
    return cudaSuccess;
}

cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes *attr, const void *func) {
    (void)func;
    memset(attr, 0, sizeof(*attr));
    attr->maxThreadsPerBlock = MAX_THREADS;
    attr->binaryVersion = attr->ptxVersion = 90;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return g_last; }

const char *cudaGetErrorName(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "cudaSuccess";
    case cudaErrorInvalidValue:
        return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation:
        return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration:
        return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice:
        return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice:
        return "cudaErrorNoDevice";
    default:
        return "cudaError (cuemu)";
    }
}

const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

cudaError_t cudaDeviceSynchronize(void) {
    LOCKED;
    flush_all();
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t bytes) {
    LOCKED;
    // Allocations are rounded up to 256 bytes as CUDA's are, but only the requested bytes count.
    void *m = bytes ? malloc(bytes) : NULL;
    if (bytes && !m) {
        *p = NULL;
        return set_error(cudaErrorMemoryAllocation);
    }
    if (m) {
        memset(m, 0xFF, bytes);
        g_device[(uintptr_t)m] = bytes;
    }
    *p = m;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    LOCKED;
    if (!p)
        return cudaSuccess;
    flush_all(); // cudaFree waits for the device
    auto it = g_device.find((uintptr_t)p);
    if (it == g_device.end())
        fatal("cudaFree(%p): not the start of a live device allocation", p);
    g_device.erase(it);
    free(p);
    return cudaSuccess;
}

cudaError_t cudaMallocHost(void **p, size_t bytes) {
    LOCKED;
    *p = malloc(bytes ? bytes : 1);
    if (!*p)
        return set_error(cudaErrorMemoryAllocation);
    g_pinned[(uintptr_t)*p] = bytes ? bytes : 1;
    return cudaSuccess;
}

cudaError_t cudaFreeHost(void *p) {
    LOCKED;
    if (!p)
        return cudaSuccess;
    flush_all(); // queued copies may still use it
    if (!g_pinned.erase((uintptr_t)p))
        fatal("cudaFreeHost(%p): not from cudaMallocHost", p);
    free(p);
    return cudaSuccess;
}

static cudaMemcpyKind copy_kind(void *dst, const void *src, cudaMemcpyKind kind) {
    if (kind == cudaMemcpyDefault)
        kind = is_device(dst) ? (is_device(src) ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                              : (is_device(src) ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
    return kind;
}

static bool copy_check(const char *what, void *dst, const void *src, size_t bytes,
                       cudaMemcpyKind kind) {
    switch (kind) {
    case cudaMemcpyHostToDevice:
        check_range(what, dst, bytes);
        check_host(what, src);
        return true;
    case cudaMemcpyDeviceToHost:
        check_range(what, src, bytes);
        check_host(what, dst);
        return true;
    case cudaMemcpyDeviceToDevice:
        check_range(what, src, bytes);
        check_range(what, dst, bytes);
        return true;
    case cudaMemcpyHostToHost:
        check_host(what, src);
        check_host(what, dst);
        return true;
    default:
        return false;
    }
}

// cudaMemcpy: on the legacy stream, and the host waits for it.
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    LOCKED;
    kind = copy_kind(dst, src, kind);
    if (!copy_check("cudaMemcpy", dst, src, bytes, kind))
        return set_error(cudaErrorInvalidMemcpyDirection);
    flush_blocking();
    flush(0);
    if (bytes)
        memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
    LOCKED;
    const char *what = "cudaMemcpyAsync";
    kind = copy_kind(dst, src, kind);
    if (!copy_check(what, dst, src, bytes, kind))
        return set_error(cudaErrorInvalidMemcpyDirection);
    if (!bytes)
        return cudaSuccess;
    bool host_src = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyHostToHost;
    bool host_dst = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyHostToHost;
    if (host_dst && !is_pinned(dst)) {
        // To pageable memory CUDA returns only when the copy is done.
        enqueue(what, stream, [dst, src, bytes]() { memmove(dst, src, bytes); });
        flush(stream);
    } else if (host_src && !is_pinned(src)) {
        // From pageable memory CUDA stages the bytes before returning.
        auto staged =
            std::make_shared<std::vector<char>>((const char *)src, (const char *)src + bytes);
        enqueue(what, stream, [dst, staged]() { memcpy(dst, staged->data(), staged->size()); });
    } else {
        enqueue(what, stream, [dst, src, bytes]() { memmove(dst, src, bytes); });
    }
    return cudaSuccess;
}

cudaError_t cudaMemset(void *p, int value, size_t bytes) {
    LOCKED;
    check_range("cudaMemset", p, bytes);
    enqueue("cudaMemset", 0, [p, value, bytes]() { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *p, int value, size_t bytes, cudaStream_t stream) {
    LOCKED;
    check_range("cudaMemsetAsync", p, bytes);
    enqueue("cudaMemsetAsync", stream, [p, value, bytes]() { memset(p, value, bytes); });
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    LOCKED;
    *s = (cudaStream_t)malloc(64);
    g_streams.insert(*s);
    if (flags & cudaStreamNonBlocking)
        g_nonblocking.insert(*s);
    return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }

// Its queued work still completes, as CUDA's does.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    LOCKED;
    if (s == 0 || s == cudaStreamLegacy || s == cudaStreamPerThread)
        return set_error(cudaErrorInvalidResourceHandle); // CUDA refuses the default streams
    if (!g_streams.count(s))
        fatal("cudaStreamDestroy(%p): not a live stream", (void *)s);
    flush(s);
    g_queues.erase(s);
    g_streams.erase(s);
    g_nonblocking.erase(s);
    free((void *)s);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    LOCKED;
    check_stream("cudaStreamSynchronize", s);
    flush(s);
    return cudaSuccess;
}

// --- TF32 ---------------------------------------------------------------------------------------

// x rounded to TF32 (8-bit exponent, 10-bit mantissa), to nearest, ties to even.
static float tf32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) != 0x7f800000u) {
        u += 0xfffu + ((u >> 13) & 1u);
        u &= ~0x1fffu;
    }
    memcpy(&x, &u, 4);
    return x;
}

// --- cuBLAS -------------------------------------------------------------------------------------

struct cublasContext {
    cudaStream_t stream;
    cublasMath_t math;
};

cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
    *h = new cublasContext{0, CUBLAS_DEFAULT_MATH};
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
    LOCKED;
    check_stream("cublasSetStream", s);
    h->stream = s;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t mode) {
    h->math = mode;
    return CUBLAS_STATUS_SUCCESS;
}

// C (m x n, ldc) = alpha op(A) op(B) + beta C, column-major, op(A) m x k, op(B) k x n.
static cublasStatus_t sgemm(const char *what, cublasHandle_t h, cublasOperation_t ta,
                            cublasOperation_t tb, int m, int n, int k, const float *alpha,
                            const float *A, int lda, long long sa, const float *B, int ldb,
                            long long sb, const float *beta, float *C, int ldc, long long sc,
                            int batch) {
    if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T) ||
        m < 0 || n < 0 || k < 0 || batch < 0)
        return CUBLAS_STATUS_INVALID_VALUE;
    int arows = ta == CUBLAS_OP_N ? m : k, acols = ta == CUBLAS_OP_N ? k : m;
    int brows = tb == CUBLAS_OP_N ? k : n, bcols = tb == CUBLAS_OP_N ? n : k;
    if (lda < (arows > 1 ? arows : 1) || ldb < (brows > 1 ? brows : 1) || ldc < (m > 1 ? m : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    check_stream(what, h->stream);
    check_host(what, alpha);
    check_host(what, beta);
    if (m == 0 || n == 0 || batch == 0)
        return CUBLAS_STATUS_SUCCESS;
    bool round = h->math == CUBLAS_TF32_TENSOR_OP_MATH;
    float al = *alpha, be = *beta; // host pointer mode: read at the call
    for (int b = 0; b < batch; b++) {
        if (k > 0 && al != 0) {
            check_range(what, A + b * sa, ((size_t)lda * (acols - 1) + arows) * sizeof(float));
            check_range(what, B + b * sb, ((size_t)ldb * (bcols - 1) + brows) * sizeof(float));
        }
        check_range(what, C + b * sc, ((size_t)ldc * (n - 1) + m) * sizeof(float));
    }
    enqueue(what, h->stream, [=]() {
        for (int b = 0; b < batch; b++) {
            const float *Ab = A + b * sa, *Bb = B + b * sb;
            float *Cb = C + b * sc;
            for (int j = 0; j < n; j++)
                for (int i = 0; i < m; i++) {
                    double acc = 0;
                    if (al != 0)
                        for (int l = 0; l < k; l++) {
                            float a = ta == CUBLAS_OP_N ? Ab[i + (size_t)l * lda]
                                                        : Ab[l + (size_t)i * lda];
                            float bv = tb == CUBLAS_OP_N ? Bb[l + (size_t)j * ldb]
                                                         : Bb[j + (size_t)l * ldb];
                            if (round)
                                a = tf32(a), bv = tf32(bv);
                            acc += (double)a * bv;
                        }
                    float *c = &Cb[i + (size_t)j * ldc];
                    *c = (float)(al * acc + (be == 0 ? 0.0 : (double)be * *c));
                }
        }
    });
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float *alpha, const float *A, int lda,
                                         long long int sa, const float *B, int ldb,
                                         long long int sb, const float *beta, float *C, int ldc,
                                         long long int sc, int batch) {
    LOCKED;
    return sgemm("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb,
                 beta, C, ldc, sc, batch);
}

// --- cuDNN --------------------------------------------------------------------------------------

struct cudnnContext {
    cudaStream_t stream;
};
struct cudnnTensorStruct {
    int set, n, c, h, w;
    int bf16; // CUDNN_DATA_BFLOAT16 (else FLOAT)
};
struct cudnnFilterStruct {
    int set, k, c, h, w;
    int bf16;
};
struct cudnnConvolutionStruct {
    int set, ph, pw, u, v, dh, dw;
    cudnnConvolutionMode_t mode;
    cudnnMathType_t math;
};

cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
    *h = new cudnnContext{0};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
    delete h;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
    LOCKED;
    check_stream("cudnnSetStream", s);
    h->stream = s;
    return CUDNN_STATUS_SUCCESS;
}

const char *cudnnGetErrorString(cudnnStatus_t s) {
    return s == CUDNN_STATUS_SUCCESS ? "CUDNN_STATUS_SUCCESS" : "cuDNN error (cuemu)";
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) {
    *d = new cudnnTensorStruct{};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                         cudnnDataType_t type, int n, int c, int h, int w) {
    if (format != CUDNN_TENSOR_NCHW || (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_BFLOAT16))
        return CUDNN_STATUS_NOT_SUPPORTED; // all cuemu does; all we use
    if (n <= 0 || c <= 0 || h <= 0 || w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    *d = cudnnTensorStruct{1, n, c, h, w, type == CUDNN_DATA_BFLOAT16};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) {
    *d = new cudnnFilterStruct{};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t type,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w) {
    if (format != CUDNN_TENSOR_NCHW || (type != CUDNN_DATA_FLOAT && type != CUDNN_DATA_BFLOAT16))
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (k <= 0 || c <= 0 || h <= 0 || w <= 0)
        return CUDNN_STATUS_BAD_PARAM;
    *d = cudnnFilterStruct{1, k, c, h, w, type == CUDNN_DATA_BFLOAT16};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) {
    *d = new cudnnConvolutionStruct{};
    (*d)->math = CUDNN_DEFAULT_MATH;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
    delete d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int u,
                                              int v, int dh, int dw, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t type) {
    if (ph < 0 || pw < 0 || u <= 0 || v <= 0 || dh <= 0 || dw <= 0 ||
        (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION))
        return CUDNN_STATUS_BAD_PARAM;
    if (type != CUDNN_DATA_FLOAT)
        return CUDNN_STATUS_NOT_SUPPORTED;
    cudnnMathType_t math = d->math;
    *d = cudnnConvolutionStruct{1, ph, pw, u, v, dh, dw, mode, math};
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
    d->math = m;
    return CUDNN_STATUS_SUCCESS;
}

// The output shape of x conv w under c; 0 or a status.
static cudnnStatus_t out_dim(const cudnnConvolutionStruct *c, const cudnnTensorStruct *x,
                             const cudnnFilterStruct *w, int *n, int *k, int *h, int *wo) {
    if (!c->set || !x->set || !w->set || x->c != w->c)
        return CUDNN_STATUS_BAD_PARAM;
    int eh = (w->h - 1) * c->dh + 1, ew = (w->w - 1) * c->dw + 1;
    if (x->h + 2 * c->ph < eh || x->w + 2 * c->pw < ew)
        return CUDNN_STATUS_BAD_PARAM;
    *n = x->n;
    *k = w->k;
    *h = 1 + (x->h + 2 * c->ph - eh) / c->u;
    *wo = 1 + (x->w + 2 * c->pw - ew) / c->v;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t c,
                                                    const cudnnTensorDescriptor_t x,
                                                    const cudnnFilterDescriptor_t w, int *n, int *k,
                                                    int *h, int *wo) {
    return out_dim(c, x, w, n, k, h, wo);
}

// The candidates every Find returns, fastest first: algorithm number (within the pass's enum),
// status, determinism, tensor-op math, workspace bytes.
typedef struct {
    int algo;
    cudnnStatus_t status;
    cudnnDeterminism_t det;
    int tensor_op;
    size_t memory;
} Candidate;
static const Candidate CANDIDATES[] = {
    {0, CUDNN_STATUS_SUCCESS, CUDNN_NON_DETERMINISTIC, 0, 0},
    {1, CUDNN_STATUS_NOT_SUPPORTED, CUDNN_DETERMINISTIC, 0, 0},
    {2, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, 1, ((size_t)64 << 10) + 8},
    {3, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, 0, ((size_t)1 << 20) + 4096},
    {4, CUDNN_STATUS_SUCCESS, CUDNN_DETERMINISTIC, 0, 0},
};
static const int N_CANDIDATES = sizeof CANDIDATES / sizeof CANDIDATES[0];

template <typename Perf, typename Algo>
static cudnnStatus_t find(const cudnnConvolutionStruct *c, int requested, int *returned,
                          Perf *perf) {
    // Tensor-op candidates are offered only where the descriptor allows them, as cuDNN does.
    bool tensor_ok = c->math == CUDNN_TENSOR_OP_MATH ||
                     c->math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ||
                     c->math == CUDNN_DEFAULT_MATH;
    int n = 0;
    for (int i = 0; i < N_CANDIDATES && n < requested; i++) {
        const Candidate *k = &CANDIDATES[i];
        if (k->tensor_op && !tensor_ok)
            continue;
        Perf p;
        memset(&p, 0, sizeof p);
        p.algo = (Algo)k->algo;
        p.status = k->status;
        p.time = 0.01f * (float)(i + 1);
        p.memory = k->memory;
        p.determinism = k->det;
        p.mathType = k->tensor_op ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
        perf[n++] = p;
    }
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}

// Checks that the algorithm exists, ran in Find, and got its workspace; whether it rounds to TF32.
static cudnnStatus_t algo_check(const char *what, const cudnnConvolutionStruct *c, int algo,
                                const void *ws, size_t ws_bytes, bool *round) {
    if (algo < 0 || algo >= N_CANDIDATES || CANDIDATES[algo].status != CUDNN_STATUS_SUCCESS)
        return CUDNN_STATUS_NOT_SUPPORTED;
    if (ws_bytes < CANDIDATES[algo].memory)
        return CUDNN_STATUS_BAD_PARAM;
    if (CANDIDATES[algo].memory)
        check_range(what, ws, CANDIDATES[algo].memory);
    *round = CANDIDATES[algo].tensor_op && c->math != CUDNN_FMA_MATH;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                   const cudnnFilterDescriptor_t w,
                                                   const cudnnConvolutionDescriptor_t c,
                                                   const cudnnTensorDescriptor_t y, const int req,
                                                   int *ret, cudnnConvolutionFwdAlgoPerf_t *perf) {
    int n, k, h, wo;
    cudnnStatus_t s = out_dim(c, x, w, &n, &k, &h, &wo);
    if (s)
        return s;
    if (!y->set || y->n != n || y->c != k || y->h != h || y->w != wo)
        return CUDNN_STATUS_BAD_PARAM;
    return find<cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t>(c, req, ret, perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(
    cudnnHandle_t, const cudnnFilterDescriptor_t w, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t c, const cudnnTensorDescriptor_t dx, const int req, int *ret,
    cudnnConvolutionBwdDataAlgoPerf_t *perf) {
    int n, k, h, wo;
    cudnnStatus_t s = out_dim(c, dx, w, &n, &k, &h, &wo);
    if (s)
        return s;
    if (!dy->set || dy->n != n || dy->c != k || dy->h != h || dy->w != wo)
        return CUDNN_STATUS_BAD_PARAM;
    return find<cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t>(c, req, ret,
                                                                                  perf);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(
    cudnnHandle_t, const cudnnTensorDescriptor_t x, const cudnnTensorDescriptor_t dy,
    const cudnnConvolutionDescriptor_t c, const cudnnFilterDescriptor_t dw, const int req, int *ret,
    cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
    int n, k, h, wo;
    cudnnStatus_t s = out_dim(c, x, dw, &n, &k, &h, &wo);
    if (s)
        return s;
    if (!dy->set || dy->n != n || dy->c != k || dy->h != h || dy->w != wo)
        return CUDNN_STATUS_BAD_PARAM;
    return find<cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t>(c, req, ret,
                                                                                      perf);
}

// The geometry of one convolution, checked: x (N, C, H, W) conv w (K, C, R, S) -> y (N, K, P, Q).
typedef struct {
    int N, C, H, W, K, R, S, P, Q;
    cudnnConvolutionStruct c; // a copy: the work runs later
} Geometry;

static cudnnStatus_t geometry(Geometry *g, const cudnnConvolutionStruct *c,
                              const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                              const cudnnTensorStruct *y) {
    int n, k, h, wo;
    cudnnStatus_t s = out_dim(c, x, w, &n, &k, &h, &wo);
    if (s)
        return s;
    if (!y->set || y->n != n || y->c != k || y->h != h || y->w != wo)
        return CUDNN_STATUS_BAD_PARAM;
    *g = Geometry{x->n, x->c, x->h, x->w, w->k, w->h, w->w, h, wo, *c};
    return CUDNN_STATUS_SUCCESS;
}

// Calls f(x index, w index, y index) for every term of the convolution's sums, the output
// positions innermost (so the indices advance by constant steps and the loops stay cheap).
template <typename F> static void each_term(const Geometry &g, F f) {
    const cudnnConvolutionStruct *c = &g.c;
    bool flip = c->mode == CUDNN_CONVOLUTION;
    for (int n = 0; n < g.N; n++)
        for (int k = 0; k < g.K; k++)
            for (int ch = 0; ch < g.C; ch++)
                for (int r = 0; r < g.R; r++)
                    for (int s = 0; s < g.S; s++) {
                        int wr = flip ? g.R - 1 - r : r, ws = flip ? g.S - 1 - s : s;
                        size_t wi = (((size_t)k * g.C + ch) * g.R + wr) * g.S + ws;
                        for (int p = 0; p < g.P; p++) {
                            int ih = p * c->u - c->ph + r * c->dh;
                            if (ih < 0 || ih >= g.H)
                                continue;
                            size_t xrow = (((size_t)n * g.C + ch) * g.H + ih) * g.W;
                            size_t yrow = (((size_t)n * g.K + k) * g.P + p) * g.Q;
                            for (int q = 0; q < g.Q; q++) {
                                int iw = q * c->v - c->pw + s * c->dw;
                                if (iw >= 0 && iw < g.W)
                                    f(xrow + iw, wi, yrow + q);
                            }
                        }
                    }
}

// out[i] = alpha acc[i] + beta out[i]; beta = 0 never reads out.
static void blend(float *out, const std::vector<double> &acc, float alpha, float beta) {
    for (size_t i = 0; i < acc.size(); i++)
        out[i] = (float)(alpha * acc[i] + (beta == 0 ? 0.0 : (double)beta * out[i]));
}

static size_t tensor_bytes(const cudnnTensorStruct *t) {
    return (size_t)t->n * t->c * t->h * t->w * (t->bf16 ? 2 : sizeof(float));
}
static size_t filter_bytes(const cudnnFilterStruct *f) {
    return (size_t)f->k * f->c * f->h * f->w * (f->bf16 ? 2 : sizeof(float));
}

static float rd(const float *p, size_t i, bool round) { return round ? tf32(p[i]) : p[i]; }

// --- BF16 ---------------------------------------------------------------------------------------
// cuDNN's BF16 configuration (x, w and y all BFLOAT16, FP32 compute): operands are read as the
// floats their bf16 bits stand for; the written operand is blended in float and rounded to bf16,
// to nearest, ties to even.

static float bf16_value(const uint16_t *p, size_t i) {
    uint32_t u = (uint32_t)p[i] << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

// One operand of a pass as floats: a view of FP32 memory, or a converted copy of BF16 memory.
static std::vector<float> bf16_read(const void *p, size_t n) {
    std::vector<float> v(n);
    for (size_t i = 0; i < n; i++)
        v[i] = bf16_value((const uint16_t *)p, i);
    return v;
}

enum { PASS_FWD, PASS_BWD_DATA, PASS_BWD_FILTER };

// One convolution pass, checked and queued: x (xd), w (wd) and y (yd) are the pass's three
// operands, the one it writes blended as alpha * its sums + beta * itself (y forward, x backward
// data, w backward filter), the other two read.
template <int PASS>
static cudnnStatus_t conv_pass(const char *what, cudnnHandle_t h, const cudnnConvolutionStruct *cd,
                               const cudnnTensorStruct *xd, const void *x,
                               const cudnnFilterStruct *wd, const void *w,
                               const cudnnTensorStruct *yd, const void *y, int algo, void *ws,
                               size_t ws_bytes, const void *alpha, const void *beta) {
    Geometry g;
    bool round;
    cudnnStatus_t s = geometry(&g, cd, xd, wd, yd);
    if (!s)
        s = algo_check(what, cd, algo, ws, ws_bytes, &round);
    if (s)
        return s;
    // FP32 or cuDNN's BF16 configuration; a mix is not a configuration cuDNN has.
    bool bf16 = xd->bf16;
    if (wd->bf16 != bf16 || yd->bf16 != bf16)
        return CUDNN_STATUS_NOT_SUPPORTED;
    check_range(what, x, tensor_bytes(xd));
    check_range(what, w, filter_bytes(wd));
    check_range(what, y, tensor_bytes(yd));
    void *out = (void *)(PASS == PASS_FWD ? y : PASS == PASS_BWD_DATA ? x : w);
    size_t nx = tensor_bytes(xd) / (bf16 ? 2 : 4), nw = filter_bytes(wd) / (bf16 ? 2 : 4),
           ny = tensor_bytes(yd) / (bf16 ? 2 : 4);
    size_t n = PASS == PASS_BWD_FILTER ? nw : PASS == PASS_FWD ? ny : nx;
    float al = *(const float *)alpha, be = *(const float *)beta;
    size_t ws_used = CANDIDATES[algo].memory;
    enqueue(what, h->stream, [=]() {
        // The algorithm's workspace is scribbled on first, as a real one's scratch would be: an
        // operand the caller put inside it reads garbage.
        if (ws_used)
            memset(ws, 0xFF, ws_used);
        // BF16 operands as floats (copies made when the work runs, as the device would read them)
        std::vector<float> xv, wv, yv;
        const float *X = (const float *)x, *Wt = (const float *)w, *Y = (const float *)y;
        if (bf16) {
            if (PASS != PASS_BWD_DATA)
                xv = bf16_read(x, nx), X = xv.data();
            if (PASS != PASS_BWD_FILTER)
                wv = bf16_read(w, nw), Wt = wv.data();
            if (PASS != PASS_FWD)
                yv = bf16_read(y, ny), Y = yv.data();
        }
        std::vector<double> acc(n);
        each_term(g, [&](size_t xi, size_t wi, size_t yi) {
            if constexpr (PASS == PASS_FWD)
                acc[yi] += (double)rd(X, xi, round) * rd(Wt, wi, round);
            else if constexpr (PASS == PASS_BWD_DATA)
                acc[xi] += (double)rd(Y, yi, round) * rd(Wt, wi, round);
            else
                acc[wi] += (double)rd(X, xi, round) * rd(Y, yi, round);
        });
        if (!bf16) {
            blend((float *)out, acc, al, be);
            return;
        }
        uint16_t *o = (uint16_t *)out;
        for (size_t i = 0; i < n; i++)
            o[i] = bf16_of((float)(al * acc[i] + (be == 0 ? 0.0 : (double)be * bf16_value(o, i))));
    });
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha,
                                      const cudnnTensorDescriptor_t xd, const void *x,
                                      const cudnnFilterDescriptor_t wd, const void *w,
                                      const cudnnConvolutionDescriptor_t cd,
                                      cudnnConvolutionFwdAlgo_t algo, void *ws, size_t ws_bytes,
                                      const void *beta, const cudnnTensorDescriptor_t yd, void *y) {
    LOCKED;
    return conv_pass<PASS_FWD>("cudnnConvolutionForward", h, cd, xd, x, wd, w, yd, y, (int)algo,
                               ws, ws_bytes, alpha, beta);
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha,
                                           const cudnnFilterDescriptor_t wd, const void *w,
                                           const cudnnTensorDescriptor_t dyd, const void *dy,
                                           const cudnnConvolutionDescriptor_t cd,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *ws,
                                           size_t ws_bytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxd, void *dx) {
    LOCKED;
    return conv_pass<PASS_BWD_DATA>("cudnnConvolutionBackwardData", h, cd, dxd, dx, wd, w, dyd, dy,
                                    (int)algo, ws, ws_bytes, alpha, beta);
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha,
                                             const cudnnTensorDescriptor_t xd, const void *x,
                                             const cudnnTensorDescriptor_t dyd, const void *dy,
                                             const cudnnConvolutionDescriptor_t cd,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *ws,
                                             size_t ws_bytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwd, void *dw) {
    LOCKED;
    return conv_pass<PASS_BWD_FILTER>("cudnnConvolutionBackwardFilter", h, cd, xd, x, dwd, dw, dyd,
                                      dy, (int)algo, ws, ws_bytes, alpha, beta);
}

cudnnStatus_t cudnnConvolutionBackwardBias(cudnnHandle_t h, const void *alpha,
                                           const cudnnTensorDescriptor_t dyd, const void *dy,
                                           const void *beta, const cudnnTensorDescriptor_t dbd,
                                           void *db) {
    LOCKED;
    const char *what = "cudnnConvolutionBackwardBias";
    if (!dyd->set || !dbd->set || dbd->n != 1 || dbd->c != dyd->c || dbd->h != 1 || dbd->w != 1)
        return CUDNN_STATUS_BAD_PARAM;
    if (dyd->bf16 || dbd->bf16)
        return CUDNN_STATUS_NOT_SUPPORTED; // cuemu's bias passes read and write FP32 only
    check_stream(what, h->stream);
    check_range(what, dy, tensor_bytes(dyd));
    check_range(what, db, tensor_bytes(dbd));
    const float *DY = (const float *)dy;
    cudnnTensorStruct t = *dyd;
    float al = *(const float *)alpha, be = *(const float *)beta;
    enqueue(what, h->stream, [=]() {
        std::vector<double> acc(t.c);
        size_t plane = (size_t)t.h * t.w;
        for (int n = 0; n < t.n; n++)
            for (int c = 0; c < t.c; c++)
                for (size_t i = 0; i < plane; i++)
                    acc[c] += DY[((size_t)n * t.c + c) * plane + i];
        blend((float *)db, acc, al, be);
    });
    return CUDNN_STATUS_SUCCESS;
}

// C = alpha A + beta C, each dimension of A equal to C's or 1 (broadcast).
cudnnStatus_t cudnnAddTensor(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t ad,
                             const void *A, const void *beta, const cudnnTensorDescriptor_t cd,
                             void *C) {
    LOCKED;
    const char *what = "cudnnAddTensor";
    const int ad4[4] = {ad->n, ad->c, ad->h, ad->w}, cd4[4] = {cd->n, cd->c, cd->h, cd->w};
    if (!ad->set || !cd->set)
        return CUDNN_STATUS_BAD_PARAM;
    if (ad->bf16 || cd->bf16)
        return CUDNN_STATUS_NOT_SUPPORTED; // FP32 only, as for the bias gradient
    for (int i = 0; i < 4; i++)
        if (ad4[i] != cd4[i] && ad4[i] != 1)
            return CUDNN_STATUS_BAD_PARAM;
    check_stream(what, h->stream);
    check_range(what, A, tensor_bytes(ad));
    check_range(what, C, tensor_bytes(cd));
    const float *a = (const float *)A;
    float *c = (float *)C, al = *(const float *)alpha, be = *(const float *)beta;
    cudnnTensorStruct A4 = *ad, C4 = *cd;
    enqueue(what, h->stream, [=]() {
        const cudnnTensorStruct *ad = &A4, *cd = &C4;
        for (int n = 0; n < cd->n; n++)
            for (int ch = 0; ch < cd->c; ch++)
                for (int y = 0; y < cd->h; y++)
                    for (int x = 0; x < cd->w; x++) {
                        size_t ci = (((size_t)n * cd->c + ch) * cd->h + y) * cd->w + x;
                        size_t ai =
                            ((((size_t)(ad->n == 1 ? 0 : n) * ad->c + (ad->c == 1 ? 0 : ch)) *
                                  ad->h +
                              (ad->h == 1 ? 0 : y)) *
                                 ad->w +
                             (ad->w == 1 ? 0 : x));
                        c[ci] = (float)((double)al * a[ai] + (be == 0 ? 0.0 : (double)be * c[ci]));
                    }
    });
    return CUDNN_STATUS_SUCCESS;
}

// --- NCCL ---------------------------------------------------------------------------------------

struct ncclComm {
    int rank, size;
};

static const char CUEMU_NCCL_ID[] = "cuemu nccl id";

ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    memset(id, 0, sizeof *id);
    memcpy(id->internal, CUEMU_NCCL_ID, sizeof CUEMU_NCCL_ID);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    int init = 0, size = 0, me = -1;
    MPI_Initialized(&init);
    if (!init)
        fatal("ncclCommInitRank: cuemu's NCCL needs MPI (launch with mpirun)");
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &me);
    if (memcmp(id.internal, CUEMU_NCCL_ID, sizeof CUEMU_NCCL_ID))
        return ncclInvalidArgument; // not an id from ncclGetUniqueId (not broadcast?)
    if (nranks != size || rank != me)
        fatal("ncclCommInitRank(nranks %d, rank %d): cuemu's NCCL spans MPI_COMM_WORLD (%d "
              "processes, this one %d)",
              nranks, rank, size, me);
    MPI_Barrier(MPI_COMM_WORLD); // it synchronizes the ranks, as NCCL's does
    *comm = new ncclComm{rank, nranks};
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    delete comm;
    return ncclSuccess;
}

const char *ncclGetErrorString(ncclResult_t r) {
    return r == ncclSuccess ? "no error" : "NCCL error (cuemu)";
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
    LOCKED;
    const char *what = "ncclAllReduce";
    if (type != ncclFloat32 || (op != ncclSum && op != ncclAvg) || count > (size_t)INT32_MAX)
        return ncclInvalidArgument; // all cuemu does; all we use
    check_range(what, send, count * sizeof(float));
    check_range(what, recv, count * sizeof(float));
    int size = comm->size;
    enqueue(what, stream, [=]() {
        const void *in = send == recv ? MPI_IN_PLACE : send;
        if (MPI_Allreduce(in, recv, (int)count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
            fatal("ncclAllReduce: MPI_Allreduce failed");
        if (op == ncclAvg)
            for (size_t i = 0; i < count; i++)
                ((float *)recv)[i] /= (float)size;
    });
    return ncclSuccess;
}
