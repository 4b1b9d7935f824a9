// distill.c — teacher-to-student distillation (distill.h).
#include "generator/distill.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "generator/gan_cuda.h"
#include "kernels/kernels.h"
#include "kernels/ops.h"

int distill_init(Distiller *d, const char *teacher_ckpt, int B, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    if (generator_load(&d->teacher, teacher_ckpt, B, err, errlen) ||
        discriminator_load(&d->td, teacher_ckpt, B, err, errlen))
        return -1;
    const SaganConfig *c = &d->teacher.cfg;
    int Fd;
    discriminator_features(&d->td, &Fd);
    d->timg = malloc((size_t)B * c->channels * c->img * c->img * sizeof(float));
    d->tfeat = malloc((size_t)B * Fd * sizeof(float));
    d->dfeat = malloc((size_t)B * Fd * sizeof(float));
    if (!d->timg || !d->tfeat || !d->dfeat) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

void distill_free(Distiller *d) {
    generator_free(&d->teacher);
    discriminator_free(&d->td);
    free(d->timg);
    free(d->tfeat);
    free(d->dfeat);
    memset(d, 0, sizeof *d);
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_) return rc_;                                                                       \
    } while (0)

int distill_step(GanTrainer *t, Distiller *d, const DistillConfig *c, const Dataset *data,
                 double *pix, double *feat) {
    const SaganConfig *cfg = &t->cfg;
    int B = t->hp.batch, Z = cfg->z_dim;
    long img = (long)cfg->channels * cfg->img * cfg->img, n = (long)B * img;
    if (B > d->teacher.max_B) return KERNELS_EINVAL;
    CHECK(gan_d_step(t, data));

    rng_normal(&t->rng, t->z, (long)B * Z);
    for (int b = 0; b < B; b++)
        t->y[B + b] = cfg->n_classes ? (int32_t)rng_below(&t->rng, (uint32_t)cfg->n_classes) : 0;
    const int32_t *y = cfg->n_classes ? t->y + B : NULL;
    // the teacher's frames and their features
    CHECK(generator_forward(&d->teacher, t->z, y, B));
    memcpy(d->timg, d->teacher.img, (size_t)n * sizeof(float));
    int Fd;
    CHECK(discriminator_forward(&d->td, d->timg, y, B));
    const float *tf = discriminator_features(&d->td, &Fd);
    memcpy(d->tfeat, tf, (size_t)B * Fd * sizeof(float));
    // the student's
    paramset_sn_forward(&t->G.ps, 1);
    CHECK(generator_forward(&t->G, t->z, y, B));
    const float *s = t->G.img;
    // adversarial, against the student's D
    paramset_sn_forward(&t->D.ps, 1);
    CHECK(discriminator_forward(&t->D, s, y, B));
    t->loss_g = hinge_g_loss(t->dlogits, t->D.out, B);
    for (int b = 0; b < B; b++) t->dlogits[b] *= (float)c->w_adv;
    memset(t->dimg, 0, (size_t)n * sizeof(float));
    CHECK(discriminator_backward(&t->D, t->dlogits, B, 0, t->dimg));
    // pixels
    double lp = 0;
    for (long i = 0; i < n; i++) {
        float e = s[i] - d->timg[i];
        lp += (double)e * e;
        t->dimg[i] += (float)(2.0 * c->w_pix / n) * e;
    }
    *pix = lp / n;
    // features of the teacher's D
    CHECK(discriminator_forward(&d->td, s, y, B));
    const float *fs = discriminator_features(&d->td, &Fd);
    double lf = 0;
    long nf = (long)B * Fd;
    for (long i = 0; i < nf; i++) {
        float e = fs[i] - d->tfeat[i];
        lf += (double)e * e;
        d->dfeat[i] = (float)(2.0 * c->w_feat / nf) * e;
    }
    *feat = lf / nf;
    CHECK(discriminator_backward_features(&d->td, d->dfeat, B, t->dimg));
    paramset_zero_grad(&t->G.ps);
    CHECK(generator_backward(&t->G, t->dimg, B));
    paramset_sn_backward(&t->G.ps);
    paramset_adam(&t->G.ps, t->hp.lr_g, t->hp.beta1, t->hp.beta2, t->hp.eps, t->hp.weight_decay_g);
    gan_g_step_done(t);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// on the GPU

int distill_device_init(DistillDevice *dd, TrainDevice *td, GanTrainer *t, Distiller *d,
                        const DistillConfig *c, char *line, size_t len) {
    memset(dd, 0, sizeof *dd);
    dd->d = d;
    dd->c = *c;
    snprintf(line, len, "distilling on the CPU");
    if (!td->on_gpu) return 0;
#ifdef STEER_CUDA
    char err[400] = "out of memory";
    GanCudaTune *tu = t->hp.prog_stable > 0 ? NULL : calloc(1, sizeof *tu);
    if (t->hp.prog_stable > 0) snprintf(err, sizeof err, "a progressive schedule");
    if (tu && !gan_cuda_distill_init(tu, td->gc, &d->teacher, &d->td, err, sizeof err)) {
        tu->w_pix = c->w_pix;
        tu->w_feat = c->w_feat;
        tu->w_adv = c->w_adv;
        dd->tu = tu;
        snprintf(line, len, "distilling on the GPU (the teacher beside the student)");
        return 0;
    }
    free(tu);
    snprintf(line, len, "distilling on the CPU (the teacher cannot go on the GPU: %s)", err);
    return train_device_to_cpu(td, t);
#else
    (void)t;
    return 0;
#endif
}

int distill_device_step(DistillDevice *dd, TrainDevice *td, GanTrainer *t, const Dataset *data,
                        double *pix, double *feat) {
#ifdef STEER_CUDA
    if (dd->tu && td->on_gpu) {
        GanCudaTune *tu = dd->tu;
        int rc = gan_cuda_tune_step(td->gc, tu, t, data);
        if (!rc) *pix = tu->pix, *feat = tu->feat;
        return rc;
    }
#endif
    (void)td;
    return distill_step(t, dd->d, &dd->c, data, pix, feat);
}

void distill_device_free(DistillDevice *dd, TrainDevice *td) {
#ifdef STEER_CUDA
    if (dd->tu && td->gc) gan_cuda_tune_free(dd->tu, td->gc);
    free(dd->tu);
#endif
    (void)td;
    memset(dd, 0, sizeof *dd);
}
