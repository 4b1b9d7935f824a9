// reference.h — plain naive loops in double for every kernel, forward and backward.
//
// Linked only into the tests: they are the ground truth that finite differences check and that
// the fast float kernels (oneDNN and our own C) are compared against. Same argument order, shapes
// and accumulate-into-gradients convention as the fast kernels; no caching, no threads.
#ifndef KERNELS_REFERENCE_H
#define KERNELS_REFERENCE_H

#include <stdint.h>

void conv2d_forward_ref(double *out, const double *inp, const double *w, const double *bias, int B,
                        int C, int H, int W, int OC, int K, int S, int P);
void conv2d_backward_ref(double *dinp, double *dw, double *dbias, const double *dout,
                         const double *inp, const double *w, int B, int C, int H, int W, int OC,
                         int K, int S, int P);

void linear_forward_ref(double *out, const double *inp, const double *w, const double *bias, int B,
                        int IN, int OUT);
void linear_backward_ref(double *dinp, double *dw, double *dbias, const double *dout,
                         const double *inp, const double *w, int B, int IN, int OUT);

void leaky_relu_forward_ref(double *out, const double *inp, double alpha, long n);
void leaky_relu_backward_ref(double *dinp, const double *dout, const double *inp, double alpha,
                             long n);
void tanh_forward_ref(double *out, const double *inp, long n);
void tanh_backward_ref(double *dinp, const double *dout, const double *out, long n);

void pixelnorm_forward_ref(double *out, double *rnorm, const double *inp, int B, int C, int N);
void pixelnorm_backward_ref(double *dinp, const double *dout, const double *out,
                            const double *rnorm, int B, int C, int N);

void upsample2x_forward_ref(double *out, const double *inp, int B, int C, int H, int W);
void upsample2x_backward_ref(double *dinp, const double *dout, int B, int C, int H, int W);
void avgpool2x_forward_ref(double *out, const double *inp, int B, int C, int H, int W);
void avgpool2x_backward_ref(double *dinp, const double *dout, int B, int C, int H, int W);

double hinge_d_real_loss_ref(double *dlogits, const double *logits, int B);
double hinge_d_fake_loss_ref(double *dlogits, const double *logits, int B);
double hinge_g_loss_ref(double *dlogits, const double *logits, int B);
double softmax_xent_ref(double *dlogits, const double *logits, const int32_t *labels, int B, int K);

void embedding_forward_ref(double *out, const double *table, const int32_t *labels, int B, int D);
void embedding_backward_ref(double *dtable, const double *dout, const int32_t *labels, int B,
                            int D);

// Spectral norm: same contract as specnorm_forward/backward.
double specnorm_forward_ref(double *w_sn, double *v_out, double *u, const double *w, int OUT,
                            int IN, int update);
void specnorm_backward_ref(double *dw, const double *dw_sn, const double *w_sn, const double *u,
                           const double *v, double sigma, int OUT, int IN);

// SAGAN attention, same math as attention.h; saved activations are recomputed inside backward.
void attention_forward_ref(double *out, const double *x, const double *wf, const double *wg,
                           const double *wh, const double *wo, double gamma, int B, int C, int N);
void attention_backward_ref(double *dx, double *dwf, double *dwg, double *dwh, double *dwo,
                            double *dgamma, const double *dout, const double *x, const double *wf,
                            const double *wg, const double *wh, const double *wo, double gamma,
                            int B, int C, int N);

void adamw_update_ref(double *params, const double *grads, double *m, double *v, long n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, long t);

#endif
