// reference.c — the ground truth for ops.c and specnorm.c: each layer written the obvious way, in
// double, one element at a time.
//
// Linked only into the tests. Nothing here is tiled, threaded, vectorized or reordered for speed,
// and formulas are spelled as in the papers, so a disagreement with a fast kernel points at the
// fast kernel. The matrix layers' references (conv2d, linear, attention) are in reference_conv.c.
//
// B batch, C channels, H, W spatial, N = H*W, K classes, D embedding width, n a flat count.
#include "kernels/reference.h"

#include <math.h>

#include "kernels/ops.h" // PIXELNORM_EPS, so both sides use the same eps

void leaky_relu_forward_ref(double *out, const double *inp, double alpha, long n) {
    for (long i = 0; i < n; i++)
        out[i] = inp[i] > 0.0 ? inp[i] : alpha * inp[i];
}

void leaky_relu_backward_ref(double *dinp, const double *dout, const double *inp, double alpha,
                             long n) {
    for (long i = 0; i < n; i++)
        dinp[i] += (inp[i] > 0.0 ? 1.0 : alpha) * dout[i];
}

void tanh_forward_ref(double *out, const double *inp, long n) {
    for (long i = 0; i < n; i++)
        out[i] = tanh(inp[i]);
}

void tanh_backward_ref(double *dinp, const double *dout, const double *out, long n) {
    for (long i = 0; i < n; i++)
        dinp[i] += (1.0 - out[i] * out[i]) * dout[i];
}

// Karras et al. 2018, sec. 4.2: b_xy = a_xy / sqrt(1/C sum_c (a^c_xy)^2 + eps).
// out, inp (B, C, N); rnorm (B, N).
void pixelnorm_forward_ref(double *out, double *rnorm, const double *inp, int B, int C, int N) {
    for (int b = 0; b < B; b++) {
        for (int p = 0; p < N; p++) {
            double sumsq = 0.0;
            for (int c = 0; c < C; c++) {
                double x = inp[((long)b * C + c) * N + p];
                sumsq += x * x;
            }
            double r = 1.0 / sqrt(sumsq / C + (double)PIXELNORM_EPS);
            rnorm[(long)b * N + p] = r;
            for (int c = 0; c < C; c++)
                out[((long)b * C + c) * N + p] = inp[((long)b * C + c) * N + p] * r;
        }
    }
}

// dx_j = r (dy_j - y_j * 1/C sum_c dy_c y_c), from y = x r and dr/dx_j = -r^3 x_j / C.
void pixelnorm_backward_ref(double *dinp, const double *dout, const double *out,
                            const double *rnorm, int B, int C, int N) {
    for (int b = 0; b < B; b++) {
        for (int p = 0; p < N; p++) {
            double dot = 0.0;
            for (int c = 0; c < C; c++) {
                long k = ((long)b * C + c) * N + p;
                dot += dout[k] * out[k];
            }
            double r = rnorm[(long)b * N + p];
            for (int c = 0; c < C; c++) {
                long k = ((long)b * C + c) * N + p;
                dinp[k] += r * (dout[k] - out[k] * dot / C);
            }
        }
    }
}

// out (B, C, 2H, 2W), inp (B, C, H, W): out[y][x] = inp[y/2][x/2].
void upsample2x_forward_ref(double *out, const double *inp, int B, int C, int H, int W) {
    for (long pl = 0; pl < (long)B * C; pl++)
        for (int y = 0; y < 2 * H; y++)
            for (int x = 0; x < 2 * W; x++)
                out[(pl * 2 * H + y) * 2 * W + x] = inp[(pl * H + y / 2) * W + x / 2];
}

void upsample2x_backward_ref(double *dinp, const double *dout, int B, int C, int H, int W) {
    for (long pl = 0; pl < (long)B * C; pl++)
        for (int y = 0; y < 2 * H; y++)
            for (int x = 0; x < 2 * W; x++)
                dinp[(pl * H + y / 2) * W + x / 2] += dout[(pl * 2 * H + y) * 2 * W + x];
}

void avgpool2x_forward_ref(double *out, const double *inp, int B, int C, int H, int W) {
    for (long pl = 0; pl < (long)B * C; pl++)
        for (int y = 0; y < H / 2; y++)
            for (int x = 0; x < W / 2; x++) {
                double s = 0.0;
                for (int a = 0; a < 2; a++)
                    for (int e = 0; e < 2; e++) s += inp[(pl * H + 2 * y + a) * W + 2 * x + e];
                out[(pl * (H / 2) + y) * (W / 2) + x] = s / 4.0;
            }
}

void avgpool2x_backward_ref(double *dinp, const double *dout, int B, int C, int H, int W) {
    for (long pl = 0; pl < (long)B * C; pl++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                dinp[(pl * H + y) * W + x] += dout[(pl * (H / 2) + y / 2) * (W / 2) + x / 2] / 4.0;
}

// Hinge losses; the gradient (of the mean) is written, with 0 at the kink as relu's backward.
double hinge_d_real_loss_ref(double *dlogits, const double *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        double margin = 1.0 - logits[b];
        sum += margin > 0.0 ? margin : 0.0;
        if (dlogits)
            dlogits[b] = margin > 0.0 ? -1.0 / B : 0.0;
    }
    return sum / B;
}

