// gemm.c — row-major SGEMM and the fully-connected layer, on oneDNN's dnnl_sgemm.
//
// dnnl_sgemm is row-major (unlike BLAS) and threads itself with OpenMP; called from inside an
// OpenMP parallel region it runs single-threaded, which is what attention.c relies on to run one
// small product per batch item in parallel. Nothing here allocates or caches.
//
// B batch, IN input features, OUT output features.
#include "kernels/gemm.h"

#include <oneapi/dnnl/dnnl.h>

#include "kernels/kernels.h"

int gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
         int ldb, float beta, float *C, int ldc) {
    if (M < 0 || N < 0 || K < 0)
        return KERNELS_EINVAL;
    if (M == 0 || N == 0)
        return 0;
    dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                                  beta, C, ldc);
    return st == dnnl_success ? 0 : KERNELS_EDNN;
}

// out (B, OUT) = inp (B, IN) w^T + bias. The bias rows are written first and the product is
// added with beta = 1, so out is swept once by the GEMM and not again for the bias.
int linear_forward(float *out, const float *inp, const float *w, const float *bias, int B, int IN,
                   int OUT) {
    if (B <= 0 || IN <= 0 || OUT <= 0)
        return KERNELS_EINVAL;
    if (bias) {
        for (int b = 0; b < B; b++)
            for (int o = 0; o < OUT; o++)
                out[(long)b * OUT + o] = bias[o];
    }
    return gemm(0, 1, B, OUT, IN, 1.0f, inp, IN, w, IN, bias ? 1.0f : 0.0f, out, OUT);
}

// dinp (B, IN) += dout (B, OUT) w (OUT, IN); dw (OUT, IN) += dout^T inp; dbias (OUT) += sum_b dout.
int linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                    const float *w, int B, int IN, int OUT) {
    if (B <= 0 || IN <= 0 || OUT <= 0)
        return KERNELS_EINVAL;
    int rc = 0;
    if (dinp)
        rc = gemm(0, 0, B, IN, OUT, 1.0f, dout, OUT, w, IN, 1.0f, dinp, IN);
    if (rc == 0 && dw)
        rc = gemm(1, 0, OUT, IN, B, 1.0f, dout, OUT, inp, IN, 1.0f, dw, IN);
    if (rc == 0 && dbias) {
        for (int b = 0; b < B; b++)
            for (int o = 0; o < OUT; o++)
                dbias[o] += dout[(long)b * OUT + o];
    }
    return rc;
}
