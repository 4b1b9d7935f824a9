// gemm.h — matrix multiply and the fully-connected layer, on oneDNN's dnnl_sgemm (CPU).
//
// Row-major throughout. B batch, IN input features, OUT output features.
#ifndef KERNELS_GEMM_H
#define KERNELS_GEMM_H

// C(M,N) = alpha * op(A) * op(B) + beta * C, op = transpose when ta/tb is 1.
// A is (M,K) or (K,M) if ta; B is (K,N) or (N,K) if tb; lda/ldb/ldc are row strides.
// Returns 0 or KERNELS_EDNN.
int gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
         int ldb, float beta, float *C, int ldc);

// out: (B, OUT) written; inp: (B, IN); w: (OUT, IN) as PyTorch stores it; bias: (OUT) or NULL.
int linear_forward(float *out, const float *inp, const float *w, const float *bias, int B, int IN,
                   int OUT);

// Accumulates (+=) into dinp (B, IN), dw (OUT, IN), dbias (OUT); any may be NULL to skip it.
int linear_backward(float *dinp, float *dw, float *dbias, const float *dout, const float *inp,
                    const float *w, int B, int IN, int OUT);

#endif
