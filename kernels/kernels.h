// kernels.h — error codes shared by every kernel module, and the one list that makes them.
#ifndef KERNELS_KERNELS_H
#define KERNELS_KERNELS_H

#define KERNELS_ERRNO_MAP(X)                                                                       \
    X(EDNN, -1, "oneDNN refused the operation")                                                   \
    X(ENOMEM, -2, "out of memory")                                                                 \
    X(EINVAL, -3, "invalid argument")                                                              \
    X(ECUDA, -8, "the CUDA runtime, cuBLAS or cuDNN refused the operation")

enum {
#define X(name, code, msg) KERNELS_##name = code,
    KERNELS_ERRNO_MAP(X)
#undef X
};

// A static string for a KERNELS_E* code (never NULL).
const char *kernels_strerror(int code);

#endif
