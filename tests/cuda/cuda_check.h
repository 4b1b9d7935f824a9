// cuda_check.h — what the CUDA tests share: failing the running cmocka test on a CUDA runtime
// error. Include after <cmocka.h> and <cuda_runtime_api.h>.
#ifndef TESTS_CUDA_CUDA_CHECK_H
#define TESTS_CUDA_CUDA_CHECK_H

// Fails the running test, naming the call, when a CUDA runtime call does not succeed.
#define CUDA_OK(call)                                                                              \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess)                                                                     \
            fail_msg("%s: %s", #call, cudaGetErrorString(e_));                                     \
    } while (0)

#endif
