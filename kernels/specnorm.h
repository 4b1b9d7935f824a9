// specnorm.h — spectral normalization (Miyato et al. 2018) by one power iteration.
//
// A weight of any shape is viewed as a matrix W (OUT, IN), IN = product of the other dims, as
// PyTorch's torch.nn.utils.spectral_norm does. u (OUT) is the persistent left vector.
#ifndef KERNELS_SPECNORM_H
#define KERNELS_SPECNORM_H

// Vectors are normalized as x / max(||x||, SPECNORM_EPS): torch.nn.functional.normalize's
// default eps, which spectral_norm uses.
#define SPECNORM_EPS 1e-12

// update != 0 (training): one power iteration from u: v = normalize(W^T u), u' = normalize(W v),
// u is overwritten with u', sigma = u'^T W v.
// update == 0 (sampling, or a second forward in the same step): no iteration: v = normalize(W^T u),
// sigma = u^T W v with u as stored, so a loaded checkpoint samples deterministically.
// Either way, on return u (as now stored) and v_out satisfy sigma = u^T W v, which is what
// specnorm_backward needs. w_sn = W / sigma.
// w_sn: (OUT, IN) written; v_out: (IN) receives v (saved for backward); u: (OUT).
// Returns sigma.
float specnorm_forward(float *w_sn, float *v_out, float *u, const float *w, int OUT, int IN,
                       int update);

// Gradient through sigma, with u and v held constant (Miyato et al. 2018, eq. 12):
// dW += (dW_sn - <dW_sn, W_sn> u v^T) / sigma. u and v are as forward left them.
void specnorm_backward(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                       const float *v, float sigma, int OUT, int IN);

#endif