double hinge_d_fake_loss_ref(double *dlogits, const double *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        double margin = 1.0 + logits[b];
        sum += margin > 0.0 ? margin : 0.0;
        if (dlogits)
            dlogits[b] = margin > 0.0 ? 1.0 / B : 0.0;
    }
    return sum / B;
}

double hinge_g_loss_ref(double *dlogits, const double *logits, int B) {
    double sum = 0.0;
    for (int b = 0; b < B; b++) {
        sum += -logits[b];
        if (dlogits)
            dlogits[b] = -1.0 / B;
    }
    return sum / B;
}

// Mean over b of -log softmax(l_b)[y_b]; gradient (softmax - onehot) / B written when not NULL.
double softmax_xent_ref(double *dlogits, const double *logits, const int32_t *labels, int B,
                        int K) {
    double total = 0.0;
    for (int b = 0; b < B; b++) {
        const double *l = logits + (long)b * K;
        double mx = l[0];
        for (int k = 1; k < K; k++)
            if (l[k] > mx)
                mx = l[k];
        double sum = 0.0;
        for (int k = 0; k < K; k++)
            sum += exp(l[k] - mx);
        total += -(l[labels[b]] - mx - log(sum));
        if (dlogits)
            for (int k = 0; k < K; k++)
                dlogits[(long)b * K + k] = (exp(l[k] - mx) / sum - (k == labels[b])) / B;
    }
    return total / B;
}

void embedding_forward_ref(double *out, const double *table, const int32_t *labels, int B, int D) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++)
            out[(long)b * D + i] = table[(long)labels[b] * D + i];
}

void embedding_backward_ref(double *dtable, const double *dout, const int32_t *labels, int B,
                            int D) {
    for (int b = 0; b < B; b++)
        for (int i = 0; i < D; i++)
            dtable[(long)labels[b] * D + i] += dout[(long)b * D + i];
}

// normalize(x) = x / max(||x||, 1e-12), as torch.nn.functional.normalize.
static void normalize_ref(double *x, int n) {
    double sumsq = 0.0;
    for (int i = 0; i < n; i++)
        sumsq += x[i] * x[i];
    double norm = sqrt(sumsq);
    if (norm < 1e-12)
        norm = 1e-12;
    for (int i = 0; i < n; i++)
        x[i] /= norm;
}

// specnorm.h's contract spelled out: v = normalize(W^T u); with update, u = normalize(W v);
// sigma = u^T W v; w_sn = W / sigma.
double specnorm_forward_ref(double *w_sn, double *v_out, double *u, const double *w, int OUT,
                            int IN, int update) {
    for (int j = 0; j < IN; j++) {
        v_out[j] = 0.0;
        for (int i = 0; i < OUT; i++)
            v_out[j] += w[(long)i * IN + j] * u[i];
    }
    normalize_ref(v_out, IN);
    if (update) {
        for (int i = 0; i < OUT; i++) {
            u[i] = 0.0;
            for (int j = 0; j < IN; j++)
                u[i] += w[(long)i * IN + j] * v_out[j];
        }
        normalize_ref(u, OUT);
    }
    double sigma = 0.0;
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < IN; j++)
            sigma += u[i] * w[(long)i * IN + j] * v_out[j];
    for (long k = 0; k < (long)OUT * IN; k++)
        w_sn[k] = w[k] / sigma;
    return sigma;
}

// Miyato et al. 2018, eq. 12: dW += (dW_sn - <dW_sn, W_sn> u v^T) / sigma.
void specnorm_backward_ref(double *dw, const double *dw_sn, const double *w_sn, const double *u,
                           const double *v, double sigma, int OUT, int IN) {
    double inner = 0.0;
    for (long k = 0; k < (long)OUT * IN; k++)
        inner += dw_sn[k] * w_sn[k];
    for (int i = 0; i < OUT; i++)
        for (int j = 0; j < IN; j++)
            dw[(long)i * IN + j] += (dw_sn[(long)i * IN + j] - inner * u[i] * v[j]) / sigma;
}

// Loshchilov & Hutter 2019, alg. 2 (schedule multiplier 1), as torch.optim.AdamW.
void adamw_update_ref(double *params, const double *grads, double *m, double *v, long n, double lr,
                      double beta1, double beta2, double eps, double weight_decay, long t) {
    for (long i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1.0 - beta1) * grads[i];
        v[i] = beta2 * v[i] + (1.0 - beta2) * grads[i] * grads[i];
        double mhat = m[i] / (1.0 - pow(beta1, (double)t));
        double vhat = v[i] / (1.0 - pow(beta2, (double)t));
        params[i] -= lr * weight_decay * params[i] + lr * mhat / (sqrt(vhat) + eps);
    }
}
