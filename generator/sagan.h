// sagan.h — the self-attention SN-GAN of DESIGN.md: configs, generator G, discriminator D.
//
// B batch, C channels, H, W spatial, Z latent size, K classes. Images are NCHW in [-1, 1].
// Each network owns its ParamSet and one activation buffer (and its gradient twin) sized at init
// for max_B, so forward and backward never allocate. A network is used by one thread at a time.
#ifndef GENERATOR_SAGAN_H
#define GENERATOR_SAGAN_H

#include <stddef.h>
#include <stdint.h>

#include "generator/params.h"
#include "kernels/attention.h"

#define SAGAN_MAX_STAGES 5

typedef struct {
    char name[32];
    int ch;        // base width: G starts at 4x4 with 4*ch channels
    int z_dim;     // latent size Z
    int img;       // output resolution: 32 or 64
    int channels;  // image channels: 1 or 3
    int n_classes; // 0: unconditional; else class embedding in G, projection in D
    int attn_res;  // resolution of the self-attention block (16), 0 for none
    int prog;      // 1: the extra layers of progressive growing (PGGAN, Karras et al. 2018): a
                   // toRGB 1x1 conv in G and a fromRGB 1x1 conv in D for every resolution below
                   // img (8, 16, ...); 0 (every named config): none
} SaganConfig;

// Fills *c for a named config ("fmnist32", "fmnist32c", "rgb64", ...). Returns 0 or -1 (unknown).
int sagan_config_lookup(SaganConfig *c, const char *name);
// Checks a (possibly hand-made) config's knobs; returns 0 or -1 with a message in err.
int sagan_config_check(const SaganConfig *c, char *err, size_t errlen);
// Number of up (G) / down (D) stages: log2(img / 4).
int sagan_stages(const SaganConfig *c);

// Progressive growing. A network at level L (1..n_stages) works at resolution 4 << L: G runs its
// first L stages and turns their output into an image with toRGB L (the `out` conv at the last
// level), D reads such an image with fromRGB L (`conv0` at the last level) and runs its last L
// stages. While a level fades in (alpha < 1, level >= 2), both networks blend the new top layer
// with the previous level's path (PGGAN's fade-in): G's image (before tanh) is
// alpha * new + (1 - alpha) * upsample(toRGB(L-1)), D's features after its first stage are
// alpha * new + (1 - alpha) * fromRGB(L-1)(avgpool(x)). Level n_stages with alpha 1 (the default)
// is the ordinary full network.

typedef struct {
    SaganConfig cfg;
    int max_B, n_stages, attn_stage; // attn_stage: stage after which attention sits, or -1
    int chan[SAGAN_MAX_STAGES + 1];  // chan[0] at 4x4, chan[s+1] after stage s
    ParamSet ps;
    int p_embed, p_fc_w, p_fc_b, p_conv_w[SAGAN_MAX_STAGES], p_conv_b[SAGAN_MAX_STAGES];
    int p_f, p_g, p_h, p_o, p_gamma, p_out_w, p_out_b;
    int p_rgb_w[SAGAN_MAX_STAGES], p_rgb_b[SAGAN_MAX_STAGES]; // toRGB of level L (cfg.prog), else -1
    int level;                       // progressive level (n_stages: full)
    float alpha;                     // fade-in of that level, (0, 1]
    // Activations, carved from one buffer; the gradient twins from `dacts` at the same offsets.
    float *acts, *dacts;
    long acts_total;
    float *zc;                       // (B, Z) z plus the class embedding
    float *fc_pre;                   // (B, chan0, 4, 4) linear output
    float *fc;                       // (B, chan0, 4, 4) after LReLU
    float *pn0, *rn0;                // (B, chan0, 16), (B, 16) PixelNorm out and 1/norm
    float *up[SAGAN_MAX_STAGES];     // (B, chan[s], 2h, 2w) upsampled input of stage s
    float *conv[SAGAN_MAX_STAGES];   // (B, chan[s+1], 2h, 2w) conv output
    float *act[SAGAN_MAX_STAGES];    // (B, chan[s+1], 2h, 2w) after LReLU
    float *pn[SAGAN_MAX_STAGES];     // (B, chan[s+1], 2h, 2w) PixelNorm out
    float *rn[SAGAN_MAX_STAGES];     // (B, 2h*2w)
    float *att;                      // (B, chan[attn_stage+1], N) attention output
    float *att_saved_buf, *att_scratch;
    AttentionSaved att_saved;
    float *pre;                      // (B, channels, img, img) before tanh
    float *img;                      // (B, channels, img, img) the output (at full size always)
    // progressive growing only (cfg.prog): the image at a level below the last (R = 4 << level),
    // the previous level's toRGB output and its 2x upsample, and the faded-in blend
    float *img_lo;                   // (B, channels, R, R) generator_output below the last level
    float *pre_old, *pre_old_up, *pre_mix;
    const float *zin;                // borrowed: the linear layer's input of the last forward
    const int32_t *labels;           // borrowed: labels of the last forward
    // L1 activation sparsity (0: off): forward adds l1_act * mean|a| over each block output a
    // (pn0 and the input of every later stage and of the output conv: the PixelNorm output, or the
    // attention output after the attention stage) into l1_value; backward adds its gradient.
    float l1_act;
    double l1_value;                 // of the last forward (0 when off)
} Generator;

