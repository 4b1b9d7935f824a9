// kernels.c — the messages for the KERNELS_E* codes, made from the one list in kernels.h.
//
// Only kernels_strerror lives here; each kernel module returns the codes itself.
#include "kernels/kernels.h"

const char *kernels_strerror(int code) {
    switch (code) {
    case 0:
        return "success";
#define X(name, value, msg)                                                                        \
    case value:                                                                                    \
        return msg;
        KERNELS_ERRNO_MAP(X)
#undef X
    default:
        return "unknown kernels error";
    }
}
