// regularize.h — the penalty terms training adds to a loss: an L1 norm on activations and the
// orthogonal regularization of BigGAN. Each returns its value and accumulates its exact gradient.
//
// n a flat element count; a weight is viewed as a matrix W (OUT, IN), IN = product of the other
// dims, as spectral norm views it. The gradient-penalty regularizers of D (R1, WGAN-GP) are not
// here: they need passes of the network, see generator/gan.h.
#ifndef KERNELS_REGULARIZE_H
#define KERNELS_REGULARIZE_H

// sum_i |inp[i]| (accumulated in double), for an L1 activation penalty lambda * mean|a|.
double l1_forward(const float *inp, long n);
// dinp += scale * sign(inp) (sign(0) = 0): the gradient of scale * sum|inp|. Accumulates.
void l1_backward(float *dinp, const float *inp, float scale, long n);

// Orthogonal regularization (Brock et al. 2019, sec. 3.1, as their code applies it: the Gram
// matrix of W's rows, one row per output unit): R = beta * ||W W^T (.) (1 - I)||_F^2, and
// dw (OUT, IN) += dR/dW = 4 beta (W W^T (.) (1 - I)) W. w (OUT, IN). scratch holds
// ortho_scratch_floats(OUT, IN) floats (a min(OUT, IN)^2 Gram matrix: when OUT > IN the value and
// gradient are formed through W^T W instead, ||W W^T||_F = ||W^T W||_F, which is far cheaper for
// a tall weight such as G's first linear layer). *value (if not NULL) receives R.
// Returns 0 or a KERNELS_E* code from the GEMM.
long ortho_scratch_floats(int OUT, int IN);
int ortho_reg_backward(float *dw, double *value, const float *w, float beta, float *scratch,
                       int OUT, int IN);

// The gradient penalties' finite-difference set-up (generator/gan.h's gan_penalty_backward): for
// each image b of x (B, n) with D's input gradient g_b in grad (B, n), P_b = 1/2 ||g_b||^2 (r1 =
// 1, R1) or (||g_b|| - 1)^2 (r1 = 0, WGAN-GP) and c_b = d(weight P / B) / d(1/2 ||g_b||^2); with
// e_b = fd_step / ||g_b||, x2 (2B, n) gets x_b + e_b g_b (item b) and x_b - e_b g_b (item B + b),
// and dout2 (2B) gets +-c_b / (2 e_b): the output gradients whose backward through D at x2 is
// weight grad_theta P / B (a central difference). An image with g_b = 0 or not finite gets c_b =
// 0 (no direction). Returns weight * mean_b P_b, summed in double in image order.
double grad_penalty_fd_prepare(float *x2, float *dout2, const float *grad, const float *x, int r1,
                               float weight, float fd_step, int B, long n);

#endif