typedef struct {
    SaganConfig cfg;
    int max_B, n_stages, attn_stage;
    int chan[SAGAN_MAX_STAGES + 1]; // chan[0] after the first conv, chan[k+1] after stage k
    ParamSet ps;
    int p_in_w, p_in_b, p_conv_w[SAGAN_MAX_STAGES], p_conv_b[SAGAN_MAX_STAGES];
    int p_f, p_g, p_h, p_o, p_gamma, p_fc_w, p_fc_b, p_embed;
    int p_rgb_w[SAGAN_MAX_STAGES], p_rgb_b[SAGAN_MAX_STAGES]; // fromRGB of level L (cfg.prog)
    int level;                      // progressive level (n_stages: full)
    float alpha;                    // fade-in of that level, (0, 1]
    float *acts, *dacts;
    long acts_total;
    float *c0, *a0;                 // (B, chan0, img, img) first conv, then after LReLU
    float *conv[SAGAN_MAX_STAGES];  // (B, chan[k+1], r, r) stage k conv output
    float *act[SAGAN_MAX_STAGES];   // (B, chan[k+1], r, r) after LReLU
    float *att;                     // attention output
    float *att_saved_buf, *att_scratch;
    AttentionSaved att_saved;
    // progressive growing only: the fading level's old path, the pooled image through the
    // previous level's fromRGB, and the blend that feeds the next stage
    float *xpool, *old_pre, *old_act, *blend;
    float *out;                     // (B) logits
    float *feat_drop, *drop_mask;   // (B, F) features after dropout, and the mask (0 or 1/(1-p))
    const float *x;                 // borrowed: input of the last forward
    const int32_t *labels;          // borrowed: labels of the last forward
    // Dropout on the features that feed the final linear layer (and the projection): applied when
    // train is set and dropout > 0, masks drawn from dropout_seed (advanced by each forward).
    float dropout;
    int train;                      // 0 (eval, the default): no dropout
    int dropped;                    // whether the last forward applied dropout
    uint64_t dropout_seed;
    // NULL normally. Else every LReLU of D, forward and backward, takes its slopes from this
    // saved activation pattern (image b of a forward reads image b of the pattern, laid out as
    // discriminator_pattern_save writes it) instead of from its own input: D is then a smooth
    // function of x and of its parameters around the points the pattern came from (the
    // finite-difference double backward of gan_penalty_backward needs that).
    const float *lrelu_ref;
} Discriminator;

// Builds G (or D) for cfg at batch up to max_B with parameters initialized from seed.
// Returns 0, or -1 out of memory (the struct is then safe to _free).
int generator_init(Generator *g, const SaganConfig *cfg, int max_B, uint64_t seed);
void generator_free(Generator *g);
// z (B, Z); y (B) class labels or NULL for an unconditional model. Output in g->img.
// Uses the effective (spectral-normalized) weights as last computed by paramset_sn_forward.
int generator_forward(Generator *g, const float *z, const int32_t *y, int B);
// n frames of latents z (n, Z) and classes y (n, or NULL) into img (n, C, R, R), drawn batch
// (1..max_B) at a time: G's rounding depends on the batch size, so a caller that must reproduce
// frames keeps it fixed. Returns 0, or the first failing forward's code (img then partly filled).
int generator_draw(Generator *g, const float *z, const int32_t *y, long n, int batch, float *img);
// Backpropagates dimg (B, channels, img, img) through the last forward; accumulates into
// g->ps's gradient slots (call paramset_sn_backward after to fold SN gradients).
int generator_backward(Generator *g, const float *dimg, int B);
// Sets the progressive level and fade-in (see above). Returns 0, or -1 for a level outside
// [1, n_stages], alpha outside (0, 1], a fade at level 1, or a level below the last without
// cfg.prog's layers (nothing changed then).
int generator_set_level(Generator *g, int level, float alpha);
// Resolution of G's current level, and the image its last forward made there: g->img at the last
// level, else g->img_lo (B, channels, R, R) (g->img then holds it upsampled to full size).
// generator_backward takes the gradient w.r.t. this image.
int generator_resolution(const Generator *g);
const float *generator_output(const Generator *g);

int discriminator_init(Discriminator *d, const SaganConfig *cfg, int max_B, uint64_t seed);
void discriminator_free(Discriminator *d);
// x (B, channels, img, img), y (B) or NULL (borrowed until backward). Logits in d->out (B).
int discriminator_forward(Discriminator *d, const float *x, const int32_t *y, int B);
// As generator_set_level; x is then (B, channels, R, R) with R = 4 << level.
int discriminator_set_level(Discriminator *d, int level, float alpha);
// The features the last forward fed its final linear layer: (B, *F), the last stage's (chan, 4, 4)
// map flattened per image (before the projection). Valid until the next forward.
const float *discriminator_features(const Discriminator *d, int *F);
// dout (B): gradient of the loss w.r.t. the logits. Parameter gradients are accumulated when
// param_grads is non-zero; dx (B, channels, img, img), if not NULL, is accumulated.
int discriminator_backward(Discriminator *d, const float *dout, int B, int param_grads, float *dx);

// Floats of one image's LReLU pattern (D's pre-activations, all layers), and a copy of the
// pattern of the first B images of the last forward into pattern (B * that many floats).
long discriminator_pattern_floats(const Discriminator *d);
void discriminator_pattern_save(const Discriminator *d, float *pattern, int B);

// Backpropagates dfeat (B, F), a gradient w.r.t. the last forward's features (those
// discriminator_features returns, before dropout), through D to its input: dx (B, channels, img,
// img) is accumulated; no parameter gradients. For losses on D's features (the users' reward of
// generator/finetune.h, feature matching of generator/distill.h).
int discriminator_backward_features(Discriminator *d, const float *dfeat, int B, float *dx);

// Multiply-accumulates of one G forward / one D forward for one image (for GFLOP/s figures).
double generator_macs(const SaganConfig *cfg);
double discriminator_macs(const SaganConfig *cfg);

#endif
