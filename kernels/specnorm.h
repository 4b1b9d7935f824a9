// specnorm.h — spectral normalization (Miyato et al. 2018) by one power iteration.
//
// A weight of any shape is viewed as a matrix W (OUT, IN), IN = product of the other dims, as
// PyTorch's torch.nn.utils.spectral_norm does. u (OUT) is the persistent left vector.
#ifndef KERNELS_SPECNORM_H
#define KERNELS_SPECNORM_H

// One power iteration from u: v = normalize(W^T u), u' = normalize(W v), sigma = u'^T W v,
// w_sn = W / sigma. When update is non-zero u is overwritten with u' (training); otherwise u is
// left as is (sampling), so a loaded checkpoint samples deterministically.
// w_sn: (OUT, IN) written; v_out: (IN) receives v (saved for backward); u: (OUT).
// Returns sigma.
float specnorm_forward(float *w_sn, float *v_out, float *u, const float *w, int OUT, int IN,
                       int update);

// Gradient through sigma, with u and v held constant (Miyato et al. 2018, eq. 12):
// dW += (dW_sn - <dW_sn, W_sn> u v^T) / sigma. u is the updated u' used by forward.
void specnorm_backward(float *dw, const float *dw_sn, const float *w_sn, const float *u,
                       const float *v, float sigma, int OUT, int IN);

#endif
